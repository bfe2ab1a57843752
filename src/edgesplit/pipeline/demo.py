"""The main job end to end on data the packages bundle: the pipeline with its built-in config."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from edgesplit.pipeline.config import DEMO_CONFIG
from edgesplit.pipeline.run import run_pipeline

__all__ = ["run_demo"]


def run_demo(out_dir: Path, console: Console, progress: bool = True) -> dict:
    """Train small_cnn on digits, profile it and ResNet-8, plan two presets, compress, serve, audit, report."""
    return run_pipeline(DEMO_CONFIG, out_dir, console, progress)

