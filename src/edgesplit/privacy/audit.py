"""The privacy audit: at each cut, under each defense, attack what crosses and measure what the task keeps.

For every (cut, defense) pair the audit builds what the device sends (head, defense, codec), measures the
task's accuracy on it, runs the chosen attacks on it — learned inversion (black-box), optimization inversion
(white-box), linear and MLP label probes — and the distance correlation between inputs and what crosses. Beside
the attacks it computes a bound: dFIL, the Fisher information what crosses carries about the input under Gaussian
noise, which caps what an unbiased reconstruction can reach (`privacy.fisher`).
The victims are the data set's test split; the attacker's auxiliary images are a train split (of ``--aux``,
else of the same data set), disjoint from the victims. See docs/threat-model.md.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from torch import nn

from edgesplit.codecs import parse_codec
from edgesplit.errors import CutError, EdgesplitError, InputShapeError
from edgesplit.model.data import Dataset
from edgesplit.model.graph import Cut, TracedModel
from edgesplit.privacy.attacks import ATTACK_NAMES, ATTACKS, AttackTarget, Effort, attacks_help, parse_attacks
from edgesplit.privacy.defenses import (ACCEPTED_FORMS, NOISE_CALIBRATION_IMAGES, DefendedCut, DefenseSpec,
                                        build_defense, feature_stds, parse_defenses)
from edgesplit.privacy.figures import plot_leakage_by_cut, plot_privacy_utility, plot_reconstructions
from edgesplit.privacy.fisher import DFIL_SAMPLES, DFIL_SIGMA, dfil, mse_bound, psnr_bound
from edgesplit.privacy.inversion import mean_image_baseline
from edgesplit.privacy.leakage import leakage_table
from edgesplit.privacy.metrics import distance_correlation_ci, mean_ci, psnr, ssim
from edgesplit.privacy.probes import PROBE_KINDS, ProbeKind
from edgesplit.privacy.schema import AttackScore, AuditReport, AuditRow, FisherScore, ProbeScore, Score
from edgesplit.progress import progress_bar

_NOT_RECORDED = {"cuts", "defenses", "aux"}  # what to audit, not how: the report records it elsewhere
DFIL_DEFENSES = ("none", "noise", "nopeek")  # what dFIL models: a differentiable head, then Gaussian noise


class AuditSettings(BaseModel):
    """Everything `edgesplit audit` can be told: what to attack, how hard the attacks try, on how much data.

    How the attacks ran is part of the report (``AuditReport.settings``), so a result can be reproduced; what
    was audited (cuts, defenses, the attacker's data) is recorded in the report's own fields. ``epochs`` and
    ``steps`` are accepted for ``inversion_epochs`` and ``optimize_steps`` (a run config's names).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cuts: str = Field("all", description="all, or cut indices / node names, comma-separated")
    attacks: tuple[str, ...] = Field(ATTACK_NAMES, description=f"{attacks_help()}; comma-separated")
    defenses: tuple[str, ...] = Field((), description=f"{ACCEPTED_FORMS}; repeatable or comma-separated "
                                                      "(none, the undefended cut, is always audited)")
    aux: str | None = Field(None, description="the attacker's images: the train split of this data spec "
                                              "(default: the victims' data set's train split)")
    codec: str | None = Field(None, description="the deployment codec (e.g. int8): attacks see what it delivers "
                                                "(default: fp32)")
    victims: int = Field(256, ge=2, description="test images to attack")
    aux_limit: int = Field(2000, ge=2, description="auxiliary images the attacker holds")
    inversion_epochs: int = Field(10, ge=1, validation_alias=AliasChoices("inversion_epochs", "epochs"),
                                  description="decoder training epochs (learned inversion)")
    optimize_steps: int = Field(60, ge=1, validation_alias=AliasChoices("optimize_steps", "steps"),
                                description="optimization steps per victim batch (white-box inversion)")
    held_out: float = Field(Effort.held_out, ge=0, lt=1, description="share of the aux images the decoder holds "
                            "out: the epoch with the lowest held-out MSE is kept (0: none)")
    patience: int | None = Field(Effort.patience, ge=1, description="decoder epochs without a held-out gain of "
                                 "min_improvement before it stops (None: all inversion_epochs)")
    min_improvement: float = Field(Effort.min_improvement, ge=0, lt=1, description="relative held-out gain an "
                                   "epoch must bring to count as progress")
    warm_start: bool = Field(Effort.warm_start, description="start each cut's decoder from the previous cut's "
                             "when the crossing shapes match")
    warm_patience: int | None = Field(Effort.warm_patience, ge=1, description="epochs without a held-out gain of "
                                      "min_improvement before a warm-started decoder stops (None: patience)")
    bf16: bool = Field(Effort.bf16, description="where the CPU computes bf16 natively (AMX / AVX512-BF16): train "
                       "the decoders under bfloat16 autocast (the white-box attack and the probes stay "
                       "float32)")
    decoder_prior: bool = Field(Effort.decoder_prior, description="start the white-box attack from the learned "
                                "decoder's reconstructions (when both attacks run), keeping per victim the "
                                "image with the lower objective")
    prior_weight: float = Field(Effort.prior_weight, ge=0, description="weight of the squared distance to the "
                                "decoder prior in the white-box objective")
    optimize_tolerance: float | None = Field(Effort.tolerance, ge=0, lt=1, description="a white-box victim stops "
                                             "when its objective improved by less than this share over 20 steps "
                                             "(None: every step)")
    flat_epoch_factor: int = Field(Effort.flat_epoch_factor, ge=1, description="where every crossing tensor is "
                                   "flat (fully connected features), the decoder trains this many times "
                                   "inversion_epochs (cheap there, and it underfits at 10)")
    probe_kinds: tuple[ProbeKind, ...] = Field(PROBE_KINDS, min_length=1,
                                               description="the label probes trained: linear, mlp")
    defense_epochs: int = Field(2, ge=1, description="NoPeek / bottleneck training epochs")
    defense_train_limit: int | None = Field(5000, ge=2, description="defenses train on at most this many images")
    grid_images: int = Field(8, ge=1, description="victims shown in the reconstruction grids")
    dfil_sigma: float | None = Field(None, gt=0, description="noise std the dFIL bound assumes, in units of each "
                                     "crossing tensor's clean std, as noise:SIGMA (default: the smallest "
                                     f"noise:SIGMA defense audited, else {DFIL_SIGMA}); noise rows use their own")
    dfil_samples: int = Field(DFIL_SAMPLES, ge=1, description="Hutchinson vectors per victim for dFIL (inputs of "
                                                              "at most 256 values are computed exactly)")
    dfil_victims: int = Field(64, ge=1, description="victims dFIL is averaged over (the first of the victims)")
    seed: int = Field(0, description="seed of every attack, probe and defense")

    @field_validator("attacks", mode="before")
    @classmethod
    def _known_attacks(cls, value: Any) -> tuple[str, ...]:
        return parse_attacks(value)

    @field_validator("defenses", mode="before")
    @classmethod
    def _parsable_defenses(cls, value: Any) -> Any:
        texts = [value] if isinstance(value, str) else [] if value is None else value
        parse_defenses(texts)  # every spec is checked before the slow work starts
        return texts

    @field_validator("codec")
    @classmethod
    def _parsable_codec(cls, value: str | None) -> str | None:
        if value is not None:
            parse_codec(value)
        return value

    def effort(self) -> Effort:
        """How the image attacks save time and where they start (privacy.attacks.Effort)."""
        return Effort(held_out=self.held_out, patience=self.patience, min_improvement=self.min_improvement,
                      warm_start=self.warm_start, warm_patience=self.warm_patience, bf16=self.bf16,
                      decoder_prior=self.decoder_prior, prior_weight=self.prior_weight,
                      tolerance=self.optimize_tolerance, flat_epoch_factor=self.flat_epoch_factor)

    def recorded(self) -> dict[str, Any]:
        """How the attacks ran, as the report's ``settings`` records it (lists, not tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in self.model_dump(exclude=_NOT_RECORDED).items()}


@dataclass
class _Reconstructions:
    """The first few victims' reconstructions per (cut, defense, attack), for the grids."""

    rows: dict[tuple[int, str], list[tuple[str, torch.Tensor, AttackScore]]] = field(default_factory=dict)


def resolve_cuts(traced: TracedModel, text: str) -> list[Cut]:
    """``all``, or comma-separated cut indices / node names, as candidate cuts in graph order."""
    if text.strip().lower() == "all":
        return list(traced.cuts)
    chosen: dict[int, Cut] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        cut = traced.cut(int(part) if part.lstrip("-").isdigit() else part)
        chosen[cut.position] = cut
    if not chosen:
        raise CutError(f"--cut {text!r} names no cut; give 'all', an index or a node name (see `edgesplit profile`)")
    return [chosen[p] for p in sorted(chosen)]


def count_overlap(first: torch.Tensor, second: torch.Tensor) -> int:
    """How many images of ``second`` also appear in ``first`` (compared as 8-bit pixels)."""
    def digests(images: torch.Tensor) -> list[bytes]:
        levels = (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        return [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() for image in levels]

    seen = set(digests(first))
    return sum(digest in seen for digest in digests(second))


def defense_misfit(spec: DefenseSpec, cut: Cut) -> str | None:
    """Why ``spec`` cannot be applied at ``cut``, or None when it can."""
    bottleneck = spec.kind == "bottleneck" or getattr(spec, "channels", None)  # trained:bottleneck= too
    if bottleneck and (len(cut.crossing) != 1 or len(cut.crossing[0].shape) != 4):
        return "a bottleneck needs one N×C×H×W tensor crossing the cut"
    return None


def _applicable(cuts: Sequence[Cut], defenses: Sequence[DefenseSpec],
                warn: Callable[[str], None]) -> list[tuple[Cut, DefenseSpec]]:
    """The (cut, defense) pairs to measure; a defense that fits none of the cuts is an error, found up front."""
    pairs = []
    for spec in defenses:
        misfits = {cut.position: defense_misfit(spec, cut) for cut in cuts}
        skipped = [position for position, reason in misfits.items() if reason]
        reason = next((r for r in misfits.values() if r), None)
        if len(skipped) == len(cuts):
            raise EdgesplitError(f"defense {spec.text} fits none of the cuts audited ({reason}); choose other "
                                 "cuts (see `edgesplit profile`) or drop it")
        if skipped:
            warn(f"defense {spec.text} skipped at cut{'s' if len(skipped) > 1 else ''} "
                 f"{', '.join(map(str, skipped))}: {reason}")
        pairs += [(cut, spec) for cut in cuts if not misfits[cut.position]]
    return pairs


def _check_images(images: torch.Tensor, what: str, input_shape: tuple[int, ...]) -> None:
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise InputShapeError(f"{what} are {'×'.join(map(str, images.shape[1:]))} but the model takes "
                              f"{'×'.join(map(str, input_shape))}; pass data of that size, or --input-shape "
                              f"1,{','.join(map(str, images.shape[1:]))} if the model accepts it")


def _score(values: torch.Tensor, median: bool = False) -> Score:
    """Mean with its 95% interval; with ``median``, the median too (capped PSNRs inflate a mean)."""
    mean, low, high = mean_ci(values) if len(values) > 1 else (float(values.mean()),) * 3
    return Score(mean=mean, low=low, high=high,
                 median=float(values.double().quantile(0.5)) if median else None)


def _image_scores(attack: str, reconstructions: torch.Tensor, originals: torch.Tensor, seconds: float) -> AttackScore:
    return AttackScore(attack=attack, psnr=_score(psnr(reconstructions, originals), median=True),
                       ssim=_score(ssim(reconstructions, originals), median=True), seconds=seconds)


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return float((predictions == labels).double().mean())


def _attack_row(defended: DefendedCut, cut: Cut, victims: torch.Tensor, victim_labels: torch.Tensor,
                aux: torch.Tensor, aux_labels: torch.Tensor, settings: AuditSettings,
                kept: _Reconstructions, step: Callable[[str], None], carry: dict[str, Any]) -> AuditRow:
    """Every chosen attack on what ``defended`` sends at ``cut``; ``carry`` passes a decoder to the next cut."""
    spec = defended.spec
    sent = defended.send(victims)
    row = AuditRow(position=cut.position, after=cut.after, defense=spec.text,
                   crossing=[list(t.shape[1:]) for t in sent],
                   task_accuracy=defended.accuracy(victims, victim_labels),
                   defense_seconds=defended.train_seconds)
    shown = kept.rows.setdefault((cut.position, spec.text), [])
    target = AttackTarget(defended, sent, victims, victim_labels, aux, aux_labels, effort=settings.effort(),
                          carry=carry)
    for attack in ATTACKS.values():  # the table's order, whatever order the settings list them in
        if attack.name not in settings.attacks:
            continue
        step(attack.title)
        outcome = attack.run(target, getattr(settings, attack.setting) if attack.setting else None, settings.seed)
        target.earlier[attack.name] = outcome
        if attack.reconstructs:
            score = _image_scores(attack.name, outcome.reconstructions, victims, outcome.seconds)
            row.attacks.append(score)
            shown.append((attack.label, outcome.reconstructions[:settings.grid_images], score))
        else:
            row.probes += [ProbeScore(kind=probe.kind, chance=probe.chance,
                                      accuracy=Score(mean=probe.accuracy, low=probe.ci_low, high=probe.ci_high))
                           for probe in outcome]
    step("distance correlation")
    flat = torch.cat([t.flatten(1) for t in sent], dim=1)
    value, low, high = distance_correlation_ci(victims, flat, seed=settings.seed)
    row.distance_correlation = Score(mean=value, low=low, high=high)
    return row


def resolved_dfil_sigma(settings: AuditSettings, defenses: Sequence[DefenseSpec]) -> float:
    """The noise std (in units of the clean features' std) dFIL assumes at rows that add no noise of their own:
    ``--dfil-sigma``, else the weakest noise defense audited (the largest dFIL), else DFIL_SIGMA."""
    if settings.dfil_sigma is not None:
        return settings.dfil_sigma
    return min((d.strength for d in defenses if d.kind == "noise"), default=DFIL_SIGMA)


def _fisher_score(defended: DefendedCut, victims: torch.Tensor, calibration: torch.Tensor, sigma: float,
                  settings: AuditSettings) -> FisherScore | None:
    """dFIL of what ``defended`` sends, under its own noise (noise:SIGMA) or noise of ``sigma`` × the features' std.

    None for defenses dFIL does not model (dropout, quant and the bottleneck's quantized code are not a
    differentiable head plus Gaussian noise) and where a crossing tensor is constant (no std to scale noise by).
    A deployment codec after the noise only post-processes it, which cannot add Fisher information.
    """
    spec = defended.spec
    if spec.kind not in DFIL_DEFENSES:
        return None
    if spec.kind == "noise":
        sigma, noise = float(spec.strength), [float(n) for n in defended.train_log["noise_std"]]
    else:
        noise = [sigma * std for std in feature_stds(defended.head, calibration)]
    if not all(n > 0 for n in noise):
        return None
    result = dfil(defended.head, victims, noise, samples=settings.dfil_samples, seed=settings.seed)
    value = result.mean
    return FisherScore(dfil=_score(result.per_victim), sigma=sigma, noise_std=noise, psnr_bound=psnr_bound(value),
                       mse_bound=mse_bound(value) if value > 0 else None, estimator=result.estimator,
                       samples=result.samples, victims=len(victims), seconds=result.seconds)


def run_audit(traced: TracedModel, model: nn.Module, data: Dataset, aux: Dataset, *,
              cuts: Sequence[Cut] | None = None, defenses: Sequence[DefenseSpec] | None = None,
              settings: AuditSettings, name: str, model_ref: dict, data_spec: str, aux_spec: str,
              out_dir: Path | None = None, progress: bool = True,
              on_warning: Callable[[str], None] | None = None) -> AuditReport:
    """Attack every cut under every defense; write grids and plots into ``out_dir`` when given.

    ``cuts`` and ``defenses`` default to those ``settings`` names (``settings.cuts``, ``settings.defenses``).
    ``on_warning`` hears each warning (overlapping data sets) as soon as it is found, before the long work.
    """
    started = time.perf_counter()
    cuts = resolve_cuts(traced, settings.cuts) if cuts is None else cuts
    defenses = parse_defenses(settings.defenses) if defenses is None else defenses
    input_shape = tuple(traced.example_inputs[0].shape[1:])
    victims, victim_labels = data.test_images[:settings.victims], data.test_labels[:settings.victims]
    aux_images, aux_labels = aux.train_images[:settings.aux_limit], aux.train_labels[:settings.aux_limit]
    _check_images(victims, f"the victim images ({data_spec}, test split)", input_shape)
    _check_images(aux_images, f"the auxiliary images ({aux_spec}, train split)", input_shape)
    if len(victims) < 2 or len(aux_images) < 2:
        raise EdgesplitError(f"the audit needs at least 2 victim and 2 auxiliary images (got {len(victims)} and "
                             f"{len(aux_images)}); use a larger data set or raise --victims / --aux-limit")
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        if on_warning is not None:
            on_warning(text)

    overlap = count_overlap(aux_images, victims)
    if overlap:
        warn(f"{overlap} of {len(victims)} victim images are also in the auxiliary set: the attacks are inflated "
             "(they may recall those images); use disjoint data for --aux")
    model.eval()
    model_accuracy = _accuracy(model, victims, victim_labels)
    chance = float(torch.bincount(victim_labels).max()) / len(victim_labels)
    baseline = mean_image_baseline(aux_images, len(victims))
    mean_image = _image_scores("inversion", baseline, victims, 0.0)

    pairs = _applicable(cuts, defenses, warn)
    rows: list[AuditRow] = []
    kept = _Reconstructions()
    carries: dict[str, dict[str, Any]] = {}  # per defense: what one cut's attacks leave the next (a decoder)
    steps_per_row = len(settings.attacks) + 2  # each attack, then the distance correlation and dFIL
    sigma = resolved_dfil_sigma(settings, defenses)
    calibration = data.train_images[:NOISE_CALIBRATION_IMAGES]  # as the noise defense's scale
    with torch.random.fork_rng(devices=[]), progress_bar(progress) as bar:
        task = bar.add_task("audit", total=len(pairs) * (steps_per_row + 1), status="")
        for cut in cuts:
            split = traced.split(cut)
            for spec in (d for c, d in pairs if c is cut):
                where = f"cut {cut.position} ({cut.after}) · {spec.text}"

                def step(what: str, where: str = where) -> None:
                    bar.update(task, advance=1, status=f"{where} · {what}")

                step("defense")
                defended = build_defense(spec, split, model, data, codec=settings.codec,
                                         epochs=settings.defense_epochs, train_limit=settings.defense_train_limit,
                                         seed=settings.seed)
                rows.append(_attack_row(defended, cut, victims, victim_labels, aux_images, aux_labels, settings,
                                        kept, step, carries.setdefault(spec.text, {})))
                step("dFIL bound")
                rows[-1].fisher = _fisher_score(defended, victims[:settings.dfil_victims], calibration, sigma,
                                                settings)
    report = AuditReport(
        model=name, fingerprint=traced.fingerprint, model_ref=model_ref, data=data_spec, aux=aux_spec,
        victims=len(victims), aux_images=len(aux_images), overlap=overlap, codec=settings.codec,
        attacks=list(settings.attacks), defenses=[d.text for d in defenses], model_accuracy=model_accuracy,
        chance=chance, mean_image=mean_image, rows=rows,
        leakage=leakage_table(rows, name, traced.fingerprint, settings.codec),
        settings={**settings.recorded(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        warnings=warnings, seconds=0.0)
    if out_dir is not None:
        _write_figures(report, victims[:settings.grid_images], kept, out_dir)
    report.seconds = time.perf_counter() - started
    return report


def _psnr_text(score: AttackScore) -> str:
    """Mean PSNR, and the median beside it where it differs (capped values inflate a mean)."""
    median = score.psnr.median
    shown = median is not None and f"{median:.1f}" != f"{score.psnr.mean:.1f}"
    return f"{score.psnr.mean:.1f} dB" + (f" (median {median:.1f})" if shown else "")


def _write_figures(report: AuditReport, originals: torch.Tensor, kept: _Reconstructions, out_dir: Path) -> None:
    """Reconstruction grids (one per cut, and the best attack at every cut), the leakage and trade-off plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    best_rows = []
    for position in sorted({r.position for r in report.rows}):
        rows = [(f"{defense} · {attack} · {_psnr_text(score)} / {score.ssim.mean:.2f}", images)
                for (at, defense), shown in kept.rows.items() if at == position
                for attack, images, score in shown]
        if not rows:
            continue
        row = report.row(position)
        after = row.after if row else str(position)
        path = out_dir / f"reconstructions-cut{position:02d}.png"
        plot_reconstructions(originals, rows, path, f"{report.model}: cut {position} (after {after})")
        report.grids[str(position)] = path.name
        undefended = kept.rows.get((position, "none"), [])
        if undefended:
            attack, images, score = max(undefended, key=lambda item: item[2].ssim.mean)
            best_rows.append((f"{position} {after} · {attack} · {score.ssim.mean:.2f}", images))
    if best_rows:
        path = out_dir / "reconstructions.png"
        plot_reconstructions(originals, best_rows, path, f"{report.model}: the strongest attack at each cut")
        report.grids["best"] = path.name
    if any(r.defense == "none" for r in report.rows):
        report.plots["leakage"] = plot_leakage_by_cut(report, out_dir / "leakage-by-cut.png").name
    report.plots["privacy_utility"] = plot_privacy_utility(report, out_dir / "privacy-utility.png").name


def summary_line(report: AuditReport) -> str:
    """One sentence on the most and least leaky undefended cuts."""
    undefended = [r for r in report.rows if r.defense == "none" and r.best_attack() is not None]
    if not undefended:
        return f"audited {len(report.rows)} rows in {report.seconds:.0f} s"
    worst = max(undefended, key=lambda r: r.best_attack().ssim.mean)
    best = min(undefended, key=lambda r: r.best_attack().ssim.mean)
    return (f"most leaky: cut {worst.position} ({worst.after}), SSIM {worst.best_attack().ssim.mean:.2f}; "
            f"least: cut {best.position} ({best.after}), SSIM {best.best_attack().ssim.mean:.2f} "
            f"(mean-image baseline {report.mean_image.ssim.mean:.2f}); {len(report.rows)} rows in "
            f"{report.seconds / 60:.1f} min")


# parse_attacks is defined with the table of attacks (privacy.attacks) and re-exported for the audit's callers.
__all__ = ["DFIL_DEFENSES", "AuditSettings", "count_overlap", "defense_misfit", "parse_attacks",
           "resolve_cuts", "resolved_dfil_sigma", "run_audit", "summary_line"]
