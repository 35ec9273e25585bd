"""Prepared dataset folders: build one from raw ratings (atomically) and load one back.

A folder holds Parquet tables (train, valid, test, their fixed candidates, id maps) and a
``manifest.json`` written last; a folder without a manifest is never trusted, and a manifest
made from another source or with other parameters is refused rather than mixed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from lrml.data import split, synthetic
from lrml.data.errors import DataError, DatasetMismatchError, SplitError
from lrml.data.parsers import parse_ratings, parse_titles
from lrml.data.releases import get_release
from lrml.data.sources import read_source

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROTOCOL = "leave-one-out by time: latest interaction = test, second latest = validation, rest = train"


@dataclass(frozen=True)
class SplitParams:
    """What, besides the source, decides a prepared dataset's content."""

    min_rating: float | None = None  # keep ratings >= this as positives; None keeps every rating
    num_candidates: int = 100  # sampled negatives per validation and test user
    seed: int = 0  # seeds the candidate sampling

    def folder_suffix(self) -> str:
        parts = []
        if self.min_rating is not None:
            parts.append(f"r{self.min_rating:g}")
        if self.num_candidates != 100:
            parts.append(f"c{self.num_candidates}")
        if self.seed != 0:
            parts.append(f"s{self.seed}")
        return "".join("-" + part for part in parts)


def data_home() -> Path:
    """Where prepared datasets and downloads go: ``$LRML_DATA_HOME`` or ``~/.cache/lrml``."""
    return Path(os.environ.get("LRML_DATA_HOME", Path.home() / ".cache" / "lrml")).expanduser()


def prepare(dataset: str = "ml-latest-small", source: str | Path | None = None, out_dir: str | Path | None = None,
            params: SplitParams = SplitParams(), overwrite: bool = False, progress: bool = True) -> Path:
    """Prepared folder for a MovieLens release, built once and reused.

    ``source`` is the release archive or its extracted folder; without it ml-latest-small comes
    from the copy inside this package and other releases are downloaded and verified.
    ``synthetic-<release>`` (for example ``synthetic-ml-20m``) is generated in that release's shape.
    """
    if synthetic.is_synthetic(dataset):
        return _prepare_synthetic(dataset, source, out_dir, params, overwrite, progress)
    release = get_release(dataset)
    out_dir = Path(out_dir) if out_dir else data_home() / "datasets" / (release.name + params.folder_suffix())
    raw = read_source(release, Path(source) if source else None, data_home() / "downloads", progress)
    source_info = {"origin": raw.ratings_origin, "ratings_sha256": raw.ratings_sha256,
                   "archive_verified": raw.archive_verified}
    with _preparing(out_dir):  # two processes preparing one folder: the second waits, then reuses the first's
        if _reusable(out_dir, release.name, source_info, params, overwrite):
            return out_dir
        frame = parse_ratings(raw.ratings, release.ratings_format, raw.ratings_origin)
        if len(frame) != release.ratings:
            warnings.warn(f"{raw.ratings_origin}: {len(frame)} ratings, but {release.name} as published has "
                          f"{release.ratings}; the file may be truncated or edited", stacklevel=2)
        titles = parse_titles(raw.titles, release.ratings_format) if raw.titles else None
        write_dataset(frame, out_dir, release.name, source_info, params, titles)
    return out_dir


def _prepare_synthetic(name: str, source: str | Path | None, out_dir: str | Path | None, params: SplitParams,
                       overwrite: bool, progress: bool) -> Path:
    """Generate and prepare ``synthetic-<shape>`` unless a folder already holds it (generation is the slow part)."""
    if source is not None:
        raise DataError(f"{name} is generated, not read: drop the data folder ({source})")
    source_info = synthetic.synthetic_source(name)
    out_dir = Path(out_dir) if out_dir else data_home() / "datasets" / (name + params.folder_suffix())
    with _preparing(out_dir):
        if not _reusable(out_dir, name, source_info, params, overwrite):
            if progress:
                print(f"{name}: generating {synthetic.synthetic_shape(name)[2]:,} ratings into {out_dir}", flush=True)
            write_dataset(synthetic.generate(*synthetic.synthetic_shape(name), seed=0), out_dir, name, source_info,
                          params)
    return out_dir


def prepare_frame(frame: pd.DataFrame, name: str, out_dir: str | Path, source_info: dict,
                  params: SplitParams = SplitParams(), overwrite: bool = False) -> Path:
    """Prepared folder from a ratings frame already in memory (synthetic data, custom sources)."""
    out_dir = Path(out_dir)
    with _preparing(out_dir):
        if not _reusable(out_dir, name, source_info, params, overwrite):
            write_dataset(frame, out_dir, name, source_info, params)
    return out_dir


