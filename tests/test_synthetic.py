"""The synthetic generator: exact sizes, reproducible, MovieLens-like skew, and usable by prepare."""
import numpy as np
import pytest

from lrml.data import DataError, Shard, UnknownDatasetError, load_dataset, prepare, prepare_frame
from lrml.data.synthetic import generate
from lrml.evaluate import Evaluator
from lrml.model import LRML, LRMLConfig


def test_exact_counts_and_seeded():
    frame = generate(500, 300, 20_000, seed=3)
    assert len(frame) == 20_000
    assert not frame.duplicated(["user", "item"]).any()
    assert frame["user"].nunique() == 500 and frame["user"].min() == 1
    assert frame.equals(generate(500, 300, 20_000, seed=3))
    assert not frame.equals(generate(500, 300, 20_000, seed=4))


def test_skewed_like_movielens():
    frame = generate(2000, 1000, 100_000, seed=0)
    items = np.sort(frame["item"].value_counts().to_numpy())[::-1]
    users = frame["user"].value_counts().to_numpy()
    assert items[:100].sum() > 0.3 * len(frame)  # the top 10% of items draw a large share
    assert users.max() > 8 * np.median(users) and users.min() >= 5


def test_prepares_like_a_release(tmp_path):
    frame = generate(300, 400, 10_000, seed=0)
    d = load_dataset(prepare_frame(frame, "synthetic", tmp_path / "syn", {"ratings_sha256": "synthetic-0"}))
    assert d.manifest["counts"]["interactions"] == 10_000 and len(d.test_users) == 300


def test_a_named_shape_is_generated_once_and_prepared_like_a_release(tmp_path):
    out = tmp_path / "synthetic-ml-100k"
    path = prepare("synthetic-ml-100k", out_dir=out)
    dataset = load_dataset(path)
    counts = dataset.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (943, 1682, 100_000)
    assert dataset.manifest["source"]["origin"].startswith("lrml.data.synthetic v1: generate(943, 1682, 100000)")
    written = (path / "manifest.json").stat().st_mtime_ns
    assert prepare("synthetic-ml-100k", out_dir=out) == path and (path / "manifest.json").stat().st_mtime_ns == written
    with pytest.raises(UnknownDatasetError, match="synthetic-ml-1m, synthetic-ml-10m, synthetic-ml-20m"):
        prepare("synthetic-ml-7m", out_dir=tmp_path / "other")
    with pytest.raises(DataError, match="is generated, not read"):
        prepare("synthetic-ml-100k", source=tmp_path, out_dir=out)


def test_shards_split_the_training_pairs_by_whole_users(tmp_path):
    path = prepare_frame(generate(300, 400, 10_000, seed=0), "synthetic", tmp_path / "syn", {"ratings_sha256": "s"})
    whole = load_dataset(path)
    shards = [load_dataset(path, Shard(rank, 3)) for rank in range(3)]
    assert sum(len(shard.train_users) for shard in shards) == len(whole.train_users)
    for rank, shard in enumerate(shards):
        first, end = rank * 300 // 3, (rank + 1) * 300 // 3
        mine = (whole.train_users >= first) & (whole.train_users < end)
        assert np.array_equal(shard.train_users, whole.train_users[mine])
        assert np.array_equal(shard.train_items, whole.train_items[mine])
        assert np.array_equal(shard.valid_users, whole.valid_users)  # every worker can validate
    with pytest.raises(ValueError, match="full ranking needs every user's training items"):
        Evaluator(shards[0]).evaluate(LRML(LRMLConfig(300, 400, 4, 2)), "valid", ("full",))
