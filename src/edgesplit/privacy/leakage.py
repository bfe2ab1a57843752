"""The audit's side of the per-cut leakage table: the planner's bounds, built from what the attacks recovered.

The table's schema and reader belong to its reader, the planner (`edgesplit.plan.leakage`); the audit writes it
(inside its report) with :func:`leakage_table`. The schema's names are importable from here too, as they were
before the schema moved to the planner.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgesplit.plan.leakage import CutLeakage, LeakageTable, load_leakage
from edgesplit.privacy.schema import AuditRow


def leakage_table(rows: Sequence[AuditRow], model: str, fingerprint: str, codec: str | None) -> LeakageTable:
    """The planner's per-cut bounds from the undefended rows: best attack's SSIM/PSNR, best probe's accuracy, dFIL."""
    cuts = []
    sigmas = {row.fisher.sigma for row in rows if row.defense == "none" and row.fisher is not None}
    for row in rows:
        if row.defense != "none":
            continue
        best, probe = row.best_attack(), row.best_probe()
        cuts.append(CutLeakage(position=row.position, after=row.after,
                               ssim=best.ssim.mean if best else None, psnr=best.psnr.mean if best else None,
                               probe_accuracy=probe.accuracy.mean if probe else None,
                               distance_correlation=row.distance_correlation.mean if row.distance_correlation else None,
                               dfil=row.fisher.dfil.mean if row.fisher else None))
    return LeakageTable(model=model, fingerprint=fingerprint, codec=codec, cuts=cuts,
                        dfil_sigma=sigmas.pop() if len(sigmas) == 1 else None)


# CutLeakage, LeakageTable and load_leakage are re-exported from edgesplit.plan.leakage for existing imports.
__all__ = ["CutLeakage", "LeakageTable", "leakage_table", "load_leakage"]
