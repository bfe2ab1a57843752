"""The audit's result: per cut and defense, what each attack recovered, what the task kept, as versioned JSON.

`edgesplit audit --json FILE` writes an :class:`AuditReport`; it embeds the :class:`LeakageTable` the planner
reads (`edgesplit plan --leakage FILE`), built from the undefended rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from edgesplit.plan.leakage import LeakageTable
from edgesplit.privacy.attacks import IMAGE_ATTACKS
from edgesplit.versioned import read_versioned

AUDIT_KIND, AUDIT_VERSION = "edgesplit.audit", 1


class Score(BaseModel):
    """A mean over the victim set with its 95% confidence interval (and, for attack scores, the median)."""

    mean: float
    low: float
    high: float
    median: float | None = None  # attack PSNR/SSIM: per-victim median (PSNRs capped at 100 dB inflate the mean)


class AttackScore(BaseModel):
    """How well one inversion attack reconstructed the victims' images at one cut."""

    attack: Literal[IMAGE_ATTACKS]  # the names of the attacks that reconstruct images (privacy.attacks)
    psnr: Score  # dB, per image, identical images capped at 100
    ssim: Score
    seconds: float


class ProbeScore(BaseModel):
    """Label accuracy of a probe trained on auxiliary features, applied to the victims' features."""

    kind: Literal["linear", "mlp"]
    accuracy: Score  # bootstrap interval
    chance: float  # the most frequent victim label's share


class FisherScore(BaseModel):
    """dFIL at one cut: the Fisher information what crosses carries about the input under Gaussian noise, and the
    error bound it implies for any unbiased reconstruction (privacy.fisher, docs/threat-model.md)."""

    dfil: Score  # tr(JᵀJ)/(d σ²) per victim: mean with its 95% interval
    sigma: float  # the noise std assumed, in units of each crossing tensor's clean std (noise:SIGMA's unit)
    noise_std: list[float]  # the absolute noise std on each crossing tensor
    psnr_bound: float | None  # dB: 10·log10(dFIL), the best PSNR of an unbiased attacker's expected error
    mse_bound: float | None  # 1/dFIL: the least mean squared error per input value of an unbiased attacker
    estimator: Literal["exact", "hutchinson"]
    samples: int  # directions per victim (every input value when exact)
    victims: int
    seconds: float


class AuditRow(BaseModel):
    """One cut under one defense: the task's accuracy and what each attack recovered from what crosses."""

    position: int  # topological-prefix cut (0 = the input itself crosses)
    after: str  # the last head node ("input" at position 0)
    defense: str = "none"  # the defense spec, e.g. "noise:0.5"
    crossing: list[list[int]]  # shape of each crossing tensor, batch dimension dropped
    task_accuracy: float | None = None  # the tail's accuracy on what crosses, None when the data has no labels
    attacks: list[AttackScore] = Field(default_factory=list)
    probes: list[ProbeScore] = Field(default_factory=list)
    distance_correlation: Score | None = None  # inputs vs what crosses (bootstrap over the victim set)
    defense_seconds: float = 0.0  # training a defense (NoPeek, bottleneck) at this cut
    fisher: FisherScore | None = None  # the dFIL bound; None where it does not apply (dropout, quant, bottleneck)

    def best_attack(self) -> AttackScore | None:
        """The attack with the highest mean SSIM: an audit reports the strongest attacker it has."""
        return max(self.attacks, key=lambda a: a.ssim.mean, default=None)

    def best_probe(self) -> ProbeScore | None:
        return max(self.probes, key=lambda p: p.accuracy.mean, default=None)


class AuditReport(BaseModel):
    """Everything `edgesplit audit` measured, with how it measured it."""

    version: int = AUDIT_VERSION
    kind: Literal["edgesplit.audit"] = AUDIT_KIND
    model: str
    fingerprint: str
    model_ref: dict
    data: str  # victims: the test split of this spec
    aux: str  # the attacker's auxiliary images: the train split of this spec
    victims: int
    aux_images: int
    overlap: int  # images found in both sets (0 unless the user's sets overlap; it inflates the attacks)
    codec: str | None = None
    attacks: list[str]  # names from privacy.attacks, in its order
    defenses: list[str]
    model_accuracy: float | None  # the whole model on the victims, None without labels
    chance: float | None
    mean_image: AttackScore | None = None  # no-information baseline: the mean auxiliary image
    rows: list[AuditRow]
    leakage: LeakageTable
    settings: dict  # epochs, steps, seeds, limits, threads
    grids: dict[str, str] = Field(default_factory=dict)  # "position/defense" → PNG path, relative to the out folder
    plots: dict[str, str] = Field(default_factory=dict)  # name → PNG path, relative to the out folder
    warnings: list[str] = Field(default_factory=list)
    seconds: float

    def row(self, position: int, defense: str = "none") -> AuditRow | None:
        return next((r for r in self.rows if r.position == position and r.defense == defense), None)


def load_audit(path: str | Path) -> AuditReport:
    """Read an audit report written by `edgesplit audit --json`."""
    return read_versioned(path, AuditReport, kind=AUDIT_KIND, version=AUDIT_VERSION, what="audit report",
                          make="`edgesplit audit ... --json FILE`", again="audit again")


__all__ = ["AUDIT_KIND", "AUDIT_VERSION", "AttackScore", "AuditReport", "AuditRow", "FisherScore", "ProbeScore",
           "Score", "load_audit"]
