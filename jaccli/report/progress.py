"""Progress bars on standard error for long work: streamed or chunked Jacobians, long ``--repeat``
series, ``jac check --full``.

A bar is drawn only when it helps a person watching: standard error is a terminal and
``--quiet`` was not given. In pipelines, logs and CI there is no bar at all (not even a final
line), so captured stderr stays the timing table alone. ``NO_COLOR`` decides colours only, as
everywhere in jac (rich reads it). The bar is transient: it disappears when the work ends.
rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

# A repeated series expected to take longer than this gets a bar (shorter work would only flicker).
LONG_S = 2.0


class Switch:
    """Whether bars may be drawn in this process: off under ``--quiet`` (set by the command line)."""

    quiet = False


def enabled(stream: IO[str] | None = None) -> bool:
    """True when a bar may be drawn on ``stream`` (default: standard error)."""
    stream = sys.stderr if stream is None else stream
    return not Switch.quiet and stream is not None and is_terminal(stream)


def is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


class _Silent:
    """What ``bar`` yields when no bar is drawn: the same methods, doing nothing."""

    def advance(self, steps: float = 1) -> None:
        pass


class _Drawn:
    def __init__(self, progress: Any, task: Any):
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1) -> None:
        self._progress.advance(self._task, steps)


@contextmanager
def bar(description: str, total: float, stream: IO[str] | None = None) -> Iterator[Any]:
    """A bar of ``total`` steps (call ``.advance(n)``), drawn only when :func:`enabled`."""
    stream = sys.stderr if stream is None else stream
    if not enabled(stream) or total <= 0:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(file=stream, force_terminal=True)  # enabled() already saw a terminal
    columns = (
        TextColumn("{task.description}", markup=False),  # descriptions hold paths, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield _Drawn(progress, progress.add_task(description, total=total))
