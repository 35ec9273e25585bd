"""results/tables.py: the committed results pages are what the committed files give, and a number changed by hand
in either page is caught."""
import importlib.util
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

SPEC = importlib.util.spec_from_file_location("results_tables", REPO / "results" / "tables.py")
tables = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tables)


def test_the_committed_results_pages_are_a_fresh_build_of_their_files(capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().err


def test_the_pooled_test_averages_each_user_over_the_search_seeds(tmp_path):
    users = np.arange(1, 21)
    for seed, (first, second) in enumerate(((0.5, 0.3), (0.3, 0.5))):  # each seed favours another model
        folder = tmp_path / f"ml-x-lrml-tpe-s{seed}"
        folder.mkdir()
        pd.DataFrame({"user": np.concatenate([users, users]), "model": ["a"] * 20 + ["b"] * 20, "protocol": "full",
                      "ndcg@10": [first] * 20 + [second] * 20}).to_parquet(folder / "per_user.parquet")
    frames = tables.per_user_frames(tmp_path, "ml-x", "tpe", [0, 1])
    # averaged over seeds the two are equal for every user: no sign flip is less extreme, p is 1
    assert tables.pooled_p(frames, "a", "b", "full") == 1.0
    # one seed alone: a beats b for all 20 users, so only the observed signs (and their mirror) are as extreme
    assert tables.pooled_p(frames[:1], "a", "b", "full") < 0.001
    assert tables.per_user_frames(tmp_path, "ml-x", "tpe", [0, 1, 2]) is None  # seed 2 has no per-user file


def choices(on_sampled: tuple[float, float], on_full: tuple[float, float]) -> dict:
    """A search's two choices, each by its retrains' mean test nDCG@10 (sampled, full)."""
    def runs(sampled: float, full: float) -> dict:
        return {"config": {"lr": sampled}, "runs": {"test": {"sampled": {"ndcg@10": {"mean": sampled}},
                                                             "full": {"ndcg@10": {"mean": full}}}}}
    return {"sampled": runs(*on_sampled), "full": runs(*on_full)}


def test_a_live_full_search_checks_the_replay_and_is_not_counted_among_the_replays():
    replay = {"search": "ml-x-lrml-s0", "model": "lrml", "dataset": "ml-x", "seed": 0, "search_metric": "sampled",
              "choices": choices((0.50, 0.030), (0.49, 0.032))}
    live = {"search": "ml-x-lrml-full-s0", "model": "lrml", "dataset": "ml-x", "seed": 0, "search_metric": "full",
            "choices": choices((0.40, 0.020), (0.30, 0.060))}  # gaps that would change the verdict if counted
    [words] = tables.metric_words([replay, live], ["ml-x"])
    assert "(1 choices: LRML)" in words and "by -0.0100 sampled" in words and "+0.0020 full" in words
    assert "sampled stays the better choice" in words
    section = "\n".join(tables.metric_section([replay, live]))
    assert "| ml-x | all | 1 | -0.0100 |" in section
    assert ("`ml-x-lrml-full-s0`'s own choice on full-ranking validation scored test nDCG@10 0.3000 sampled and "
            "0.0600 full, the choice replayed from `ml-x-lrml-s0` 0.4900 sampled and 0.0320 full") in section


def nudged(text: str) -> str:
    """``text`` with its first four-decimal number's last digit changed, as a hand edit would."""
    found = re.search(r"0\.\d{4}", text)
    number = found.group()
    return text[:found.start()] + number[:-1] + str((int(number[-1]) + 1) % 10) + text[found.end():]


@pytest.mark.parametrize("page", ["results/README.md", "README.md"])
def test_a_number_changed_by_hand_fails_the_check(page, tmp_path, capsys):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "results", copy / "results", ignore=shutil.ignore_patterns("ray"))
    shutil.copy(REPO / "README.md", copy / "README.md")
    check = ["--check", "--root", str(copy / "results")]
    assert tables.main(check) == 0
    (copy / page).write_text(nudged((copy / page).read_text()))
    assert tables.main(check) == 1
    assert f"{copy / page}: differs from what results/tables.py builds" in capsys.readouterr().err
    assert tables.main(["--root", str(copy / "results")]) == 0 and tables.main(check) == 0  # a build mends it
