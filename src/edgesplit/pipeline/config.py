"""The run config: what `edgesplit run CONFIG.yaml` reads, and the demo's built-in one.

Its sections are the stages' own settings (``train: TrainSettings``, ``compress: CompressSettings``,
``serve: ServeSettings``, ``audit: AuditSettings``), and its top-level plan keys default as `edgesplit plan`'s
options do (``PlanSettings``), so every default is written once, where the stage is. ``check_config`` parses every
spec in a config before any slow work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgesplit.errors import EdgesplitError
from edgesplit.filenames import check_file_name, target_slug
from edgesplit.model.train import TrainSettings
from edgesplit.pipeline.stages import (CompressSettings, PlanSettings, ProfileSettings, ServeSettings, check_audit,
                                       check_compress, check_plan)
from edgesplit.privacy.audit import AuditSettings

__all__ = ["DEMO_CONFIG", "AuditSection", "ConfigError", "RunConfig", "Target", "check_config", "load_config"]


class ConfigError(EdgesplitError):
    """A run config that cannot be read or does not say what the pipeline needs."""


def _plan_default(name: str) -> Any:
    """A default of `edgesplit plan`'s (``PlanSettings``), for a run config key of the same meaning."""
    default = PlanSettings.model_fields[name].default
    return Field(default_factory=lambda: list(default)) if isinstance(default, list) else default


class Target(BaseModel):
    """One deployment to plan for: device, server and link specs as `edgesplit plan` takes them, or a chain of
    machines (``topology: "rpi4 > wifi > host/4 > ethernet > edge-gpu"``, or a topology YAML file)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # names the files; default: from the specs
    device: str | None = None
    server: str = _plan_default("server")
    link: str | None = None
    topology: str | None = None

    @field_validator("name")
    @classmethod
    def _file_safe(cls, name: str | None) -> str | None:
        return None if name is None else check_file_name(name, "a target's name")

    @model_validator(mode="after")
    def _machines_or_chain(self) -> Target:
        if self.topology is None and (self.device is None or self.link is None):
            raise ValueError("a target names a device and a link (and optionally a server), or a topology")
        if self.topology is not None and (self.device is not None or self.link is not None):
            raise ValueError("a target with a topology names its machines and links there, not in device/link")
        return self

    @property
    def slug(self) -> str:
        if self.topology is not None:
            return target_slug(self.name, "chain", self.topology)
        return target_slug(self.name, self.device, self.link)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        """The target as a stage title shows it."""
        return self.topology or f"{self.device} → {self.link} → {self.server}"


class AuditSection(AuditSettings):
    """A run config's ``audit``: the audit's settings, with its specs (attacks, defenses, codec) kept as written
    here and parsed by ``check_config`` with every other spec of the config (``stages.check_audit``)."""

    @field_validator("attacks", mode="before")
    @classmethod
    def _known_attacks(cls, value: Any) -> tuple[str, ...]:
        chunks = [value] if isinstance(value, str) else value
        return tuple(part.strip() for chunk in chunks for part in str(chunk).split(",") if part.strip())

    @field_validator("defenses", mode="before")
    @classmethod
    def _parsable_defenses(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else [] if value is None else value

    @field_validator("codec")
    @classmethod
    def _parsable_codec(cls, value: str | None) -> str | None:
        return value


class RunConfig(BaseModel):
    """What `edgesplit run` reads (YAML or JSON); every key but `model` and `targets` is optional, and a section
    set to null skips its stage."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    model: str
    weights: Path | None = None  # trained weights; without them, `train` trains the model on `data`
    # Neither weights nor training: the model keeps its random initial weights. Latency, bytes, plans, splits and
    # attacks do not depend on training; accuracy does, so compress measures top-1 agreement with the unsplit
    # model instead.
    untrained: bool = False
    data: str = "digits"
    image_size: int | None = Field(None, ge=1)  # images of `data` resized to this side (patches:DIR's patch side)
    train: TrainSettings | None = None
    compare: list[str] = []  # other models to profile beside it (zoo names, untrained)
    targets: list[Target] = Field(min_length=1)
    codecs: list[str] = _plan_default("codecs")  # what the planner may send at each cut
    objective: str = _plan_default("objective")
    keep_input: bool = _plan_default("keep_input")  # the raw input never leaves the device: no all-server plans
    profile_runs: int = Field(ProfileSettings.model_fields["runs"].default, ge=1)
    compress: CompressSettings | None = CompressSettings()  # at the served target's chosen cut, then replanned
    serve: ServeSettings | None = ServeSettings()
    audit: AuditSection | None = AuditSection()
    seed: int = 0  # seeds training, compression and the audit (unless its section sets its own)

    @field_validator("targets")
    @classmethod
    def _distinct_names(cls, targets: list[Target]) -> list[Target]:
        slugs = [t.slug for t in targets]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"two targets share a name ({', '.join(slugs)}); give each a distinct `name`")
        return targets

    def plan_settings(self, target: Target) -> PlanSettings:
        """What `edgesplit plan` is told for ``target``: its machines and link, the run's codecs, objective and
        input policy, and the run's data as the images to cost sending the input."""
        machines = {"device": target.device, "link": target.link} if target.topology is None else {}
        return PlanSettings(**machines, server=target.server, codecs=self.codecs, objective=self.objective,
                            keep_input=self.keep_input, samples=self.data, topology=target.topology)

    def audit_settings(self) -> AuditSettings | None:
        """The audit's settings, specs parsed, seeded with the run's seed unless the section sets its own."""
        if self.audit is None:
            return None
        settings = check_audit(self.audit)
        return settings if "seed" in self.audit.model_fields_set else settings.model_copy(update={"seed": self.seed})


