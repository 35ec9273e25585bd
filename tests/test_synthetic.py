"""The synthetic generator: exact sizes, reproducible, MovieLens-like skew, and usable by prepare."""
import numpy as np

from lrml.data import load_dataset, prepare_frame
from lrml.data.synthetic import generate


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
