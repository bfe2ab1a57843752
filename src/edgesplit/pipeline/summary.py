"""run.json: what `edgesplit run` and `edgesplit demo` write, and the one line each stage's result reads as.

A run summary holds the config the run was made with and, in the order the stages ran, each stage's record: its
wall-clock seconds and what it found (``TrainStage``, ``PlanStage`` … one type per stage, chosen by the first word
of the stage's label: "plan mcu-ethernet with compress" is a plan, for the target ``stage_subject`` reads from
the label). ``stage_result_text`` is that record in words, for the console's results table and the HTML report
alike. ``load_run(..., lenient=True)`` reads a summary a newer edgesplit wrote: config keys it does not know are
dropped, and a stage it does not know (or one whose record lacks what this version expects) is kept as a plain
``StageRecord`` with its facts.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_serializer)

from edgesplit.pipeline.config import RunConfig
from edgesplit.versioned import read_versioned
from edgesplit.views import human_bytes, human_count

if TYPE_CHECKING:  # the records are built from these; reading a summary needs none of them
    from edgesplit.compress.rate import CompressReport
    from edgesplit.model.train import TrainRecord
    from edgesplit.pipeline.stages import SplitResult
    from edgesplit.plan import PlanReport
    from edgesplit.plan.schema import ChainPlanReport
    from edgesplit.privacy.schema import AuditReport
    from edgesplit.profile import ProfileReport

__all__ = ["RUN_KIND", "RUN_VERSION", "AuditStage", "CompressStage", "InferStage", "Measured", "PlanStage",
           "ProfileStage", "RunSummary", "SplitStage", "StageRecord", "TrainStage", "load_run", "stage_record",
           "stage_result_text", "stage_subject"]

RUN_KIND, RUN_VERSION = "edgesplit.run", 1


class StageRecord(BaseModel):
    """One stage of a run: its wall-clock seconds and what it found. This class itself is a stage this edgesplit
    does not know: its facts are kept as they were written."""

    model_config = ConfigDict(extra="allow")

    seconds: float | None = None

    @property
    def facts(self) -> dict[str, Any]:
        """Everything the stage recorded but its seconds, as written."""
        return {key: value for key, value in self.model_dump(mode="json").items() if key != "seconds"}

    @model_serializer(mode="wrap")
    def _seconds_last(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {**{key: value for key, value in data.items() if key != "seconds"}, "seconds": data.get("seconds")}


class TrainStage(StageRecord):
    """train: the model trained on the run's data (train.json)."""

    test_accuracy: float
    weights: str

    @classmethod
    def of(cls, record: TrainRecord) -> TrainStage:
        return cls(test_accuracy=record.test_accuracy, weights=str(record.weights))


class ProfileStage(StageRecord):
    """profile MODEL: the model measured on this machine (profile_MODEL.json)."""

    macs: int
    cuts: int
    model_ms: float  # the whole model on the machine that ran the stage

    @classmethod
    def of(cls, report: ProfileReport) -> ProfileStage:
        return cls(macs=report.model.macs, cuts=report.model.cuts, model_ms=report.model_ms)


class PlanStage(StageRecord):
    """plan TARGET [with compress]: the plan chosen for a target (plan_TARGET.json)."""

    chosen: str  # the chosen plan's label
    latency_ms: float
    switch_table: list[str]  # the best plan's label in each bandwidth range, slowest first

    @classmethod
    def of(cls, report: PlanReport | ChainPlanReport) -> PlanStage:
        latency = report.chosen.latency_ms if hasattr(report.chosen, "latency_ms") else report.chosen.costs.latency_ms
        return cls(chosen=report.chosen.label, latency_ms=latency, switch_table=[row.label for row in report.switch_table])


def _none(value: Any) -> bool:
    return value is None