def _preparing(out_dir: Path) -> FileLock:
    """The lock one process holds while it checks and (re)writes ``out_dir``: a file beside the folder."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(out_dir.parent / f".{out_dir.name}.lock")


def _reusable(out_dir: Path, name: str, source_info: dict, params: SplitParams, overwrite: bool) -> bool:
    """True when ``out_dir`` already holds this exact dataset; a different one is an error unless overwriting."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.exists():
        if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
            raise DatasetMismatchError(f"{out_dir} exists, is not empty and has no {MANIFEST}; "
                                       "choose another folder or pass overwrite=True")
        return False
    manifest = json.loads(manifest_path.read_text())
    wanted = {"format_version": FORMAT_VERSION, "dataset": name,
              "ratings_sha256": source_info["ratings_sha256"], "split": asdict(params)}
    found = {"format_version": manifest.get("format_version"), "dataset": manifest.get("dataset"),
             "ratings_sha256": manifest.get("source", {}).get("ratings_sha256"), "split": manifest.get("split_params")}
    differences = [f"{key}: folder has {found[key]!r}, asked for {wanted[key]!r}" for key in wanted if found[key] != wanted[key]]
    if not differences:
        return True
    if overwrite:
        return False
    raise DatasetMismatchError(f"{out_dir} was prepared differently ({'; '.join(differences)}); "
                               "choose another folder or pass overwrite=True (--overwrite) to rebuild it")


def write_dataset(frame: pd.DataFrame, out_dir: Path, name: str, source_info: dict, params: SplitParams,
                  titles: pd.DataFrame | None = None) -> None:
    """Index, split and sample candidates, then write every table and the manifest into ``out_dir`` atomically."""
    if params.min_rating is not None:
        frame = frame[frame["rating"] >= params.min_rating]
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates(["user", "item"], keep="last")
    if len(frame) == 0:
        raise SplitError(f"{name}: no interactions left to split (min_rating={params.min_rating})")
    user_ids, users = np.unique(frame["user"].to_numpy(), return_inverse=True)
    item_ids, items = np.unique(frame["item"].to_numpy(), return_inverse=True)
    timestamps = frame["timestamp"].to_numpy(np.int64)
    labels = split.leave_one_out(users, items, timestamps)
    eval_users = np.sort(users[labels == split.TEST])
    if len(eval_users) == 0:
        raise SplitError(f"{name}: too small to split: no user has {split.MIN_INTERACTIONS} or more interactions")
    seen = split.interaction_keys(users, items, len(item_ids))
    rng = np.random.default_rng(params.seed)
    candidates = {part: split.sample_candidates(eval_users, seen, len(item_ids), params.num_candidates, rng)
                  for part in ("valid", "test")}

    table = pd.DataFrame({"user": users.astype(np.int32), "item": items.astype(np.int32),
                          "timestamp": timestamps, "rating": frame["rating"].to_numpy(np.float32)})
    parts = {part: table[labels == code].sort_values(["user", "timestamp", "item"], ignore_index=True)
             for part, code in (("train", split.TRAIN), ("valid", split.VALID), ("test", split.TEST))}
    train_only = np.setdiff1d(np.unique(users), eval_users)
    item_table = pd.DataFrame({"item": np.arange(len(item_ids), dtype=np.int32), "raw_id": item_ids})
    if titles is not None:
        item_table = item_table.merge(titles.drop_duplicates("item").rename(columns={"item": "raw_id"}),
                                      on="raw_id", how="left")
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": name,
        "source": source_info,
        "split_params": asdict(params),
        "protocol": PROTOCOL,
        "tie_break": "equal timestamps: ordered by a fixed hash of (user, item)",
        "counts": {"interactions": int(len(table)), "users": int(len(user_ids)), "items": int(len(item_ids)),
                   "train": len(parts["train"]), "valid": len(parts["valid"]), "test": len(parts["test"]),
                   "users_train_only": int(len(train_only)), "eval_users": int(len(eval_users))},
        "fingerprint": fingerprint(name, source_info["ratings_sha256"], params),
    }
    tables = {**{f"{part}.parquet": data for part, data in parts.items()},
              **{f"{part}_candidates.parquet": _long_candidates(eval_users, cands) for part, cands in candidates.items()},
              "users.parquet": pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "raw_id": user_ids}),
              "items.parquet": item_table}
    _write_atomically(out_dir, tables, manifest)


