"""Write a comparison's evidence under results/<experiment>/: the Markdown summary and the plots."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import optuna
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrml_tune.comparison.model_result import LABELS, ModelResult, drop  # noqa: E402
from lrml_tune.comparison.selection import RETRAIN_SEEDS  # noqa: E402
from lrml_tune.comparison.stats import RESAMPLES  # noqa: E402
from lrml_tune.sweep import SearchRecord  # noqa: E402
from lrml_tune.sweep.space import Param, field_distributions  # noqa: E402

PROTOCOL = ("Leave-one-out by time (latest interaction = test, second latest = validation); "
            "**sampled**: the held-out item against 100 fixed unseen candidates; **full**: against every item, "
            "training items excluded (and the validation item on test). Ties count against the held-out item.")
SIGNIFICANCE = 0.05


def write_summary(out: Path, records: dict[str, SearchRecord], results: list[ModelResult],
                  lrml_trials: pd.DataFrame) -> None:
    """summary.md: how each model was tuned, its test metrics with intervals and p-values, the configuration
    chosen and how, tuned against defaults, warnings, and a verdict."""
    lrml = records["lrml"].settings
    users = len(results[0].per_user["sampled"]["ndcg@10"])
    lines = [f"# `{out.name}`: LRML against baselines tuned with the same care", "",
             f"Dataset **{lrml.dataset}** (prepared fingerprint `{records['lrml'].fingerprint}`), search seed "
             f"{lrml.seed}. Each searched model: {lrml.num_samples} trials of up to {lrml.max_epochs} epochs "
             f"(patience {lrml.patience}), {lrml.searcher} searcher, {lrml.scheduler} scheduler (rungs by seconds "
             f"trained, grace period {lrml.grace_epochs}), {lrml.workers_per_trial} worker(s) per trial, selecting on "
             f"validation nDCG@10 "
             f"({lrml.metric}). EASE: its one weight searched on the same validation metric by `tune/best.py`. "
             "Popularity: nothing to tune.", ""]
    for model, record in records.items():
        outcome = record.outcome
        if outcome is not None:
            lines.append(f"- {LABELS[model]} search `{record.settings.name}`: {outcome.time_spent()}.")
    missing = [LABELS[model] for model in ("cml", "bpr") if model not in records]
    if missing:
        lines.append(f"- Not compared: {', '.join(missing)} (no search with this budget was found).")
    lines += ["", PROTOCOL, "", "## Test metrics of each model's chosen checkpoint", "",
              f"| model | trial | valid nDCG@10 ({lrml.metric}) | sampled HR@10 | sampled nDCG@10 | p vs LRML | "
              "full HR@10 | full nDCG@10 | p vs LRML |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cells = [r.label, r.trial or "", f"{r.valid[lrml.metric]['ndcg@10']:.4f}"]
        for protocol in ("sampled", "full"):
            cells += [_with_ci(r.test[protocol]["hr@10"]), _with_ci(r.test[protocol]["ndcg@10"]),
                      _p(r.p_values.get("lrml", {}).get(protocol))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Brackets: 95% percentile bootstrap interval over the {users} test users ({RESAMPLES:,} resamples). "
              f"p: two-sided paired randomisation test on per-user nDCG@10 ({RESAMPLES:,} sign flips).", ""]
    lines += tuned_against_defaults(results) + selection(results, lrml.metric) + ["## Verdict", "", *verdict(results), ""]
    warned = [(r.label, note) for r in results for note in r.notes]
    if warned:
        lines += ["## Warnings", ""] + [f"- {label}: {note}" for label, note in warned] + [""]
    lines += ["## Chosen configurations", ""]
    for r in results:
        if r.config:
            shown = r.config if r.model not in records else {name: r.config[name] for name in _fields(records[r.model])
                                                             if name in r.config}
            lines.append(f"- {r.label}: " + ", ".join(f"`{name}={_short(value)}`" for name, value in shown.items()))
    found = importances(lrml_trials, records["lrml"].space, lrml.monitor)
    if found:
        lines += ["", f"LRML hyperparameter importance (Optuna PED-ANOVA over its trials' best validation nDCG@10, "
                  f"{lrml.metric}): "
                  + ", ".join(f"{name} {value:.2f}" for name, value in found.items())]
    lines += ["", "![optimisation history](optimization_history.png)", "", "![hyperparameters](hyperparameters.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def tuned_against_defaults(results: list[ModelResult]) -> list[str]:
    """The table that says whether tuning paid: the chosen configuration's retrains against the defaults'."""
    rows = [r for r in results if r.defaults]
    if not rows:
        return []
    seeds = ", ".join(map(str, RETRAIN_SEEDS))
    lines = ["## Tuned against not tuning", "",
             f"Test nDCG@10, mean ± sd over seeds {seeds}: the chosen configuration retrained, and the model's "
             "defaults (`lrml.train.DEFAULTS`) trained to convergence with the same seeds (EASE: one fit of "
             "its default weight, deterministic).", "",
             "| model | tuned, sampled | defaults, sampled | difference | tuned, full | defaults, full | difference |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r.label]
        for protocol in ("sampled", "full"):
            tuned = r.seeds["test"][protocol]["ndcg@10"] if r.seeds else {"mean": r.test[protocol]["ndcg@10"]["mean"]}
            base = r.defaults["test"][protocol]["ndcg@10"]
            cells += [_mean_sd(tuned), _mean_sd(base), f"{tuned['mean'] - base['mean']:+.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def selection(results: list[ModelResult], metric: str) -> list[str]:
    """How each search's configuration was chosen (on validation nDCG@10 in ``metric``), and how far it fell from
    validation to test."""
    searched = [r for r in results if r.candidates]
    if not searched:
        return []
    lines = ["## How each configuration was chosen", "",
             f"The search's top {max(len(r.candidates) for r in searched)} distinct configurations by validation "
             f"nDCG@10 ({metric}), each retrained with seeds {', '.join(map(str, RETRAIN_SEEDS))}; the best mean "
             f"validation nDCG@10 ({metric}) is chosen (first row). Drop: validation minus test, sampled nDCG@10.", "",
             "| model | trial | search's valid | retrains' valid | retrains' test, sampled | retrains' test, full |",
             "|---|---|---:|---:|---:|---:|"]
    for r in searched:
        for index, candidate in enumerate(r.candidates):
            runs = candidate.runs
            lines.append(f"| {r.label if index == 0 else ''} | {candidate.trial}{' (chosen)' if index == 0 else ''} | "
                         f"{candidate.search_valid:.4f} | {_mean_sd(runs['valid'][metric]['ndcg@10'])} | "
                         f"{_mean_sd(runs['test']['sampled']['ndcg@10'])} | {_mean_sd(runs['test']['full']['ndcg@10'])} |")
    lines += ["", "| model | drop of the checkpoint | drop over the retrains |", "|---|---:|---:|"]
    for r in searched:
        found = drop(r)
        lines.append(f"| {r.label} | {found['checkpoint']:+.4f} | {found.get('retrains', float('nan')):+.4f} |")
    return lines + [""]


def verdict(results: list[ModelResult]) -> list[str]:
    """Plain sentences: which model wins on test nDCG@10 in each protocol, by how much over each other model,
    and whether that is significant."""
    lines = []
    for protocol in ("sampled", "full"):
        ranked = sorted(results, key=lambda r: r.test[protocol]["ndcg@10"]["mean"], reverse=True)
        winner = ranked[0]
        best = winner.test[protocol]["ndcg@10"]["mean"]
        lines.append(f"- **{protocol.capitalize()} protocol**: {winner.label} has the best test nDCG@10 ({best:.4f}).")
        for r in ranked[1:]:
            theirs, p = r.test[protocol]["ndcg@10"]["mean"], winner.p_values[r.model][protocol]
            judged = "significant" if p < SIGNIFICANCE else "not significant"
            lines.append(f"  Against {r.label} ({theirs:.4f}): +{best - theirs:.4f} "
                         f"({100 * (best - theirs) / theirs:+.1f}%), p = {p:.3g}, {judged} at {SIGNIFICANCE}.")
    return lines


def importances(table: pd.DataFrame, space: dict[str, Param], monitor: str) -> dict[str, float]:
    """PED-ANOVA importance (Optuna) of each searched field that every trial has, for reaching the top trials by
    ``monitor``."""
    distributions = {name: distribution for name, distribution in field_distributions(space).items()
                     if name in table and table[name].notna().all()}
    if len(table) < 4 or not distributions:
        return {}
    study = optuna.create_study(direction="maximize")
    for _, row in table.iterrows():
        params = {name: getattr(row[name], "item", lambda: row[name])() for name in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[monitor])))
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())


def _fields(record: SearchRecord) -> list[str]:
    """The trainer fields a search searched, in the order of its space."""
    return list(dict.fromkeys(param.sets for param in record.space.values()))


def _with_ci(value: dict) -> str:
    low, high = value["ci95"]
    return f"{value['mean']:.4f} [{low:.4f}, {high:.4f}]"


def _mean_sd(value: dict) -> str:
    return f"{value['mean']:.4f} ± {value['sd']:.4f}" if "sd" in value else f"{value['mean']:.4f}"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_plots(out: Path, searches: dict, results: list[ModelResult]) -> None:
    """optimization_history.png (each search's best-so-far) and hyperparameters.png (LRML's metric by each one)."""
    protocol = searches["lrml"].record.settings.metric
    popularity = next(r for r in results if r.model == "pop").valid[protocol]["ndcg@10"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for index, (model, experiment) in enumerate(searches.items()):
        table = experiment.table()
        order = {trial.trial_id: i for i, trial in enumerate(experiment.analysis.trials)}
        table = table.assign(trial_order=table["trial_id"].map(order)).sort_values("trial_order")
        axis.scatter(table["trial_order"], table[experiment.monitor], s=10, color=f"C{index}", alpha=0.5)
        axis.plot(table["trial_order"], table[experiment.monitor].cummax(), color=f"C{index}",
                  label=f"{LABELS[model]}: best so far")
    axis.axhline(popularity, color="grey", linestyle="--", label="popularity")
    axis.set(xlabel="trial", ylabel=f"validation nDCG@10 ({protocol})", title=f"{out.name}: optimisation history")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "optimization_history.png", dpi=110)
    plt.close(figure)

    lrml = searches["lrml"]
    table, searched = lrml.table(), [name for name in _fields(lrml.record) if name in lrml.table()]
    columns = min(3, len(searched))
    rows = -(-len(searched) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), sharey=True, squeeze=False)
    for axis, name in zip(axes.flat, searched):
        values = table[name].map(lambda value: str(value) if isinstance(value, (bool, str)) else value)
        points = axis.scatter(values, table[lrml.monitor], s=14, c=table["epochs"], cmap="viridis")
        if any(param.kind == "loguniform" for param in lrml.record.space.values() if param.sets == name):
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
