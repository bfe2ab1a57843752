"""Reading the versioned JSON files edgesplit writes (device profiles, plans, leakage tables) with clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgesplit.errors import EdgesplitError

Model = TypeVar("Model", bound=BaseModel)


def read_versioned(path: str | Path, model: type[Model], *, kind: str, version: int, what: str, make: str,
                   again: str, unwrap: Callable[[Any], Any] | None = None) -> Model:
    """Parse ``path`` as ``model``, refusing a missing file, bad JSON, another kind or version, or a bad shape.

    ``what`` names the file in messages ("device profile"), ``make`` says how to make one, ``again`` how to
    redo it ("measure it again"); ``unwrap`` may pick the object out of a file that embeds it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgesplitError(f"{what} {path} not found; make one with {make}") from None
    except (OSError, ValueError) as error:
        raise EdgesplitError(f"{what} {path} is not readable JSON ({error}); make it again") from None
    if unwrap is not None:
        data = unwrap(data)
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise EdgesplitError(f"{path} is not an edgesplit {what}; make one with {make}")
    if data.get("version") != version:
        raise EdgesplitError(f"{what} {path} has version {data.get('version')}, this edgesplit reads version "
                             f"{version}; {again} with this edgesplit")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise EdgesplitError(f"{what} {path} is malformed ({error.error_count()} errors, first at "
                             f"{error.errors()[0]['loc']}); {again}") from None
