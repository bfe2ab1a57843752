"""The attacks the audit can run, as one table: a new attack is one function and one row here.

Each :class:`Attack` row says what `--attack` calls it (``name``, also what the audit JSON records), how tables
and figures show it (``label``), what the attacker has or recovers (``kind``: black-box query access, white-box
knowledge of the head's weights, or the private label), what the progress bar says while it runs (``title``),
the function that runs it, and the :class:`~edgesplit.privacy.audit.AuditSettings` field that tunes it (its
value is handed to the function). The audit JSON's schema, the audit's dispatch, the console table and the
HTML report all read this table.

An attack that reconstructs images (black- or white-box) returns an :class:`InversionResult`; the audit scores
it by PSNR and SSIM and shows it in the reconstruction grids. A label attack returns one :class:`ProbeResult`
per probe it trained; the audit scores it by label accuracy against chance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from edgesplit.errors import EdgesplitError
from edgesplit.privacy.defenses import DefendedCut
from edgesplit.privacy.inversion import InversionResult, learned_inversion, optimization_inversion
from edgesplit.privacy.probes import ProbeResult, probe_accuracy

AttackKind = Literal["black-box", "white-box", "label"]


@dataclass(frozen=True)
class Effort:
    """How the image attacks spend their time (AuditSettings sets it; these defaults are the audit's).

    The learned decoder holds out ``held_out`` of the auxiliary images, keeps its best held-out epoch and, when
    ``patience`` is set, stops after that many epochs whose held-out MSE improved by less than ``min_improvement``
    (off by default: stopping after one such epoch weakened the cold-started decoders of the measured MNIST audit,
    conv1_0 0.986 → 0.959 SSIM, pool2 0.923 → 0.829); with ``warm_start`` it starts from the previous
    cut's decoder where the shapes match, and a warm-started decoder stops after ``warm_patience`` epochs without
    such a gain (it starts near its optimum). With ``bf16`` decoders train under bfloat16 autocast where the CPU
    has it natively (2-3x faster). The white-box attack starts from the learned decoder's
    reconstructions (``decoder_prior``, when the learned attack ran) with ``prior_weight`` × the mean squared
    distance to them in its objective, and a victim stops when its objective improved by less than
    ``tolerance`` over 20 steps. Where every crossing tensor is flat (fully connected features), the decoder
    trains ``flat_epoch_factor`` times the epochs: an epoch costs ~0.25 s there, and at the audit's 10 epochs it
    underfits (MNIST small_cnn fc2, measured: SSIM 0.460 at 10 epochs, 0.483 at 20, 0.499 at 30).
    """

    held_out: float = 0.1
    patience: int | None = None
    min_improvement: float = 0.01
    warm_start: bool = True
    warm_patience: int | None = 2
    bf16: bool = True
    decoder_prior: bool = True
    prior_weight: float = 0.0
    tolerance: float | None = 1e-3
    flat_epoch_factor: int = 3


@dataclass(frozen=True)
class AttackTarget:
    """What the attacks at one cut, under one defense, work with."""

    defended: DefendedCut  # the device's head, the wire's transform (defense, codec), the server's tail
    sent: list[torch.Tensor]  # the victims' crossing tensors as the server received them
    victims: torch.Tensor  # the victims' images: attacks only push them through the head, never look at them
    victim_labels: torch.Tensor  # for scoring a label attack
    aux: torch.Tensor  # the attacker's own auxiliary images (disjoint from the victims)
    aux_labels: torch.Tensor  # labels the attacker gave its auxiliary images
    effort: Effort = field(default_factory=Effort)  # how the attacks save time and where they start
    earlier: dict[str, Outcome] = field(default_factory=dict)  # this row's outcomes so far, by attack name
    carry: dict[str, Any] = field(default_factory=dict)  # kept from the previous cut under the same defense


Outcome = InversionResult | list[ProbeResult]
Runner = Callable[[AttackTarget, Any, int], Outcome]  # (target, the value of its settings field or None, seed)


@dataclass(frozen=True)
class Attack:
    """One row of the table: an attack the audit can run."""

    name: str  # what `--attack` accepts and the audit JSON records
    label: str  # how tables, grids and figures name it ("learned PSNR / SSIM")
    kind: AttackKind
    title: str  # what the progress bar says while it runs
    run: Runner
    setting: str | None = None  # the AuditSettings field whose value ``run`` receives

    @property
    def reconstructs(self) -> bool:
        """Whether it rebuilds the input images (scored by PSNR/SSIM) rather than guessing labels."""
        return self.kind != "label"


def _learned(target: AttackTarget, epochs: int, seed: int) -> InversionResult:
    defended, effort = target.defended, target.effort
    if target.sent and all(t.dim() == 2 for t in target.sent):
        epochs *= effort.flat_epoch_factor
    result = learned_inversion(defended.head, target.aux, target.victims, transform=defended.transform, epochs=epochs,
                               seed=seed, held_out=effort.held_out, patience=effort.patience,
                               min_improvement=effort.min_improvement,
                               init=target.carry.get("decoder") if effort.warm_start else None,
                               warm_patience=effort.warm_patience, bf16=effort.bf16)
    target.carry["decoder"] = result.decoder  # the next cut under this defense may start from it
    return result


def _white_box(target: AttackTarget, steps: int, seed: int) -> InversionResult:
    defended, effort = target.defended, target.effort
    learned = target.earlier.get("inversion")  # the decoder prior, where the learned attack ran first
    init = learned.reconstructions if effort.decoder_prior and isinstance(learned, InversionResult) else None
    return optimization_inversion(defended.head, victim_features=target.sent, input_shape=defended.input_shape,
                                  steps=steps, init=init, prior_weight=effort.prior_weight,
                                  tolerance=effort.tolerance, seed=seed)


def _probes(target: AttackTarget, kinds: Sequence[str], seed: int) -> list[ProbeResult]:
    aux_sent = target.defended.send(target.aux)
    # Both probes in float32: under bf16 autocast the MLP probe fell to chance (8-17% on MNIST against 91-94%).
    return [probe_accuracy(aux_sent, target.aux_labels, target.sent, target.victim_labels, kind=kind, seed=seed)
            for kind in kinds]


ATTACKS: dict[str, Attack] = {attack.name: attack for attack in (
    Attack("inversion", "learned", "black-box", "learned inversion", _learned, "inversion_epochs"),
    Attack("optimize", "white-box", "white-box", "white-box inversion", _white_box, "optimize_steps"),
    Attack("probe", "probe", "label", "label probes", _probes, "probe_kinds"),
)}  # in the order the audit runs them and the tables show them
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACKS)
IMAGE_ATTACKS: tuple[str, ...] = tuple(name for name, attack in ATTACKS.items() if attack.reconstructs)


def attack_label(name: str) -> str:
    """How tables and figures name the attack ``name`` (the name itself when the table does not know it)."""
    attack = ATTACKS.get(name)
    return attack.label if attack is not None else name


def attacks_help() -> str:
    """The attacks as one line for help texts: ``inversion (black-box), optimize (white-box), probe (label)``."""
    return ", ".join(f"{a.name} ({a.kind})" for a in ATTACKS.values())


def parse_attacks(text: str | Sequence[str]) -> tuple[str, ...]:
    """``inversion,optimize,probe`` (or a list of such items) as a tuple in canonical order."""
    items = [part.strip().lower() for chunk in ([text] if isinstance(text, str) else text)
             for part in chunk.split(",") if part.strip()]
    unknown = [item for item in items if item not in ATTACKS]
    if unknown or not items:
        raise EdgesplitError(f"unknown attack {', '.join(repr(u) for u in unknown) or '(none given)'}; "
                             f"choose from {', '.join(ATTACK_NAMES)} (comma-separated)")
    return tuple(a for a in ATTACK_NAMES if a in items)


__all__ = ["ATTACKS", "ATTACK_NAMES", "IMAGE_ATTACKS", "Attack", "AttackKind", "AttackTarget", "Effort", "Outcome",
           "attack_label", "attacks_help", "parse_attacks"]