def fingerprint(name: str, ratings_sha256: str, params: SplitParams) -> str:
    """Short digest naming a prepared dataset's content; checkpoints carry it."""
    text = json.dumps([FORMAT_VERSION, name, ratings_sha256, asdict(params)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _long_candidates(eval_users: np.ndarray, candidates: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"user": np.repeat(eval_users, candidates.shape[1]).astype(np.int32),
                         "item": candidates.reshape(-1)})


def _write_atomically(out_dir: Path, tables: dict[str, pd.DataFrame], manifest: dict) -> None:
    """Write into a hidden sibling folder, then swap it in; a failure leaves nothing that looks finished."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for file_name, data in tables.items():
            pq.write_table(pa.Table.from_pandas(data, preserve_index=False), staging / file_name)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            retired = out_dir.parent / f".{out_dir.name}.retired-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, retired)
            shutil.rmtree(retired)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class Shard:
    """Data-parallel worker ``rank`` of ``world``: it holds the training pairs of one contiguous block of users,
    all of each user's, so its negative sampler knows every positive of the users it trains on."""

    rank: int
    world: int

    def user_range(self, num_users: int) -> tuple[int, int]:
        """The first user of the block and one past its last."""
        return self.rank * num_users // self.world, (self.rank + 1) * num_users // self.world


@dataclass
class Dataset:
    """A prepared dataset in memory: index arrays for each split and the fixed candidates."""

    path: Path
    manifest: dict
    train_users: np.ndarray
    train_items: np.ndarray
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    valid_candidates: np.ndarray  # (len(valid_users), num_candidates), rows aligned with valid_users
    test_candidates: np.ndarray
    item_titles: list[str | None] = field(repr=False, default_factory=list)
    item_raw_ids: np.ndarray = field(repr=False, default=None)
    user_raw_ids: np.ndarray = field(repr=False, default=None)
    shard: Shard | None = None  # the training pairs are this shard's only; None: all of them

    @property
    def num_users(self) -> int:
        return self.manifest["counts"]["users"]

    @property
    def num_items(self) -> int:
        return self.manifest["counts"]["items"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @cached_property
    def train_keys(self) -> np.ndarray:
        """Sorted ``user * num_items + item`` keys of the training interactions."""
        return split.interaction_keys(self.train_users, self.train_items, self.num_items)

    def split_arrays(self, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users, held-out items and candidates of ``part`` ("valid" or "test")."""
        if part == "valid":
            return self.valid_users, self.valid_items, self.valid_candidates
        if part == "test":
            return self.test_users, self.test_items, self.test_candidates
        raise ValueError(f"unknown split {part!r}; expected 'valid' or 'test'")


def read_manifest(path: str | Path) -> dict:
    """A prepared folder's manifest (counts, fingerprint) without its tables; refuses a folder without one
    or of another format version."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        raise DataError(f"{path}: not a prepared dataset (no {MANIFEST}); run lrml.data.prepare first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: format version {manifest.get('format_version')!r}, this lrml reads "
                        f"{FORMAT_VERSION}; prepare the dataset again with overwrite=True")
    return manifest


def load_dataset(path: str | Path, shard: Shard | None = None,
                 train_pairs: tuple[np.ndarray, np.ndarray] | None = None) -> Dataset:
    """Load a prepared folder (see ``read_manifest`` for what is refused).

    With ``shard``, only that shard's training pairs are read (row groups of other users are skipped).
    ``train_pairs`` (users, items) are the shard's training pairs read elsewhere (``lrml_tune.sweep.trainable`` reads a
    worker's through Ray Data), in the file's order, used in place of reading ``train.parquet``.
    """
    path = Path(path)
    manifest = read_manifest(path)

    def columns(file_name: str, *names: str, filters=None) -> list[np.ndarray]:
        table = pq.read_table(path / file_name, columns=list(names), filters=filters)
        return [table.column(name).to_numpy().copy() for name in names]  # writable, for torch

    block = None
    if shard is not None:
        first, end = shard.user_range(manifest["counts"]["users"])
        block = [("user", ">=", first), ("user", "<", end)]
    train_users, train_items = train_pairs or columns("train.parquet", "user", "item", filters=block)
    valid_users, valid_items = columns("valid.parquet", "user", "item")
    test_users, test_items = columns("test.parquet", "user", "item")
    num_candidates = manifest["split_params"]["num_candidates"]
    valid_cand_users, valid_cands = columns("valid_candidates.parquet", "user", "item")
    test_cand_users, test_cands = columns("test_candidates.parquet", "user", "item")
    if not (np.array_equal(valid_cand_users[::num_candidates], valid_users)
            and np.array_equal(test_cand_users[::num_candidates], test_users)):
        raise DataError(f"{path}: candidate tables do not line up with the validation/test users; prepare again")
    items = pq.read_table(path / "items.parquet").to_pandas()
    titles = items["title"].tolist() if "title" in items else [None] * len(items)
    (user_raw_ids,) = columns("users.parquet", "raw_id")
    return Dataset(path, manifest, train_users, train_items, valid_users, valid_items, test_users, test_items,
                   valid_cands.reshape(-1, num_candidates), test_cands.reshape(-1, num_candidates),
                   item_titles=titles, item_raw_ids=items["raw_id"].to_numpy(), user_raw_ids=user_raw_ids, shard=shard)
