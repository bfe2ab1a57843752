"""`edgesplit run` and `edgesplit demo`: every stage in order from one config, each stage's file in one folder.

The modules, in the order a run uses them:

* ``config``: the run config (``RunConfig``; its sections are the stages' settings), ``load_config``,
  ``check_config`` and the demo's ``DEMO_CONFIG``.
* ``stages``: one function per stage (train, profile, plan, split, compress, serve and infer, audit), each taking
  its settings and returning its record; the CLI verbs call the same functions. ``show``: what each prints.
* ``serving``: the local tail server a run starts (``served``) and its token file (``write_secret``).
* ``run``: ``run_pipeline``, the order and what to skip; ``demo``: ``run_demo``.
* ``summary``: run.json's schema (``RunSummary``, a ``StageRecord`` per stage) and ``stage_result_text``.

The names below are imported on first use (``from edgesplit.pipeline import run_pipeline``): the report reads
run.json with ``pipeline.summary``, and ``pipeline.run`` writes the report, so importing the package imports
neither.
"""

from __future__ import annotations

import importlib

__all__ = ["DEMO_CONFIG", "ConfigError", "RunConfig", "RunSummary", "StageRecord", "Target", "check_config",
           "load_config", "load_run", "run_demo", "run_pipeline", "served", "stage_result_text", "write_secret"]

_HOMES = {
    "config": ("DEMO_CONFIG", "ConfigError", "RunConfig", "Target", "check_config", "load_config"),
    "demo": ("run_demo",),
    "run": ("run_pipeline",),
    "serving": ("served", "write_secret"),
    "summary": ("RunSummary", "StageRecord", "load_run", "stage_result_text"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> object:
    """A public name, imported from its module on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesplit.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgesplit.pipeline.{module}"), name)
