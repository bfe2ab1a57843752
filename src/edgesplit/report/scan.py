"""Finding and loading the files of a run folder: every JSON file the stages wrote, by its kind, and the PNGs an
audit names.

Each file is recognised by its ``kind`` (the train result by its keys, the inference summary by the ``summary``
it nests) and read with its writer's loader; one that cannot be read is kept with the reason, so the page can say
so. Files of one kind come in pipeline order, and in the order the run's config names them where it has one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgesplit.compress.rate import load_compress
from edgesplit.errors import EdgesplitError
from edgesplit.model.artifact import SPLIT_VERSION, SplitRecord
from edgesplit.model.train import TrainRecord, is_train_record, load_train
from edgesplit.pipeline.summary import RUN_KIND, RunSummary, load_run
from edgesplit.plan.schema import load_chain_plan, load_plan
from edgesplit.privacy.schema import load_audit
from edgesplit.profile import PROFILE_VERSION, ProfileReport
from edgesplit.runtime.summary import load_infer_summary
from edgesplit.versioned import read_versioned

__all__ = ["ORDER", "PNG_MAGIC", "RUN", "TRAIN", "Found", "RunFiles", "detect_kind", "find_png", "run_summary",
           "scan"]

RUN = RUN_KIND  # `edgesplit run`/`demo`: the config and what each stage left (pipeline.summary.RunSummary)
TRAIN = "train"  # train.json (model.train.TrainRecord): also read from before it had a kind, by its keys
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The kinds the report renders. The run's summary first (the whole story), then pipeline order: train the model,
# measure it, choose the plan (from compress and audit results), split, serve.
ORDER = (RUN, TRAIN, "edgesplit.profile", "edgesplit.plan", "edgesplit.chainplan", "edgesplit.compress", "edgesplit.audit",
         "edgesplit.split", "edgesplit.infer")


# ---------------------------------------------------------------------------------------------- finding files


@dataclass
class Found:
    """One JSON file of a kind the report renders: the loaded result, or why it could not be loaded."""

    kind: str
    path: Path
    name: str  # relative to the run folder, with forward slashes
    result: Any = None
    error: str | None = None


@dataclass
class RunFiles:
    """Every JSON file under a run folder, sorted: the ones the report renders and the rest."""

    run_dir: Path
    found: list[Found] = field(default_factory=list)
    other: list[tuple[str, str | None]] = field(default_factory=list)  # (name, kind or None)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


def detect_kind(data: Any) -> str | None:
    """The kind of a parsed JSON file that the report renders, or None."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in ORDER:
        return kind
    summary = data.get("summary")
    if kind is None and isinstance(summary, dict) and summary.get("kind") == "edgesplit.infer":
        return "edgesplit.infer"  # `edgesplit infer --json` nests it: {"summary": {...}, "records": [...]}
    if is_train_record(data, lenient=True):
        return TRAIN
    return None


def scan(run_dir: str | Path) -> RunFiles:
    """Find and load every JSON file under ``run_dir``; a user error when it holds no edgesplit result."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise EdgesplitError(f"{run_dir} not found; pass the folder your stages wrote their --json files into")
    if not run_dir.is_dir():
        raise EdgesplitError(f"{run_dir} is not a folder; pass the folder your stages wrote their --json files into")
    files = RunFiles(run_dir)
    paths = sorted((p for p in run_dir.rglob("*.json") if p.is_file()), key=lambda p: p.relative_to(run_dir).parts)
    for path in paths:
        name = path.relative_to(run_dir).as_posix()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            files.unreadable.append((name, f"not readable JSON ({error})"))
            continue
        kind = detect_kind(data)
        if kind is None:
            files.other.append((name, data.get("kind") if isinstance(data, dict) and isinstance(data.get("kind"), str)
                                else None))
            continue
        found = Found(kind, path, name)
        try:
            found.result = LOADERS[kind](path)
        except EdgesplitError as error:
            found.error = str(error)
        files.found.append(found)
    if not files.found:
        what = "is empty" if not any(run_dir.iterdir()) else "holds no edgesplit results"
        raise EdgesplitError(f"{run_dir} {what}; write results into it with `edgesplit profile|plan|compress|audit "
                             "... --json DIR/NAME.json` (and `infer`, `train`), then run `edgesplit report DIR`")
    files.found.sort(key=lambda f: ORDER.index(f.kind))  # stable: files of one kind stay in name order
    summary = run_summary(files)
    if summary is not None:  # files of one kind in the run's order: its model's profile first, targets as listed
        files.found.sort(key=lambda f: (ORDER.index(f.kind), _run_rank(f, summary)))
    return files


def run_summary(files: RunFiles) -> RunSummary | None:
    """The first readable run summary (run.json) of a run folder, if it has one."""
    return next((f.result for f in files.found if f.kind == RUN and f.result is not None), None)


def _run_rank(found: Found, summary: RunSummary) -> int:
    """Where a file comes among the files of its kind in the order the run's config names them (last: unnamed)."""
    config, result, last = summary.config, found.result, 10**6
    if result is None:
        return last
    if found.kind == "edgesplit.profile":
        models = [config.model, *config.compare]
        return models.index(result.model.name) if result.model.name in models else last
    if found.kind == "edgesplit.plan":
        slugs = [t.slug for t in config.targets]
        stem = PurePosixPath(found.name).stem.removeprefix("plan_")
        return slugs.index(stem) if stem in slugs else last
    return 0


# ---------------------------------------------------------------------------------------------- loading


def _load_profile(path: Path) -> ProfileReport:
    return read_versioned(path, ProfileReport, kind="edgesplit.profile", version=PROFILE_VERSION, what="profile",
                          make="`edgesplit profile MODEL --json FILE`", again="profile again")


def _load_split(path: Path) -> SplitRecord:
    return read_versioned(path, SplitRecord, kind="edgesplit.split", version=SPLIT_VERSION, what="split record",
                          make="`edgesplit split MODEL --cut CUT --out DIR`", again="split again")


# Read leniently, as their writers allow: a run.json with config keys or stages this edgesplit does not know, a
# train.json from before it had a kind and version (and `load_infer_summary`, lenient by default: a summary without
# the fields added since).
def _load_run(path: Path) -> RunSummary:
    return load_run(path, lenient=True)


def _load_train(path: Path) -> TrainRecord:
    return load_train(path, lenient=True)


# How each kind is read: its writer's loader, where the writer has one.
LOADERS: dict[str, Callable[[Path], Any]] = {
    RUN: _load_run, TRAIN: _load_train, "edgesplit.profile": _load_profile, "edgesplit.plan": load_plan,
    "edgesplit.chainplan": load_chain_plan,
    "edgesplit.compress": load_compress, "edgesplit.audit": load_audit, "edgesplit.split": _load_split,
    "edgesplit.infer": load_infer_summary}


# ---------------------------------------------------------------------------------------------- the audit's PNGs


def _safe_relative(name: str) -> bool:
    """A relative path inside its folder (what `edgesplit audit` writes), not an absolute or ../ path."""
    pure = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts


def find_png(name: str, json_path: Path, run_dir: Path) -> bytes | None:
    """The PNG an audit named: next to its JSON file first, then in the run folder; None when neither has it."""
    if not _safe_relative(name):
        return None
    for folder in (json_path.parent, run_dir):
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if data.startswith(PNG_MAGIC):
            return data
    return None
