"""Train LRML or a baseline on a prepared dataset: the epoch loop, early stopping and checkpoints.

Plain PyTorch with no Ray import: a search's trial (``lrml_tune.sweep.trainable``) drives the same
``Trainer`` through ``fit(callback=...)``. Run ``python -m lrml.train --help`` for the CLI.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lrml import checkpoint as checkpoints
from lrml import cli, losses
from lrml.baselines import BPRMF, EASE, BPRConfig, ClosedForm, EASEConfig, Popularity, PopularityConfig
from lrml.data import Dataset, SplitParams, load_dataset, prepare
from lrml.errors import UserError
from lrml.evaluate import PROTOCOLS, Evaluator
from lrml.model import LRML, LRMLConfig, Recommender
from lrml.optim import Optimizer
from lrml.options import value_type
from lrml.parallel import Collective, SingleProcess
from lrml.sampling import NegativeSampler

MODELS = ("lrml", "cml", "bpr", "ease", "pop")
OPTIMIZERS = ("adam", "adagrad")


def monitor_key(protocol: str) -> str:
    """The reported metric that early stopping, checkpoints and searches follow: validation nDCG@10 in ``protocol``."""
    return f"valid/{protocol}/ndcg@10"


MONITOR = monitor_key("sampled")  # the default monitor's key


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; ``defaults(model)`` gives each model's tuned values."""

    model: str = "lrml"
    embedding_dim: int = LRMLConfig.embedding_dim
    memory_size: int = LRMLConfig.memory_size
    margin: float = LRMLConfig.margin
    reg_weight: float = LRMLConfig.reg_weight
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" (row-wise Adam on sparse embeddings) or "adagrad"
    batch_size: int = 1024
    num_negatives: int = 1  # negatives sampled per positive pair, uniformly from the user's unseen items
    loss: str = LRMLConfig.loss  # lrml.losses: hinge, warp or softmax for LRML and CML; bpr or softmax for BPR-MF
    temperature: float = LRMLConfig.temperature  # the softmax loss's
    item_bias: bool = LRMLConfig.item_bias  # LRML and CML: a learned bias per item (BPR-MF always has one)
    max_epochs: int = 100
    patience: int = 10  # stop after this many epochs without a better validation nDCG@10
    seed: int = 0
    monitor: str = "sampled"  # the protocol of the validation nDCG@10 that early stopping and checkpoints follow
    validate_both: bool = False  # report both protocols' validation metrics every epoch, not just the monitor's
    # LRML variants (see LRMLConfig)
    clip_radius: float | None = LRMLConfig.clip_radius
    distance: str = LRMLConfig.distance
    negative_relation: str = LRMLConfig.negative_relation
    regularizer: str = LRMLConfig.regularizer

    def __post_init__(self):
        if self.model not in MODELS:
            raise UserError(f"model={self.model!r}; expected one of {MODELS}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer={self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.monitor not in PROTOCOLS:
            raise UserError(f"monitor={self.monitor!r}; expected one of {PROTOCOLS}")
        for name in ("batch_size", "max_epochs", "num_negatives", "patience", "lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name}={getattr(self, name)!r}; it must be positive")
        if self.model in ("lrml", "cml"):
            losses.check(self.loss, losses.DISTANCE_LOSSES, self.temperature, self.model)
        elif self.model == "bpr":
            losses.check(self.loss, losses.PRODUCT_LOSSES, self.temperature, self.model)
        elif self.model == "ease" and not self.reg_weight > 0:
            raise UserError(f"reg_weight={self.reg_weight!r}: EASE needs a positive L2 weight")


# Each model's best setting by validation nDCG@10 on ml-100k from a small grid (lr, margin,
# reg_weight, embedding_dim), the same care for every model; see the README's results.
# EASE's default L2 weight is its author's for MovieLens-20M (Steck, WWW 2019).
DEFAULTS = {
    "lrml": TrainConfig(),
    "cml": TrainConfig(model="cml"),
    "bpr": TrainConfig(model="bpr", lr=3e-3, embedding_dim=BPRConfig.embedding_dim, reg_weight=BPRConfig.reg_weight,
                       loss=BPRConfig.loss, temperature=BPRConfig.temperature),
    "ease": TrainConfig(model="ease", reg_weight=EASEConfig.reg_weight, max_epochs=1),
    "pop": TrainConfig(model="pop", max_epochs=1),
}


def defaults(model: str) -> TrainConfig:
    """Good starting hyperparameters for ``model`` (not placeholders: see the README's table)."""
    if model not in DEFAULTS:
        raise UserError(f"model={model!r}; expected one of {MODELS}")
    return DEFAULTS[model]


def build_model(config: TrainConfig, num_users: int, num_items: int) -> Recommender:
    """The model ``config`` describes, sized for the dataset."""
    if config.model == "pop":
        return Popularity(PopularityConfig(num_users, num_items))
    if config.model == "ease":
        return EASE(EASEConfig(num_users, num_items, config.reg_weight))
    if config.model == "bpr":
        return BPRMF(BPRConfig(num_users, num_items, config.embedding_dim, config.reg_weight, config.loss,
                               config.temperature))
    return LRML(LRMLConfig(num_users, num_items, config.embedding_dim, config.memory_size, config.margin,
                           config.reg_weight, config.loss, config.temperature, config.item_bias,
                           use_memory=config.model == "lrml", clip_radius=config.clip_radius,
                           distance=config.distance, negative_relation=config.negative_relation,
                           regularizer=config.regularizer, sparse=config.regularizer != "seed"))


@dataclass
class EpochReport:
    """What the per-epoch callback receives."""

    epoch: int
    # "loss", "valid/sampled/hr@10", ..., "seconds" (this epoch's), "report_seconds" (of it, the validation of the
    # protocol reported but not monitored), "total_seconds" (every epoch's seconds but their report_seconds)
    metrics: dict[str, float]
    improved: bool  # the monitored validation metric is the best so far
    last: bool  # the run stops after this epoch (max_epochs reached or patience spent)
    trainer: "Trainer"


@dataclass
class FitResult:
    """The best epoch's validation metrics and the final metrics in both protocols."""

    best_epoch: int
    history: list[dict[str, float]]
    final: dict  # {"valid": {"sampled": {...}, "full": {...}}, "test": {...}, "seconds": ...}


class TrainingDiverged(RuntimeError):
    """The loss or the validation metric stopped being a finite number."""


class Trainer:
    """Owns the model, optimizer, negative sampler and evaluator for one run on one dataset.

    ``parallel`` is the data-parallel strategy: ``SingleProcess`` (the default) trains alone,
    ``lrml.parallel.Collective`` trains one model with the other workers of a process group, each
    worker on its own block of users (``dataset`` holds that shard of the training pairs).
    """

    def __init__(self, config: TrainConfig, dataset: Dataset, parallel: SingleProcess | Collective = SingleProcess(),
                 device: str | torch.device = "cpu"):
        self.config = config
        self.dataset = dataset
        self.parallel = parallel
        self.device = torch.device(device)
        torch.manual_seed(config.seed)
        self.model = build_model(config, dataset.num_users, dataset.num_items).to(self.device)
        parallel.attach(self.model, config.batch_size)
        self.optimizer = Optimizer(self.model, config.optimizer, config.lr, parallel.steps_per_step)
        parallel.share_state(self.optimizer)
        self.batch_size = parallel.batch_share(config.batch_size)  # the pairs of this worker's step
        self.sampler = NegativeSampler(dataset.train_keys, dataset.num_items, seed=config.seed * 1000 + parallel.rank)
        self.shuffle_rng = np.random.default_rng(config.seed * 1000 + parallel.rank + 500)
        self.evaluator = Evaluator(dataset)

    @property
    def trainable(self) -> bool:
        return not isinstance(self.model, ClosedForm)

    def _all_training_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole training split in canonical order (decoded from the sorted keys the sampler uses)."""
        keys, num_items = self.dataset.train_keys, self.dataset.num_items
        return keys // num_items, keys % num_items

    def train_epoch(self, users: np.ndarray, items: np.ndarray) -> float:
        """One pass over the given positive pairs with fresh negatives (``num_negatives`` per pair, drawn batch by
        batch); the mean loss per positive pair over all workers. A closed-form model is fitted instead.

        A worker takes the steps its strategy gives (``lrml.parallel``), wrapping around its pairs if they run
        out.
        """
        if not self.trainable:
            self.model.fit(*(torch.as_tensor(ids, dtype=torch.long, device=self.device) for ids in (users, items)))
            return 0.0
        self.parallel.begin_epoch()
        order = self.shuffle_rng.permutation(len(users))
        users, items = users[order], items[order]
        users_t = torch.as_tensor(users, dtype=torch.long, device=self.device)
        pos_t = torch.as_tensor(items, dtype=torch.long, device=self.device)
        size, k = self.batch_size, self.config.num_negatives
        total, trained = torch.zeros((), device=self.device), 0
        self.model.train()
        for step in self.parallel.steps(len(users), size):
            start = (step * size) % max(len(users), 1)
            batch = slice(start, start + size)
            trained += len(users[batch])
            negatives = self.sampler.sample(np.repeat(users[batch], k)).reshape(-1, k)
            self.optimizer.zero_grad()
            loss = self.model(users_t[batch], pos_t[batch], torch.as_tensor(negatives, device=self.device))
            loss.backward()
            self.parallel.after_backward()
            self.optimizer.step()
            self.parallel.after_step()
            total += loss.detach()
        self.parallel.end_epoch()
        loss_sum, pairs = self.parallel.agree_sum([total.item(), trained])
        return loss_sum / max(pairs, 1)

    def validate(self, protocols: tuple[str, ...] | None = None) -> dict[str, float]:
        """Validation metrics of ``protocols`` (default: the monitored one, both with ``validate_both``), flat and
        prefixed (``valid/sampled/ndcg@10``). Each worker evaluates the users it owns, whose rows are current only
        there, and every worker gets the means of their sums."""
        if protocols is None:
            protocols = PROTOCOLS if self.config.validate_both else (self.config.monitor,)
        block = self.parallel.user_block(self.dataset.num_users)
        sums, count = self.evaluator.metric_sums(self.model, "valid", protocols, block)
        names = [(protocol, name) for protocol in protocols for name in sums[protocol]]
        *totals, users = self.parallel.agree_sum([sums[protocol][name] for protocol, name in names] + [count])
        return {f"valid/{protocol}/{name}": total / max(users, 1) for (protocol, name), total in zip(names, totals)}

    def final_metrics(self) -> dict:
        """Validation and test metrics in both protocols (the CLI's ``--metrics-out`` shape)."""
        return {part: self.evaluator.evaluate(self.model, part) for part in ("valid", "test")}

    def checkpoint(self, epoch: int, metrics: dict) -> dict:
        """The checkpoint of this epoch, with what an exact resume needs: optimizer and random states."""
        state = {"optimizer": self.optimizer.state_dict(), "sampler_rng": self.sampler.rng.bit_generator.state,
                 "shuffle_rng": self.shuffle_rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        return checkpoints.checkpoint_dict(self.model, epoch, metrics, self.dataset.fingerprint, asdict(self.config),
                                           training_state=state)

    def _restore(self, checkpoint: dict) -> None:
        """Continue from ``checkpoint`` exactly as the run that wrote it would have gone on (with one worker;
        several workers all continue from the random states of rank 0, which wrote the checkpoint)."""
        origin = f"the checkpoint of epoch {checkpoint['epoch']}"
        checkpoints.check_dataset(checkpoint, self.dataset.fingerprint, origin)
        checkpoints.check_model(checkpoint, self.model, origin)
        self.model.load_state_dict(checkpoint["state_dict"])
        state = checkpoint["training_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.parallel.share_state(self.optimizer)
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        torch.set_rng_state(state["torch_rng"])

    def fit(self, callback: Callable[[EpochReport], None] | None = None,
            checkpoint_path: str | Path | None = None, positives: Callable[[], tuple] | None = None,
            final_eval: bool = True, resume: dict | None = None) -> FitResult:
        """Train with early stopping on validation nDCG@10; the model ends at its best epoch.

        ``positives`` supplies each epoch's (users, items) training pairs (default: the dataset's
        training pairs, all of them or its shard's), ``final_eval`` adds validation
        and test metrics in both protocols, and ``resume`` (a checkpoint dict, written at the best
        epoch so far) continues a run where that checkpoint left it.
        """
        started = time.perf_counter()
        if positives is None:
            positives = self._all_training_pairs
        monitor = monitor_key(self.config.monitor)
        history, best_value, best_epoch, best_state, spent = [], float("-inf"), 0, None, 0.0
        if resume is not None:
            self._restore(resume)
            best_value, best_epoch = resume["metrics"][monitor], resume["epoch"]
            spent = resume["metrics"].get("total_seconds", 0.0)  # a checkpoint written before runs counted it: 0
            best_state = copy.deepcopy(self.model.state_dict())
        max_epochs = self.config.max_epochs if self.trainable else 1
        for epoch in range(best_epoch + 1, max_epochs + 1):
            epoch_start, exchanged = time.perf_counter(), self.parallel.exchange_seconds
            loss = self.train_epoch(*positives())
            validation_start = time.perf_counter()
            metrics = {"epoch": epoch, "loss": loss, **self.validate((self.config.monitor,))}
            monitored = time.perf_counter()
            if self.config.validate_both:
                metrics.update(self.validate(tuple(p for p in PROTOCOLS if p != self.config.monitor)))
            now = time.perf_counter()
            metrics.update(seconds=now - epoch_start, validation_seconds=now - validation_start,
                           report_seconds=now - monitored if self.config.validate_both else 0.0,
                           exchange_seconds=self.parallel.exchange_seconds - exchanged)
            # every epoch up to this one, those before a resumed checkpoint too; without the protocol only
            # reported, so that a search reporting both judges its trials by the time they would take without
            spent += metrics["seconds"] - metrics["report_seconds"]
            metrics["total_seconds"] = spent
            if not all(math.isfinite(metrics[name]) for name in ("loss", monitor)):
                raise TrainingDiverged(f"epoch {epoch}: loss {loss}, {monitor} {metrics[monitor]}: the model diverged "
                                       f"(lr {self.config.lr:g} may be too high)")
            history.append(metrics)
            improved = metrics[monitor] > best_value
            if improved:
                self.parallel.gather_owned(self.optimizer)  # the whole model, for its checkpoint
                best_value, best_epoch = metrics[monitor], epoch
                best_state = copy.deepcopy(self.model.state_dict())
                if checkpoint_path:
                    checkpoints.save(self.checkpoint(epoch, metrics), checkpoint_path)
            last = epoch == max_epochs or epoch - best_epoch >= self.config.patience
            if callback:
                callback(EpochReport(epoch, metrics, improved, last, self))
            if last:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        final = self.final_metrics() if final_eval else {}
        final.update(seconds=time.perf_counter() - started, best_epoch=best_epoch)
        return FitResult(best_epoch, history, final)


def print_epoch(report: EpochReport) -> None:
    m = report.metrics
    shown = "  ".join(f"valid {protocol} hr@10 {m[f'valid/{protocol}/hr@10']:.4f} ndcg@10 {m[f'valid/{protocol}/ndcg@10']:.4f}"
                      for protocol in PROTOCOLS if f"valid/{protocol}/ndcg@10" in m)
    print(f"epoch {report.epoch:3d}  loss {m['loss']:.4f}  {shown}  {m['seconds']:.1f}s{'  *' if report.improved else ''}",
          flush=True)


def format_final(final: dict) -> str:
    """The final metrics as a small table: one row per split and protocol."""
    lines = [f"{'split':6} {'protocol':8} {'hr@10':>7} {'ndcg@10':>8} {'mrr':>7}"]
    for part in ("valid", "test"):
        for protocol, values in final[part].items():
            lines.append(f"{part:6} {protocol:8} {values['hr@10']:7.4f} {values['ndcg@10']:8.4f} {values['mrr']:7.4f}")
    return "\n".join(lines)


def yes_or_no(text: str) -> bool:
    """A command line's boolean: true/false, yes/no or 1/0."""
    answers = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in answers:
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return answers[text.lower()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lrml.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-latest-small", help="MovieLens release (default: the bundled ml-latest-small)")
    parser.add_argument("--data-dir", help="the release's archive or extracted folder (default: bundled copy or download)")
    parser.add_argument("--prepared-dir", help="where the prepared Parquet folder goes (default: under $LRML_DATA_HOME)")
    parser.add_argument("--min-rating", type=float, help="keep only ratings >= this as positives (default: all)")
    parser.add_argument("--model", choices=MODELS, default="lrml")
    hints = typing.get_type_hints(TrainConfig)
    for field in fields(TrainConfig):
        if field.name == "model":
            continue
        kind = value_type(hints[field.name])
        parser.add_argument("--" + field.name.replace("_", "-"), type=yes_or_no if kind is bool else kind, default=None,
                            help=f"default: the model's tuned value ({getattr(TrainConfig(), field.name)!r} for lrml)")
    parser.add_argument("--checkpoint", help="write the best epoch's checkpoint here")
    parser.add_argument("--metrics-out", help="write the final metrics here as JSON")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    """The command without the error handling of ``main``."""
    args = parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "model" and getattr(args, f.name) is not None}
    config = replace(defaults(args.model), **overrides)
    path = prepare(args.dataset, args.data_dir, args.prepared_dir, SplitParams(min_rating=args.min_rating))
    dataset = load_dataset(path)
    counts = dataset.manifest["counts"]
    print(f"{dataset.manifest['dataset']}: {counts['users']} users, {counts['items']} items, "
          f"{counts['train']} train / {counts['valid']} valid / {counts['test']} test ({path})")
    print(f"model {config.model}: {json.dumps({k: v for k, v in asdict(config).items() if k != 'model'})}", flush=True)
    result = Trainer(config, dataset).fit(callback=print_epoch, checkpoint_path=args.checkpoint)
    print(f"best epoch {result.best_epoch}; {result.final['seconds']:.1f}s")
    print(format_final(result.final))
    if args.metrics_out:
        Path(args.metrics_out).write_text(json.dumps(result.final, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lrml.train`` and ``lrml-train``: a mistake in the arguments is one line, not a traceback."""
    return cli.run(run, argv, "lrml.train")


if __name__ == "__main__":
    sys.exit(main())
