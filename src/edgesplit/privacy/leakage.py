"""The per-cut leakage table: what an attacker recovers from each cut's features, for the planner to bound.

`edgesplit audit` writes it; `edgesplit plan --leakage FILE --max-ssim S --max-probe-acc A` reads it and keeps
only cuts measured to leak less. A cut missing from the table counts as unmeasured and is never chosen under a
leakage bound; running everything on the device leaks nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from ..errors import EdgesplitError

LEAKAGE_VERSION = 1


class CutLeakage(BaseModel):
    """Attack results at one topological-prefix cut (position 0 = the input tensor itself)."""

    position: int
    after: str
    ssim: float | None = None  # reconstruction SSIM of the best inversion attack (1 = perfect copy)
    psnr: float | None = None
    probe_accuracy: float | None = None  # label accuracy of a probe trained on auxiliary features
    distance_correlation: float | None = None


class LeakageTable(BaseModel):
    """Leakage measured on one model (by graph fingerprint) with one codec."""

    version: int = LEAKAGE_VERSION
    kind: Literal["edgesplit.leakage"] = "edgesplit.leakage"
    model: str
    fingerprint: str
    codec: str | None = None
    cuts: list[CutLeakage]

    def at(self, position: int) -> CutLeakage | None:
        return next((c for c in self.cuts if c.position == position), None)


def load_leakage(path: str | Path, fingerprint: str | None = None) -> LeakageTable:
    """Read a leakage table, checking its kind, version and (when given) that it was measured on this model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgesplitError(f"leakage table {path} not found; make one with `edgesplit audit ... --json {path}`") from None
    except (OSError, ValueError) as error:
        raise EdgesplitError(f"leakage table {path} is not readable JSON ({error}); make it again") from None
    if isinstance(data, dict) and data.get("kind") != "edgesplit.leakage" and isinstance(data.get("leakage"), dict):
        data = data["leakage"]  # an audit report embeds its leakage table
    if not isinstance(data, dict) or data.get("kind") != "edgesplit.leakage":
        raise EdgesplitError(f"{path} is not an edgesplit leakage table; make one with `edgesplit audit`")
    if data.get("version") != LEAKAGE_VERSION:
        raise EdgesplitError(f"leakage table {path} has version {data.get('version')}, this edgesplit reads "
                             f"version {LEAKAGE_VERSION}; audit again with this edgesplit")
    try:
        table = LeakageTable.model_validate(data)
    except ValidationError as error:
        raise EdgesplitError(f"leakage table {path} is malformed ({error.error_count()} errors, first at "
                             f"{error.errors()[0]['loc']}); audit again") from None
    if fingerprint is not None and table.fingerprint != fingerprint:
        raise EdgesplitError(f"leakage table {path} was measured on another model (graph {table.fingerprint}, this "
                             f"one is {fingerprint}); audit this model")
    return table
