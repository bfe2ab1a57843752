"""Rich progress bars that every long step shares, and that tests and --quiet runs can turn off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

__all__ = ["progress_bar"]

console = Console(stderr=True)


class StatusColumn(ProgressColumn):
    """Shows a task's optional ``status`` field (e.g. ``epoch 2/5 loss 0.31``)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("status", "")), style="cyan")


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A Progress with description, bar, count, status, elapsed time and ETA on stderr; silent when disabled."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), StatusColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not enabled) as bar:
        yield bar