class SplitStage(StageRecord):
    """split: the served plan's cut saved, reloaded and checked (split/split.json)."""

    cut: int
    after: str
    crossing_bytes: int  # float32 bytes per image
    # Checked on held-out images (absent when the data's images do not fit the model):
    images: int | None = Field(None, exclude_if=_none)
    max_abs_diff: float | None = Field(None, exclude_if=_none)
    agreement: float | None = Field(None, exclude_if=_none)

    @classmethod
    def of(cls, result: SplitResult) -> SplitStage:
        checked = result.agreement is not None
        return cls(cut=result.record.cut.index, after=result.record.cut.after,
                   crossing_bytes=result.record.crossing_bytes, images=result.images if checked else None,
                   max_abs_diff=result.max_abs_diff if checked else None, agreement=result.agreement)


class Measured(BaseModel):
    """One compress configuration: bytes per inference and accuracy."""

    bytes: float
    accuracy: float


class CompressStage(StageRecord):
    """compress: the configurations measured at the served plan's cut (compress.json)."""

    cut: int
    configurations: dict[str, Measured]

    @classmethod
    def of(cls, report: CompressReport) -> CompressStage:
        return cls(cut=report.cut_index, configurations={c.name: Measured(bytes=c.bytes_per_inference,
                                                                          accuracy=c.accuracy)
                                                         for c in report.configurations})


class InferStage(StageRecord):
    """serve and infer, HOW: one pass of held-out images through the local server (infer_*.json)."""

    images: int
    routes: dict[str, int]  # images per route label
    accuracy: float | None
    agreement: float | None  # with the whole model run here
    max_abs_diff: float | None
    latency_ms: dict[str, float | None]  # p50, p95, p99, …
    bytes_per_image: float
    server_results: int
    switches: int

    @classmethod
    def of(cls, summary: dict[str, Any]) -> InferStage:
        """From an inference summary as written (`edgesplit infer --json`'s ``summary``)."""
        return cls(images=summary["images"], routes=summary["routes"], accuracy=summary["accuracy"],
                   agreement=summary["agreement"], max_abs_diff=summary["max_abs_diff"],
                   latency_ms=summary["latency_ms"], bytes_per_image=summary["bytes_per_image"],
                   server_results=summary["server_results"], switches=summary["switch_count"])


class AuditStage(StageRecord):
    """audit: what crosses each cut, attacked (audit/audit.json)."""

    summary: str  # the audit's summary line
    rows: int

    @classmethod
    def of(cls, report: AuditReport, line: str) -> AuditStage:
        return cls(summary=line, rows=len(report.rows))


# The first word of a stage's label names its kind ("serve and infer, adaptive client" is a serve stage).
STAGE_TYPES: dict[str, type[StageRecord]] = {
    "train": TrainStage, "profile": ProfileStage, "plan": PlanStage, "split": SplitStage,
    "compress": CompressStage, "serve": InferStage, "audit": AuditStage}


def stage_subject(label: str) -> str | None:
    """What a stage's label names after its verb: the model of "profile MODEL", the target of "plan TARGET" and of
    "plan TARGET with compress" (planned again with the measured configurations); None for any other stage."""
    verb, _, rest = label.partition(" ")
    if verb == "profile":
        return rest or None
    if verb == "plan":
        return rest.removesuffix(" with compress") or None
    return None


def stage_record(label: str, data: Any) -> StageRecord:
    """The record of the stage ``label`` from what was written: its type's, else a plain ``StageRecord``."""
    if isinstance(data, StageRecord):
        return data
    kind = STAGE_TYPES.get(label.partition(" ")[0])
    if kind is not None:
        try:
            return kind.model_validate(data)
        except ValidationError:
            pass
    return StageRecord.model_validate(data)


class RunSummary(BaseModel):
    """run.json, written by `edgesplit run CONFIG` and `edgesplit demo`: the config and each stage in order."""

    kind: Literal["edgesplit.run"] = RUN_KIND
    version: Literal[1] = RUN_VERSION
    out_dir: str | None = None
    config: RunConfig
    stages: dict[str, SerializeAsAny[StageRecord]] = {}  # in the order the stages ran, by label
    served_target: str | None = None  # the target whose plan was compressed and served (None: none sent anything)
    seconds: float | None = None  # the whole run, wall clock
    report: str | None = None  # the HTML report written

    @field_validator("stages", mode="before")
    @classmethod
    def _typed(cls, stages: Any) -> Any:
        if not isinstance(stages, dict):
            return stages
        return {label: stage_record(str(label), data) for label, data in stages.items()}


def _known(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys ``model`` does not know, at every level of nested models."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        keys = [name, *(choice for choice in alias.choices if isinstance(choice, str))] \
            if isinstance(alias, AliasChoices) else [name, *([alias] if isinstance(alias, str) else [])]
        for key in keys:
            if key in data:
                kept[key] = _known_value(field.annotation, data[key])
    return kept


def _known_value(annotation: Any, value: Any) -> Any:
    for kind in typing.get_args(annotation) or (annotation,):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if isinstance(value, dict):
                return _known(kind, value)
            if isinstance(value, list):
                return [_known(kind, item) for item in value]
        elif typing.get_args(kind):
            return _known_value(kind, value)
    return value


def load_run(path: str | Path, *, lenient: bool = False) -> RunSummary:
    """Read a run.json; ``lenient`` drops config keys this edgesplit does not know (a newer one's) instead of
    refusing the file."""
    def unwrap(data: Any) -> Any:
        if lenient and isinstance(data, dict) and isinstance(data.get("config"), dict):
            return {**data, "config": _known(RunConfig, data["config"])}
        return data

    return read_versioned(path, RunSummary, kind=RUN_KIND, version=RUN_VERSION, what="run summary",
                          make="`edgesplit run CONFIG.yaml --out DIR` or `edgesplit demo --out DIR`",
                          again="run it again", unwrap=unwrap)


# ---------------------------------------------------------------------------------------------- in words


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _plain(facts: dict[str, Any]) -> str:
    """Facts of a stage this edgesplit does not know: 'key value' pairs, nested values as JSON."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return "; ".join(f"{key.replace('_', ' ')} {text(value)}" for key, value in facts.items()) or "—"


def stage_result_text(record: StageRecord) -> str:
    """A stage's key result in one line (the console's results table and the report's Run section)."""
    if isinstance(record, TrainStage):
        return f"test accuracy {_pct(record.test_accuracy)}"
    if isinstance(record, ProfileStage):
        return (f"{human_count(record.macs)} MACs, {record.cuts} candidate cuts; whole model "
                f"{_ms(record.model_ms)} ms on this machine")
    if isinstance(record, PlanStage):
        by_bandwidth = f"; by bandwidth: {' → '.join(record.switch_table)}" if len(record.switch_table) > 1 else ""
        return f"chosen: {record.chosen} ({_ms(record.latency_ms)} ms per inference){by_bandwidth}"
    if isinstance(record, SplitStage):
        checked = (f"; {record.images} held-out images agree {_pct(record.agreement)}, max abs diff "
                   f"{record.max_abs_diff:.1e}" if record.images is not None and record.max_abs_diff is not None
                   else "")
        return (f"cut {record.cut} after {record.after}: {human_bytes(record.crossing_bytes)} of float32 cross per "
                f"inference{checked}")
    if isinstance(record, CompressStage) and record.configurations:
        name, best = min(record.configurations.items(), key=lambda item: item[1].bytes)
        fp32 = record.configurations.get("fp32")
        reference = f" (fp32: {fp32.bytes:,.0f} B)" if fp32 and name != "fp32" else ""
        return (f"{len(record.configurations)} configurations at cut {record.cut}; fewest bytes: {name}, "
                f"{best.bytes:,.0f} B at {_pct(best.accuracy)} accuracy{reference}")
    if isinstance(record, InferStage):
        routes = ", ".join(f"{label} ×{count}" for label, count in record.routes.items())
        return (f"{record.images} images ({routes}); latency p50 {_ms(record.latency_ms.get('p50'))} ms; "
                f"accuracy {_pct(record.accuracy)}; agreement with the whole model {_pct(record.agreement)}; "
                f"{record.bytes_per_image:,.0f} B per image")
    if isinstance(record, AuditStage):
        return record.summary or f"{record.rows} rows"
    return _plain(record.facts)