DEMO_CONFIG = RunConfig(
    title="edgesplit demo: small_cnn on scikit-learn's digits",
    model="small_cnn", data="digits", train=TrainSettings(epochs=15), compare=["resnet8"],
    # A Raspberry Pi on LTE (Neurosurgeon's setting), and an MCU-class board (the STM32H743 has a
    # 100 Mbit/s Ethernet MAC) on wired Ethernet; the raw input stays on the device (a privacy policy).
    targets=[Target(name="rpi4-lte", device="rpi4", link="lte"),
             Target(name="mcu-ethernet", device="mcu", link="ethernet:up=100,down=100")],
    keep_input=True,
    # The demo's own settings where they differ from the verbs' defaults: more codecs for the planner, a learned
    # bottleneck, and lighter profiling and attacks, so that `make demo` takes about two minutes on 2 cores.
    codecs=["fp32", "int8", "int4+zstd", "int2+ans"], profile_runs=10,
    compress=CompressSettings(bottleneck=8, epochs=4),
    audit=AuditSection(victims=64, aux_limit=1000, inversion_epochs=4, optimize_steps=100),
)


def load_config(path: Path) -> RunConfig:
    """Read and check a run config; relative paths in it are taken from the config's folder."""
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise ConfigError(f"{path} not found; pass a run config (see examples/run.yaml)") from error
    except OSError as error:
        raise ConfigError(f"cannot read {path} ({error.strerror})") from error
    try:
        data = yaml.safe_load(text)  # safe_load builds plain data only, never objects
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix it") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no mapping; a run config names at least `model` and `targets`")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"{path}: {where}: {first['msg']} ({error.error_count()} problem(s); see examples/run.yaml)"
                          ) from error
    if config.weights is not None and not config.weights.is_absolute():
        config.weights = path.parent / config.weights
    return config


def check_config(config: RunConfig) -> None:
    """Parse every spec in the config before any slow work starts."""
    for target in config.targets:
        check_plan(config.plan_settings(target))
    if config.compress:
        check_compress(config.compress)
    if config.audit:
        check_audit(config.audit)
    if config.untrained and (config.weights is not None or config.train is not None):
        raise ConfigError("the config says `untrained: true` but also gives `weights` or a `train` section; "
                          "keep one of them")
    if config.weights is None and config.train is None and not config.untrained:
        raise ConfigError("the config has neither `weights` nor a `train` section; give trained weights, add "
                          "`train: {epochs: 10}`, or say `untrained: true` (no accuracy is measured)")
    if config.serve and config.serve.target and config.serve.target not in {t.slug for t in config.targets}:
        raise ConfigError(f"serve.target {config.serve.target!r} is none of the targets "
                          f"({', '.join(t.slug for t in config.targets)})")
