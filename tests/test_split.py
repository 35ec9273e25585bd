"""The leave-one-out split and the fixed candidates, checked as invariants on real and hand-made data."""
import numpy as np
import pandas as pd
import pytest

from lrml.data import SplitError, SplitParams, load_dataset, prepare_frame
from lrml.data.split import TEST, TRAIN, VALID, interaction_keys, leave_one_out, sample_candidates


def test_leave_one_out_by_hand():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    items = np.array([5, 6, 7, 8, 1, 2, 3, 4, 9, 1])
    times = np.array([40, 10, 30, 20, 1, 2, 7, 7, 7, 1])  # user 2: a three-way tie at the end
    labels = leave_one_out(users, items, times)
    assert labels[:6].tolist() == [TEST, TRAIN, VALID, TRAIN, TRAIN, TRAIN]
    assert sorted(labels[6:9].tolist()) == [TRAIN, VALID, TEST] and labels[9] == TRAIN
    shuffled = np.random.default_rng(0).permutation(len(users))
    assert np.array_equal(leave_one_out(users[shuffled], items[shuffled], times[shuffled]), labels[shuffled])


def test_ties_do_not_favour_high_or_low_item_ids():
    users = np.repeat(np.arange(3000), 3)
    items = np.tile([10, 20, 30], 3000) + np.repeat(np.arange(3000) % 7, 3)
    labels = leave_one_out(users, items, np.zeros(len(users), dtype=np.int64))
    position_of_test = np.flatnonzero(labels == TEST) % 3  # 0: smallest id of the three, 2: largest
    assert np.all(np.abs(np.bincount(position_of_test) / 3000 - 1 / 3) < 0.05)


def test_split_invariants_on_ml100k(ml100k_dataset):
    d = ml100k_dataset
    assert d.manifest["counts"]["train"] + 2 * 943 == 100_000
    train = pd.DataFrame({"user": d.train_users, "item": d.train_items})
    train_pairs = set(zip(d.train_users.tolist(), d.train_items.tolist()))
    assert not train_pairs & set(zip(d.test_users.tolist(), d.test_items.tolist()))
    assert not train_pairs & set(zip(d.valid_users.tolist(), d.valid_items.tolist()))
    # each user's test item is their latest interaction, validation the one before
    frame = pd.read_parquet(d.path / "train.parquet")
    valid, test = pd.read_parquet(d.path / "valid.parquet"), pd.read_parquet(d.path / "test.parquet")
    latest_train = frame.groupby("user")["timestamp"].max()
    assert (valid.set_index("user")["timestamp"] >= latest_train).all()
    assert (test.set_index("user")["timestamp"] >= valid.set_index("user")["timestamp"]).all()
    assert train["user"].nunique() == 943


def test_candidates_are_unseen_distinct_and_fixed(ml100k_dataset, tmp_path):
    d = ml100k_dataset
    seen = set(zip(d.train_users.tolist(), d.train_items.tolist()))
    seen |= set(zip(d.valid_users.tolist(), d.valid_items.tolist())) | set(zip(d.test_users.tolist(), d.test_items.tolist()))
    for users, cands in ((d.valid_users, d.valid_candidates), (d.test_users, d.test_candidates)):
        assert cands.shape == (943, 100)
        assert all(len(set(row)) == 100 for row in cands.tolist())
        assert not any((u, i) in seen for u, row in zip(users.tolist(), cands.tolist()) for i in row)
    assert not np.array_equal(d.valid_candidates, d.test_candidates)
    # fixed: the same ratings and seed draw the same candidates in a fresh preparation; another seed does not
    frame = pd.concat([pd.read_parquet(d.path / f"{part}.parquet") for part in ("train", "valid", "test")])
    again = load_dataset(prepare_frame(frame, "again", tmp_path / "again", {"ratings_sha256": "x"}))
    assert np.array_equal(again.valid_candidates, d.valid_candidates)
    assert np.array_equal(again.test_candidates, d.test_candidates)
    other = load_dataset(prepare_frame(frame, "other", tmp_path / "other", {"ratings_sha256": "x"}, SplitParams(seed=1)))
    assert (other.test_candidates != d.test_candidates).mean() > 0.9


def test_candidate_sampling_is_uniform():
    rng = np.random.default_rng(0)
    users = np.arange(2000)
    seen = interaction_keys(users, users % 10, 20)  # each user saw one of items 0..9
    cands = sample_candidates(users, seen, 20, 10, rng)
    counts = np.bincount(cands.ravel(), minlength=20)
    # each unseen item is drawn with probability 10/19 per user
    assert counts[10:].min() > 0.9 * 2000 * 10 / 19 and counts[10:].max() < 1.1 * 2000 * 10 / 19


def test_users_with_fewer_than_three_interactions_stay_in_train(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 1, 2, 2] + [3] * 5, "item": [1, 2, 3, 1, 2] + list(range(1, 6)),
                          "rating": 4.0, "timestamp": range(10)})
    frame = pd.concat([frame, pd.DataFrame({"user": 9, "item": range(10, 120), "rating": 1.0, "timestamp": 0})])
    d = load_dataset(prepare_frame(frame, "tiny", tmp_path / "tiny", {"ratings_sha256": "x"},
                                   SplitParams(num_candidates=5)))
    assert d.manifest["counts"]["users_train_only"] == 1
    assert 1 not in d.test_users.tolist() and (d.train_users == 1).sum() == 2


def test_too_small_to_split(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 2], "item": [1, 2, 1], "rating": 4.0, "timestamp": [1, 2, 3]})
    with pytest.raises(SplitError, match="too small to split"):
        prepare_frame(frame, "tiny", tmp_path / "tiny", {"ratings_sha256": "x"})
    assert not (tmp_path / "tiny").exists()
    frame = pd.DataFrame({"user": 1, "item": [1, 2, 3, 4], "rating": 4.0, "timestamp": [1, 2, 3, 4]})
    with pytest.raises(SplitError, match="100 evaluation candidates are needed"):
        prepare_frame(frame, "tiny", tmp_path / "tiny", {"ratings_sha256": "x"})
    assert [p.name for p in tmp_path.iterdir()] == [".tiny.lock"]  # nothing half-written, only the lock
