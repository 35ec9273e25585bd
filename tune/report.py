"""Write a search's evidence under results/<experiment>/: config, trial table, summary, plots."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import optuna
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrml.train import MONITOR  # noqa: E402

PROTOCOL = ("Leave-one-out by time (latest interaction = test, second latest = validation); "
            "**sampled**: the held-out item against 100 fixed unseen candidates; **full**: against every item, "
            "training items excluded (and the validation item on test). Ties count against the held-out item.")


def write_tables(out: Path, table: pd.DataFrame, best_config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "trials.csv", index=False, float_format="%.6g")
    (out / "best_config.json").write_text(json.dumps(best_config, indent=2) + "\n")


def write_summary(out: Path, settings: dict, rows: list[dict], searched: list[str], importances: dict) -> None:
    """The Markdown summary: what was searched, how long it took, test metrics beside the baselines."""
    lines = [f"# Search `{settings['experiment'].rstrip('/').rsplit('/', 1)[-1]}`", "",
             f"Dataset **{settings['dataset']}**, seed {settings['seed']}, up to {settings['max_epochs']} epochs per trial "
             f"(ASHA on validation nDCG@10), {settings['workers_per_trial']} Ray Train worker(s) per trial.", ""]
    if "wall_seconds" in settings:
        lines += [f"{settings['trials']} trials, {settings['epochs_trained']} epochs in {settings['wall_seconds']:.0f} s of wall "
                  f"time; with {settings['concurrency']} trial(s) at a time, {100 * settings['training_share']:.0f}% of the "
                  "trials' time was spent inside training epochs (training plus validation), the rest starting and "
                  "stopping Ray Train runs.", ""]
    lines += [PROTOCOL, "", "| model | trial | valid nDCG@10 | test sampled HR@10 | nDCG@10 | MRR | test full HR@10 | nDCG@10 | MRR |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s, f = row["test"]["sampled"], row["test"]["full"]
        lines.append(f"| {row['model']} | {row.get('trial', '')} | {row['valid']['sampled']['ndcg@10']:.4f} | "
                     f"{s['hr@10']:.4f} | {s['ndcg@10']:.4f} | {s['mrr']:.4f} | {f['hr@10']:.4f} | {f['ndcg@10']:.4f} | {f['mrr']:.4f} |")
    lines += ["", "Baselines are trained by the same trainer with the same epoch budget and early stopping, "
              "at their default hyperparameters (`python -m lrml.train --model M`).", "",
              "Best hyperparameters: " + ", ".join(f"`{k}={rows[0]['config'][k]:.4g}`" if isinstance(rows[0]['config'][k], float)
                                                   else f"`{k}={rows[0]['config'][k]}`" for k in searched), ""]
    if importances:
        lines += ["Hyperparameter importance (Optuna PED-ANOVA: what separates the top 10% of trials by validation nDCG@10): "
                  + ", ".join(f"{name} {value:.2f}" for name, value in importances.items()), ""]
    lines += ["![optimisation history](optimization_history.png)", "", "![hyperparameters](hyperparameters.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def importances(table: pd.DataFrame, searched: list[str]) -> dict[str, float]:
    """PED-ANOVA importance (Optuna) of each searched hyperparameter for reaching the top trials."""
    if len(table) < 4:
        return {}
    study = optuna.create_study(direction="maximize")
    distributions = {name: _distribution(table[name]) for name in searched}
    for _, row in table.iterrows():
        params = {name: row[name] for name in searched}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[MONITOR])))
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())


def _distribution(values: pd.Series):
    if pd.api.types.is_integer_dtype(values) or values.nunique() <= 6:
        return optuna.distributions.CategoricalDistribution(sorted(values.unique().tolist()))
    return optuna.distributions.FloatDistribution(float(values.min()), float(values.max()), log=bool(values.min() > 0))


def write_plots(out: Path, table: pd.DataFrame, searched: list[str], popularity_valid: float | None) -> None:
    """optimization_history.png (each trial and the best so far) and hyperparameters.png (metric vs each one)."""
    ordered = table.sort_values("trial_order")
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.scatter(ordered["trial_order"], ordered[MONITOR], s=18, label="trial (best epoch)")
    axis.plot(ordered["trial_order"], ordered[MONITOR].cummax(), color="C1", label="best so far")
    if popularity_valid is not None:
        axis.axhline(popularity_valid, color="grey", linestyle="--", label="popularity")
    axis.set(xlabel="trial", ylabel="validation nDCG@10 (sampled)", title=f"{out.name}: optimisation history")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "optimization_history.png", dpi=110)
    plt.close(figure)

    columns = min(3, len(searched))
    rows = -(-len(searched) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), sharey=True, squeeze=False)
    for axis, name in zip(axes.flat, searched):
        points = axis.scatter(table[name], table[MONITOR], s=14, c=table["epochs"], cmap="viridis")
        if name in ("margin", "reg_weight", "lr"):
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set(xlabel=name)
    for axis in axes.flat[len(searched):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("validation nDCG@10")
    figure.subplots_adjust(hspace=0.45)
    figure.colorbar(points, ax=axes, label="epochs trained (ASHA stops weak trials early)")
    figure.suptitle(f"{out.name}: each trial's best validation nDCG@10 by hyperparameter")
    figure.savefig(out / "hyperparameters.png", dpi=110)
    plt.close(figure)
