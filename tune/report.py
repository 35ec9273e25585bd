"""Write a comparison's evidence under results/<experiment>/: the Markdown summary and the plots."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import optuna
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrml.train import MONITOR  # noqa: E402
from lrml_tune.compare import LABELS, RETRAIN_SEEDS, ModelResult  # noqa: E402
from lrml_tune.settings import SearchRecord  # noqa: E402
from lrml_tune.space import Param  # noqa: E402
from lrml_tune.stats import RESAMPLES  # noqa: E402

PROTOCOL = ("Leave-one-out by time (latest interaction = test, second latest = validation); "
            "**sampled**: the held-out item against 100 fixed unseen candidates; **full**: against every item, "
            "training items excluded (and the validation item on test). Ties count against the held-out item.")
SIGNIFICANCE = 0.05


def write_summary(out: Path, records: dict[str, SearchRecord], results: list[ModelResult],
                  lrml_trials: pd.DataFrame) -> None:
    """summary.md: how each model was searched, its test metrics with intervals and p-values, seeds, verdict."""
    lrml = records["lrml"].settings
    users = len(results[0].per_user["sampled"]["ndcg@10"])
    lines = [f"# `{out.name}`: LRML against baselines tuned with the same budget", "",
             f"Dataset **{lrml.dataset}** (prepared fingerprint `{records['lrml'].fingerprint}`), seed {lrml.seed}. "
             f"Each model: {lrml.num_samples} trials of up to {lrml.max_epochs} epochs (early stopping: patience 5), "
             f"{lrml.searcher} searcher, {lrml.scheduler} scheduler (grace period {lrml.grace_period}), "
             f"{lrml.workers_per_trial} worker(s) per trial.", ""]
    for model, record in records.items():
        outcome = record.outcome
        if outcome is not None:
            lines.append(f"- {LABELS[model]} search `{record.settings.name}`: {outcome.trials} trials "
                         f"({outcome.errors} errors), {outcome.epochs_trained} epochs in {outcome.wall_seconds:.0f} s; "
                         f"{outcome.concurrency} trial(s) at a time spent {100 * outcome.training_share:.0f}% of their "
                         "time inside training epochs.")
    missing = [LABELS[model] for model in ("cml", "bpr") if model not in records]
    if missing:
        lines.append(f"- Not compared: {', '.join(missing)} (no search with this budget was found).")
    lines += ["", PROTOCOL, "", "## Test metrics of each search's best checkpoint", "",
              "| model | trial | valid nDCG@10 | sampled HR@10 | sampled nDCG@10 | p vs LRML | full HR@10 | "
              "full nDCG@10 | p vs LRML |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cells = [r.label, r.trial or "", f"{r.valid['sampled']['ndcg@10']:.4f}"]
        for protocol in ("sampled", "full"):
            cells += [_with_ci(r.test[protocol]["hr@10"]), _with_ci(r.test[protocol]["ndcg@10"]),
                      _p(r.p_vs_lrml.get(protocol))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Brackets: 95% percentile bootstrap interval over the {users} test users ({RESAMPLES:,} resamples). "
              f"p: two-sided paired randomisation test against LRML on per-user nDCG@10 ({RESAMPLES:,} sign flips).", ""]
    if any(r.seeds for r in results):
        lines += [f"## Each best configuration retrained with seeds {', '.join(map(str, RETRAIN_SEEDS))}", "",
                  "Test metrics, mean ± sd over the seeds (same epochs budget and early stopping as the search); "
                  "the spread is training noise, to set beside the differences between models.", "",
                  "| model | sampled HR@10 | sampled nDCG@10 | full HR@10 | full nDCG@10 |", "|---|---:|---:|---:|---:|"]
        for r in results:
            if r.seeds:
                lines.append("| " + " | ".join([r.label] + [
                    f"{r.seeds[p][m]['mean']:.4f} ± {r.seeds[p][m]['sd']:.4f}"
                    for p in ("sampled", "full") for m in ("hr@10", "ndcg@10")]) + " |")
        lines.append("")
    lines += ["## Verdict", "", *verdict(results), "", "## Best configurations", ""]
    for r in results:
        if r.config:
            searched = records[r.model].settings.space
            lines.append(f"- {r.label}: " + ", ".join(f"`{name}={_short(r.config[name])}`" for name in searched))
    found = importances(lrml_trials, lrml.space)
    if found:
        lines += ["", "LRML hyperparameter importance (Optuna PED-ANOVA over its trials' best validation nDCG@10): "
                  + ", ".join(f"{name} {value:.2f}" for name, value in found.items())]
    lines += ["", "![optimisation history](optimization_history.png)", "", "![hyperparameters](hyperparameters.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def verdict(results: list[ModelResult]) -> list[str]:
    """Plain sentences: which model wins on test nDCG@10 in each protocol, by how much, and whether it is significant."""
    lrml = next(r for r in results if r.model == "lrml")
    lines = []
    for protocol in ("sampled", "full"):
        ranked = sorted(results, key=lambda r: r.test[protocol]["ndcg@10"]["mean"], reverse=True)
        lines.append(f"- **{protocol.capitalize()} protocol**: best test nDCG@10 is {ranked[0].label} "
                     f"({ranked[0].test[protocol]['ndcg@10']['mean']:.4f}).")
        for r in results:
            if r is lrml or r.model == "pop":
                continue
            ours, theirs = lrml.test[protocol]["ndcg@10"]["mean"], r.test[protocol]["ndcg@10"]["mean"]
            p = r.p_vs_lrml[protocol]
            judged = "significant" if p < SIGNIFICANCE else "not significant"
            lines.append(f"  LRML {ours:.4f} vs {r.label} {theirs:.4f}: LRML {'+' if ours >= theirs else '−'}"
                         f"{abs(ours - theirs):.4f} ({100 * (ours - theirs) / theirs:+.1f}%), p = {p:.3g}, "
                         f"{judged} at {SIGNIFICANCE}.")
    return lines


def importances(table: pd.DataFrame, space: dict[str, Param]) -> dict[str, float]:
    """PED-ANOVA importance (Optuna) of each searched hyperparameter for reaching the top trials."""
    if len(table) < 4:
        return {}
    study = optuna.create_study(direction="maximize")
    distributions = {name: param.distribution() for name, param in space.items()}
    for _, row in table.iterrows():
        params = {name: getattr(row[name], "item", lambda: row[name])() for name in space}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[MONITOR])))
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())


def _with_ci(value: dict) -> str:
    low, high = value["ci95"]
    return f"{value['mean']:.4f} [{low:.4f}, {high:.4f}]"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_plots(out: Path, searches: dict, results: list[ModelResult]) -> None:
    """optimization_history.png (each search's best-so-far) and hyperparameters.png (LRML's metric by each one)."""
    popularity = next(r for r in results if r.model == "pop").valid["sampled"]["ndcg@10"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for index, (model, experiment) in enumerate(searches.items()):
        table = experiment.table()
        order = {trial.trial_id: i for i, trial in enumerate(experiment.analysis.trials)}
        table = table.assign(trial_order=table["trial_id"].map(order)).sort_values("trial_order")
        axis.scatter(table["trial_order"], table[MONITOR], s=10, color=f"C{index}", alpha=0.5)
        axis.plot(table["trial_order"], table[MONITOR].cummax(), color=f"C{index}", label=f"{LABELS[model]}: best so far")
    axis.axhline(popularity, color="grey", linestyle="--", label="popularity")
    axis.set(xlabel="trial", ylabel="validation nDCG@10 (sampled)", title=f"{out.name}: optimisation history")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "optimization_history.png", dpi=110)
    plt.close(figure)

    lrml = searches["lrml"]
    table, searched = lrml.table(), list(lrml.record.settings.space)
    columns = min(3, len(searched))
    rows = -(-len(searched) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), sharey=True, squeeze=False)
    for axis, name in zip(axes.flat, searched):
        points = axis.scatter(table[name], table[MONITOR], s=14, c=table["epochs"], cmap="viridis")
        if lrml.record.settings.space[name].kind == "loguniform":
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set(xlabel=name)
    for axis in axes.flat[len(searched):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("validation nDCG@10")
    figure.subplots_adjust(hspace=0.45)
    figure.colorbar(points, ax=axes, label="epochs trained (weak trials are stopped early)")
    figure.suptitle(f"{out.name}: LRML trials' best validation nDCG@10 by hyperparameter")
    figure.savefig(out / "hyperparameters.png", dpi=110)
    plt.close(figure)
