"""The training progress bar (rich): step, loss, best validation metric, elapsed time and ETA.

Shown only on an interactive terminal, on rank 0, and when not asked to be quiet.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(enabled: bool) -> Progress:
    """A rich Progress on stderr with loss/val fields; a no-op unless enabled and stderr is a TTY."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}  val {task.fields[val]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )
