"""The per-cut leakage table the planner bounds: its schema and its reader.

`edgesplit audit` measures what an attacker recovers at each cut and writes this table (inside its audit report,
see `edgesplit.privacy.leakage`); `edgesplit plan --leakage FILE --max-ssim S --max-probe-acc A --max-dfil F`
reads it and keeps only cuts measured to leak less. dFIL is the Fisher information the features carry about the
input under Gaussian noise (`edgesplit.privacy.fisher`): an unbiased reconstruction's MSE is at least 1/dFIL.
A cut missing from the table counts as unmeasured and is never chosen under a leakage bound; running everything
on the device leaks nothing.

The schema lives with its reader, the planner, so that `plan` needs nothing from the higher `privacy` stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from edgesplit.errors import EdgesplitError
from edgesplit.plan.schema import Constraints
from edgesplit.versioned import read_versioned

__all__ = ["LEAKAGE_KIND", "LEAKAGE_VERSION", "CutLeakage", "LeakageTable", "bounded", "leakage_violations",
           "load_leakage"]

LEAKAGE_KIND, LEAKAGE_VERSION = "edgesplit.leakage", 1


class CutLeakage(BaseModel):
    """Attack results at one topological-prefix cut (position 0 = the input tensor itself)."""

    position: int
    after: str
    ssim: float | None = None  # reconstruction SSIM of the best inversion attack (1 = perfect copy)
    psnr: float | None = None
    probe_accuracy: float | None = None  # label accuracy of a probe trained on auxiliary features
    distance_correlation: float | None = None
    dfil: float | None = None  # Fisher information per input value under dfil_sigma's noise (lower leaks less)


class LeakageTable(BaseModel):
    """Leakage measured on one model (by graph fingerprint) with one codec."""

    version: int = LEAKAGE_VERSION
    kind: Literal["edgesplit.leakage"] = LEAKAGE_KIND
    model: str
    fingerprint: str
    codec: str | None = None
    dfil_sigma: float | None = None  # the noise std dFIL assumes, in units of each crossing tensor's clean std
    cuts: list[CutLeakage]

    def at(self, position: int) -> CutLeakage | None:
        return next((c for c in self.cuts if c.position == position), None)


def load_leakage(path: str | Path, fingerprint: str | None = None) -> LeakageTable:
    """Read a leakage table, checking its kind, version and (when given) that it was measured on this model."""
    table = read_versioned(path, LeakageTable, kind=LEAKAGE_KIND, version=LEAKAGE_VERSION,
                           what="leakage table", make="`edgesplit audit ... --json FILE`", again="audit again",
                           unwrap=_embedded_table)
    if fingerprint is not None and table.fingerprint != fingerprint:
        raise EdgesplitError(f"leakage table {path} was measured on another model (graph {table.fingerprint}, this "
                             f"one is {fingerprint}); audit this model")
    return table


def _embedded_table(data: object) -> object:
    """An audit report embeds its leakage table under "leakage"; a table file is the table itself."""
    if isinstance(data, dict) and data.get("kind") != LEAKAGE_KIND and isinstance(data.get("leakage"), dict):
        return data["leakage"]
    return data



def bounded(constraints: Constraints) -> bool:
    """Whether ``constraints`` bound leakage at all (SSIM, probe accuracy or dFIL)."""
    return (constraints.max_ssim is not None or constraints.max_probe_accuracy is not None
            or constraints.max_dfil is not None)


def leakage_violations(position: int | None, constraints: Constraints, table: LeakageTable) -> list[str]:
    """What keeps sending the prefix cut at ``position`` (None: a head that is not a prefix) within the leakage
    bounds of ``constraints``: a bound exceeded, or a value the table lacks (unmeasured is never allowed)."""
    if position is None:
        return ["leakage not measured for this head (the audit covers prefix cuts)"]
    entry = table.at(position)
    if entry is None:
        return [f"leakage not measured at position {position}; audit this cut"]
    found = []
    for name, limit, value in (("SSIM", constraints.max_ssim, entry.ssim),
                               ("probe accuracy", constraints.max_probe_accuracy, entry.probe_accuracy)):
        if limit is None:
            continue
        if value is None:
            found.append(f"{name} not measured at this cut")
        elif value > limit:
            found.append(f"{name} {value:.3f} above {limit:g}")
    if constraints.max_dfil is not None:
        if entry.dfil is None:
            found.append("dFIL not measured at this cut")
        elif entry.dfil > constraints.max_dfil:
            found.append(f"dFIL {entry.dfil:.4g} above {constraints.max_dfil:g}")
    return found
