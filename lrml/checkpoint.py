"""Self-describing checkpoints: model class and config, weights, epoch, metrics and dataset fingerprint.

Everything is stored as tensors and plain Python values, so ``torch.load(..., weights_only=True)``
reads it and a model is rebuilt without any training or search code.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from lrml.baselines import BPRMF, EASE, BPRConfig, EASEConfig, Popularity, PopularityConfig
from lrml.errors import CheckpointMismatch
from lrml.model import LRML, LRMLConfig, Recommender

FORMAT = "lrml-checkpoint"
VERSION = 2  # 2: training_state (optimizer and random states) for an exact resume
MODEL_CLASSES = {cls.__name__: (cls, config) for cls, config in
                 ((LRML, LRMLConfig), (BPRMF, BPRConfig), (EASE, EASEConfig), (Popularity, PopularityConfig))}


def checkpoint_dict(model: Recommender, epoch: int, metrics: dict, dataset_fingerprint: str,
                    train_config: dict | None = None, training_state: dict | None = None) -> dict:
    """The checkpoint of ``model`` as a plain dict (what ``save`` writes); ``training_state`` holds what
    resuming the run needs beyond the weights (optimizer state, random-number states)."""
    return {"format": FORMAT, "version": VERSION, "model_class": type(model).__name__,
            "model_config": asdict(model.config), "state_dict": model.state_dict(), "epoch": epoch,
            "metrics": metrics, "dataset_fingerprint": dataset_fingerprint, "train_config": train_config or {},
            "training_state": training_state or {}}


def save(checkpoint: dict, path: str | Path) -> Path:
    """Write a checkpoint atomically (a crash mid-write never leaves a half file under ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return path


def read(path: str | Path, expected_fingerprint: str | None = None) -> dict:
    """The checkpoint dict at ``path``, refused if it is not an lrml checkpoint of this version and dataset."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointMismatch(f"{path}: not an lrml checkpoint")
    if checkpoint["version"] != VERSION:
        raise CheckpointMismatch(f"{path}: checkpoint version {checkpoint['version']}, this lrml reads {VERSION}")
    if expected_fingerprint:
        check_dataset(checkpoint, expected_fingerprint, str(path))
    return checkpoint


def check_dataset(checkpoint: dict, fingerprint: str, origin: str) -> None:
    """Refuse a checkpoint trained on another prepared dataset than the one with ``fingerprint``."""
    if checkpoint["dataset_fingerprint"] != fingerprint:
        raise CheckpointMismatch(f"{origin}: trained on dataset {checkpoint['dataset_fingerprint']}, "
                                 f"not the given dataset {fingerprint}")


def check_model(checkpoint: dict, model: Recommender, origin: str) -> None:
    """Refuse a checkpoint of another model class or shape than ``model``, naming what differs."""
    if checkpoint["model_class"] != type(model).__name__:
        raise CheckpointMismatch(f"{origin}: a {checkpoint['model_class']} checkpoint, but this run trains "
                                 f"{type(model).__name__}")
    saved, wanted = checkpoint["model_config"], asdict(model.config)
    differences = [f"{name} {saved.get(name)!r} (this run: {value!r})" for name, value in wanted.items()
                   if saved.get(name) != value]
    if differences:
        raise CheckpointMismatch(f"{origin}: the checkpoint's model has {', '.join(differences)}")


def load(path: str | Path, expected_fingerprint: str | None = None) -> tuple[Recommender, dict]:
    """The model stored at ``path`` (in eval mode) and the checkpoint dict it came from."""
    checkpoint = read(path, expected_fingerprint)
    model_class, config_class = MODEL_CLASSES[checkpoint["model_class"]]
    model = model_class(config_class(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
