"""EASE's exact fit at MovieLens shapes: seconds and peak memory, each shape in a fresh process.

Synthetic training pairs of the shape (``lrml.data.synthetic``); the fit is the one ``tune/best.py`` tunes:
``X^T X`` by float32 products of user blocks, then a float64 Cholesky solve.

    python bench/ease.py [--shapes ml-1m ml-10m]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lrml.baselines import EASE, EASEConfig
from lrml.data.synthetic import SHAPES, generate


def fit_once(shape: str) -> dict:
    """Fit one EASE of ``shape`` in this process: the seconds of each part and the process's peak memory."""
    num_users, num_items, interactions = SHAPES[shape]
    frame = generate(num_users, num_items, interactions, seed=0)
    users, items = (torch.as_tensor(frame[column].to_numpy() - 1, dtype=torch.long) for column in ("user", "item"))
    model = EASE(EASEConfig(num_users, num_items))
    started = time.perf_counter()
    model.seen[users, items] = True
    gram = model.gram()
    counted = time.perf_counter()
    model.solve(gram)
    solved = time.perf_counter()
    return {"shape": shape, "users": num_users, "items": num_items, "gram_seconds": counted - started,
            "solve_seconds": solved - counted, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["ml-1m", "ml-10m"], choices=list(SHAPES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's shape
    args = parser.parse_args()
    if args.one:
        print(json.dumps(fit_once(args.one)))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'shape':8} {'users':>8} {'items':>7} {'X^T X s':>8} {'solve s':>8} {'peak RSS GB':>12}")
    for shape in args.shapes:
        found = json.loads(subprocess.run([sys.executable, __file__, "--one", shape], capture_output=True, text=True,
                                          check=True).stdout)
        print(f"{shape:8} {found['users']:8,} {found['items']:7,} {found['gram_seconds']:8.1f} "
              f"{found['solve_seconds']:8.1f} {found['peak_rss_gb']:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
