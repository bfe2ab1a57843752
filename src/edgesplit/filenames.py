"""The names of the files a run writes: one rule for a safe file name, and the slug that names a target's files.

`edgesplit run` names each target's plan ``plan_SLUG.json``; `edgesplit report` finds those files by the same slug.
Both import it from here, so the report needs nothing from the pipeline (and the pipeline imports the report).
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_CHARS", "check_file_name", "target_slug"]

MAX_NAME_CHARS = 64  # a target's name, which names its files
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_file_name(name: str, what: str = "a name") -> str:
    """``name`` if it is safe as one file name (letters, digits, ``._-``; not ``.`` or ``..``; at most 64
    characters), else ValueError (a config error where pydantic validates)."""
    if not _FILE_NAME.fullmatch(name) or name in (".", "..") or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"{what} {name[:80]!r} names files, so it may use only letters, digits, '.', '_' and '-' "
                         f"(at most {MAX_NAME_CHARS}, not '.' or '..')")
    return name


def target_slug(name: str | None, device: str, link: str) -> str:
    """What names a target's files (plan_SLUG.json): its name (checked with ``check_file_name`` where a config
    is read), else its device and link specs made file-safe."""
    return name or re.sub(r"[^A-Za-z0-9.-]+", "_", f"{device}-{link}").strip("_")[:MAX_NAME_CHARS] or "target"
