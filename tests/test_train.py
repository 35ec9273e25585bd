"""The trainer on real data: it learns, it stops early, its checkpoints and CLI output are usable."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lrml import checkpoint
from lrml.baselines import BPRMF
from lrml.data.split import contains
from lrml.errors import CheckpointMismatch
from lrml.optim import Optimizer
from lrml.sampling import NegativeSampler
from lrml.train import MONITOR, Trainer, TrainingDiverged, defaults, main


def test_negatives_are_unseen_and_uniform(small_dataset):
    d = small_dataset
    sampler = NegativeSampler(d.train_keys, d.num_items, seed=0)
    users = np.repeat(np.array([0, 1], dtype=np.int32), 50_000)
    negatives = sampler.sample(users)
    seen = set(zip(d.train_users.tolist(), d.train_items.tolist()))
    assert not any((u, i) in seen for u, i in zip(users[::97].tolist(), negatives[::97].tolist()))
    unseen_0 = d.num_items - (d.train_users == 0).sum()
    counts = np.bincount(negatives[:50_000], minlength=d.num_items)
    assert (counts > 0).sum() > 0.99 * unseen_0 * (1 - np.exp(-50_000 / unseen_0))


def test_the_samplers_membership_test_is_the_search_of_all_keys(small_dataset):
    d = small_dataset
    sampler = NegativeSampler(d.train_keys, d.num_items, seed=0)
    assert sampler.seen(d.train_users.astype(np.int64), d.train_items.astype(np.int64)).all()
    rng = np.random.default_rng(1)  # every user, one past the last that has a key, and every item
    users = rng.integers(0, d.num_users + 1, 200_000)
    items = rng.integers(0, d.num_items, 200_000)
    expected = contains(d.train_keys, users * d.num_items + items)
    assert expected.any() and (sampler.seen(users, items) == expected).all()


class RecordingBPR(BPRMF):
    """BPR-MF that keeps the negatives of every batch it trains on."""

    seen_negatives: list

    def loss(self, users, pos_items, neg_items):
        self.seen_negatives.append((users.clone(), neg_items.clone()))
        return super().loss(users, pos_items, neg_items)


def test_each_positive_trains_against_k_unseen_negatives(small_dataset):
    config = replace(defaults("bpr"), num_negatives=5, batch_size=4096)
    trainer = Trainer(config, small_dataset)
    trainer.model = RecordingBPR(trainer.model.config)
    trainer.model.seen_negatives = []
    trainer.optimizer = Optimizer(trainer.model, config.optimizer, config.lr)
    trainer.train_epoch(small_dataset.train_users, small_dataset.train_items)
    batches = trainer.model.seen_negatives
    assert len(batches) == -(-len(small_dataset.train_users) // 4096)
    assert all(negatives.shape == (len(users), 5) for users, negatives in batches)
    users = torch.cat([users.repeat_interleave(5) for users, _ in batches]).numpy()
    negatives = torch.cat([negatives.reshape(-1) for _, negatives in batches]).numpy()
    assert not contains(small_dataset.train_keys, users * small_dataset.num_items + negatives).any()


def test_ease_fits_once_and_beats_popularity(ml100k_dataset):
    pop = Trainer(defaults("pop"), ml100k_dataset).fit(final_eval=False)
    ease = Trainer(defaults("ease"), ml100k_dataset).fit(final_eval=False)
    assert len(ease.history) == 1 and ease.history[0]["loss"] == 0.0
    assert ease.history[0][MONITOR] > pop.history[0][MONITOR] + 0.1


def test_short_run_beats_popularity_on_validation(small_dataset, tmp_path):
    pop = Trainer(defaults("pop"), small_dataset).fit()
    reports = []
    config = replace(defaults("lrml"), max_epochs=6)
    result = Trainer(config, small_dataset).fit(callback=reports.append, checkpoint_path=tmp_path / "best.pt")
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
    best_valid = max(r.metrics[MONITOR] for r in reports)
    assert best_valid > pop.history[0][MONITOR] + 0.02, (best_valid, pop.history[0][MONITOR])
    # the model ends at its best epoch, and the checkpoint holds that epoch
    assert result.final["valid"]["sampled"]["ndcg@10"] == best_valid
    model, meta = checkpoint.load(tmp_path / "best.pt", expected_fingerprint=small_dataset.fingerprint)
    assert meta["epoch"] == result.best_epoch and meta["metrics"][MONITOR] == best_valid
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["train_config"]["model"] == "lrml"


def test_early_stopping_stops_after_patience(small_dataset):
    config = replace(defaults("lrml"), max_epochs=40, patience=1, lr=0.05)
    result = Trainer(config, small_dataset).fit()
    assert len(result.history) < 40
    assert len(result.history) == result.best_epoch + 1


def test_same_seed_same_run(small_dataset):
    config = replace(defaults("bpr"), max_epochs=1)  # the seed decides the initial weights, order and negatives
    first, second = (Trainer(config, small_dataset).fit(final_eval=False) for _ in range(2))
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert first.history[0][MONITOR] == second.history[0][MONITOR]


def test_the_monitor_picks_the_protocol_early_stopping_and_the_best_epoch_follow(small_dataset):
    both = replace(defaults("bpr"), max_epochs=6, patience=6, monitor="full", validate_both=True)
    trainer = Trainer(both, small_dataset)
    result = trainer.fit(final_eval=False)
    full = [epoch["valid/full/ndcg@10"] for epoch in result.history]
    sampled = [epoch["valid/sampled/ndcg@10"] for epoch in result.history]
    assert np.argmax(full) != np.argmax(sampled)  # this run's protocols peak at different epochs (4 and 6)
    assert result.best_epoch == 1 + int(np.argmax(full))
    # the model ends at that epoch: its full-ranking validation is the one reported for it
    assert trainer.evaluator.evaluate(trainer.model, "valid")["full"]["ndcg@10"] == pytest.approx(max(full), abs=1e-9)
    alone = Trainer(replace(both, validate_both=False), small_dataset).fit(final_eval=False)
    assert [set(epoch) for epoch in alone.history] == [set(epoch) - {k for k in epoch if k.startswith("valid/sampled/")}
                                                       for epoch in result.history]
    assert [epoch["valid/full/ndcg@10"] for epoch in alone.history] == full  # validating more changes no training


def test_cli_writes_metrics_json(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["--model", "bpr", "--max-epochs", "2", "--metrics-out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"valid", "test", "seconds"}
    for part in ("valid", "test"):
        for protocol in ("sampled", "full"):
            assert set(metrics[part][protocol]) == {"hr@10", "ndcg@10", "mrr"}
            assert 0 <= metrics[part][protocol]["ndcg@10"] <= metrics[part][protocol]["hr@10"] <= 1
    # full ranking over ~9.7k items is harder than 100 sampled candidates
    assert metrics["test"]["full"]["hr@10"] < metrics["test"]["sampled"]["hr@10"]
    # a random ranking puts the held-out item in the top 10 of 101 for 10/101 of the 610 users, sd
    # sqrt(p (1 - p) / 610) = 0.012: above 10/101 + 4 sd = 0.147 the metrics are a trained model's
    for part in ("valid", "test"):
        assert metrics[part]["sampled"]["hr@10"] > 10 / 101 + 4 * (10 / 101 * (1 - 10 / 101) / 610) ** 0.5
    printed = capsys.readouterr().out
    assert "epoch   2" in printed and "test   full" in printed


class Crash(Exception):
    """Stands for the process dying mid-run."""


def test_a_resumed_run_gives_the_same_metrics_as_an_uninterrupted_one(small_dataset, tmp_path):
    config = replace(defaults("lrml"), max_epochs=5)
    whole = Trainer(config, small_dataset).fit(final_eval=False).history

    def crash_in_epoch_4(report):
        if report.epoch == 4:
            raise Crash

    saved_at = tmp_path / "best.pt"
    with pytest.raises(Crash):
        Trainer(config, small_dataset).fit(callback=crash_in_epoch_4, checkpoint_path=saved_at, final_eval=False)
    saved = checkpoint.read(saved_at, expected_fingerprint=small_dataset.fingerprint)
    assert saved["epoch"] >= 2, "the run should have improved by then"
    resumed = Trainer(config, small_dataset).fit(resume=saved, final_eval=False).history
    assert [row["epoch"] for row in resumed] == list(range(saved["epoch"] + 1, 6))
    # the seconds trained go on from the checkpoint's, so a scheduler judges the resumed run at the right rung
    assert resumed[0]["total_seconds"] == saved["metrics"]["total_seconds"] + resumed[0]["seconds"]
    for before, after in zip(whole[saved["epoch"]:], resumed):  # optimizer and random states carried over
        assert after["loss"] == pytest.approx(before["loss"], abs=1e-6)
        assert after[MONITOR] == pytest.approx(before[MONITOR], abs=1e-6)


def test_the_search_clock_leaves_out_the_protocol_only_reported(small_dataset):
    """A search's rungs count ``total_seconds``: reporting the other protocol too (``validate_both``) times its
    validation apart and leaves it out, so that a search reporting both judges each trial by the time it would
    take without."""
    config = replace(defaults("lrml"), max_epochs=2, validate_both=True)
    both = Trainer(config, small_dataset).fit(final_eval=False).history
    assert all(row["report_seconds"] > 0 and "valid/full/ndcg@10" in row for row in both)
    assert both[-1]["total_seconds"] == pytest.approx(sum(row["seconds"] - row["report_seconds"] for row in both),
                                                      rel=1e-12)
    alone = Trainer(replace(config, max_epochs=1, validate_both=False), small_dataset).fit(final_eval=False).history
    assert alone[0]["report_seconds"] == 0.0 and alone[0]["total_seconds"] == alone[0]["seconds"]
    assert "valid/full/ndcg@10" not in alone[0]


def test_a_diverging_run_stops_with_the_reason_and_scores_nothing(small_dataset):
    with pytest.raises(TrainingDiverged, match=r"epoch 1: loss nan, valid/sampled/ndcg@10 0.0: the model diverged"):
        Trainer(replace(defaults("bpr"), max_epochs=3, lr=1e30), small_dataset).fit()


def test_a_checkpoint_of_another_dataset_model_or_shape_is_refused(small_dataset, tmp_path):
    config = replace(defaults("lrml"), max_epochs=1)
    Trainer(config, small_dataset).fit(checkpoint_path=tmp_path / "lrml.pt", final_eval=False)
    saved = checkpoint.read(tmp_path / "lrml.pt")
    with pytest.raises(CheckpointMismatch, match="a LRML checkpoint, but this run trains BPRMF"):
        Trainer(replace(defaults("bpr"), max_epochs=2), small_dataset).fit(resume=saved)
    with pytest.raises(CheckpointMismatch, match=r"the checkpoint's model has embedding_dim 100 \(this run: 64\)"):
        Trainer(replace(config, embedding_dim=64, max_epochs=2), small_dataset).fit(resume=saved)
    with pytest.raises(CheckpointMismatch, match=r"trained on dataset elsewhere, not the given dataset"):
        Trainer(replace(config, max_epochs=2), small_dataset).fit(resume={**saved, "dataset_fingerprint": "elsewhere"})
    with pytest.raises(CheckpointMismatch, match=r"lrml.pt: trained on dataset \w+, not the given dataset 0123"):
        checkpoint.read(tmp_path / "lrml.pt", expected_fingerprint="0123")
