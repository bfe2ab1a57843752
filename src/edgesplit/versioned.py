"""Reading the versioned JSON files edgesplit writes (device profiles, plans, leakage tables) with clear errors,
and writing any result as JSON (``write_json``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgesplit.errors import EdgesplitError

Model = TypeVar("Model", bound=BaseModel)

__all__ = ["read_versioned", "write_json"]


def read_versioned(path: str | Path, model: type[Model], *, kind: str, version: int, what: str, make: str,
                   again: str, unwrap: Callable[[Any], Any] | None = None,
                   error: type[EdgesplitError] = EdgesplitError) -> Model:
    """Parse ``path`` as ``model``, refusing a missing file, bad JSON, another kind or version, or a bad shape.

    ``what`` names the file in messages ("device profile"), ``make`` says how to make one, ``again`` how to
    redo it ("measure it again"); ``unwrap`` may pick the object out of a file that embeds it. Failures raise
    ``error`` (an :class:`EdgesplitError` subclass of the caller's choice).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as cause:
        raise error(f"{what} {path} not found; make one with {make}") from cause
    except OSError as cause:
        raise error(f"{what} {path} is not readable JSON ({cause}); make it again") from cause
    except ValueError as cause:
        raise error(f"{what} {path} is not readable JSON (not valid JSON: {cause}); make it again") from cause
    if unwrap is not None:
        data = unwrap(data)
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise error(f"{path} is not an edgesplit {what}; make one with {make}")
    if data.get("version") != version:
        raise error(f"{what} {path} has version {data.get('version')}, this edgesplit reads version "
                    f"{version}; {again} with this edgesplit")
    try:
        return model.model_validate(data)
    except ValidationError as cause:
        first = cause.errors()[0]
        raise error(f"{what} {path} is malformed ({cause.error_count()} errors, first at {first['loc']}: "
                    f"{first['msg'][:200]}); {again}") from cause


def write_json(path: str | Path, result: Any) -> Path:
    """Write a pydantic model (or plain data) as indented JSON to ``path``, creating its folder; a one-line
    EdgesplitError when it cannot be written. What every verb's ``--json`` and every stage of a run write."""
    path = Path(path)
    text = result.model_dump_json(indent=2) if isinstance(result, BaseModel) else json.dumps(result, indent=2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as cause:
        raise EdgesplitError(f"cannot write {path} ({cause.strerror}); choose a writable path") from cause
    return path
