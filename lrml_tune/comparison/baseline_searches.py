"""The baselines' searches beside an LRML search: CML and BPR-MF searched with LRML's budget (the same data,
trials, epochs, patience, seed, strategy and selection metric, ``same_budget``), found where they lie or described to be run."""
from __future__ import annotations

from dataclasses import replace

import pyarrow.fs

from lrml_tune.sweep import SearchRecord, SearchSettings
from lrml_tune.sweep.storage import filesystem

BASELINES = ("cml", "bpr")


def same_budget(first: SearchRecord, second: SearchRecord) -> bool:
    """Whether two searches had the same data, trials, epochs, patience, seed, strategy and selection metric (the
    model may differ)."""
    def budget(record: SearchRecord) -> tuple:
        s = record.settings
        return (record.fingerprint, s.num_samples, s.max_epochs, s.patience, s.grace_epochs, s.seed, s.searcher,
                s.scheduler, s.metric)
    return budget(first) == budget(second)


def baseline_name(lrml_name: str, model: str) -> str:
    """The experiment name a baseline's search gets beside the LRML search ``lrml_name``."""
    stem, found, suffix = lrml_name.rpartition("-lrml")
    return f"{stem}-{model}{suffix}" if found else f"{lrml_name}-{model}"


def find_baseline(lrml_location: str, lrml: SearchRecord, model: str) -> str | None:
    """A finished search of ``model`` with LRML's budget beside the LRML search (in the folder it lies in
    now), by preference the one named after it."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    storage, parent_path = filesystem(parent)
    found = []
    for info in storage.get_file_info(pyarrow.fs.FileSelector(parent_path)):
        location = f"{parent}/{info.base_name}"
        if info.type != pyarrow.fs.FileType.Directory or not SearchRecord.exists(location):
            continue
        try:
            record = SearchRecord.read(location)
        except ValueError:
            continue  # another version's search
        if record.settings.model == model and record.outcome is not None and same_budget(lrml, record):
            found.append((info.base_name != baseline_name(lrml_name, model), location))
    return min(found)[1] if found else None


def baseline_settings(lrml_location: str, lrml: SearchRecord, model: str) -> SearchSettings:
    """The settings that search ``model`` on LRML's budget, beside the LRML search, with the same resources and
    tracking, and the model's own default space."""
    parent, lrml_name = lrml_location.rstrip("/").rsplit("/", 1)
    return replace(lrml.settings, model=model, name=baseline_name(lrml_name, model), storage_path=parent,
                   space_file="")
