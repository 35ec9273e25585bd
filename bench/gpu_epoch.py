"""One epoch of LRML's defaults on one GPU: its seconds, the training pairs per second, and the validation after it.

The trainer as a one-worker trial runs it, on ``--device`` (default ``cuda``): the PyTorch loss (the compiled
pass is CPU-only), the row-wise optimizers' indexed updates, the sampled validation of every user.

    python bench/gpu_epoch.py [--dataset synthetic-ml-20m] [--epochs 2] [--batch-size 1024]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from lrml.data import load_dataset, prepare
from lrml.train import Trainer, defaults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-ml-20m")
    parser.add_argument("--epochs", type=int, default=2, help="the first warms up; the last is the figure")
    parser.add_argument("--batch-size", type=int, default=defaults("lrml").batch_size)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: this bench measures one")
    dataset = load_dataset(prepare(args.dataset))
    config = replace(defaults("lrml"), batch_size=args.batch_size, max_epochs=args.epochs, patience=args.epochs)
    started = time.perf_counter()
    trainer = Trainer(config, dataset, device=args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{args.dataset}: {len(dataset.train_users):,} training pairs; {device}; built in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    for epoch in trainer.fit(final_eval=False).history:
        training = epoch["seconds"] - epoch["validation_seconds"]
        print(f"epoch {epoch['epoch']}: {epoch['seconds']:.1f} s ({training:.1f} s training, "
              f"{len(dataset.train_users) / training:,.0f} pairs/s; {epoch['validation_seconds']:.1f} s validation), "
              f"valid nDCG@10 {epoch['valid/sampled/ndcg@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
