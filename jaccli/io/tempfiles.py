"""The hidden temporary files beside an output (``.J.npy.<pid>.<random>.tmp``) that become it.

Every output is written into a temporary file and renamed into place (see
:func:`jaccli.io.outputs.atomic_write`). This module makes sure none is left behind:

- a file is created and recorded as pending with SIGINT and SIGTERM held back, so a signal
  cannot fall between the two; whatever ends the command (an error, Ctrl-C, SIGTERM) removes
  the pending files (:func:`remove_pending`, called by the CLI's ``main`` at the end);
- SIGKILL can leave one behind: its name holds the writer's process id, so the next run writing
  the same destination removes those of processes that no longer exist (:func:`sweep_stale`),
  and never the file of a concurrent writer still running.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator

_pending: set[str] = set()
_SIGNALS = {s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (where the platform allows it)."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None:
        yield
        return
    previous = block(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, previous)


def prefix_for(path: str) -> str:
    return f".{os.path.basename(path)}.{os.getpid()}."


def create(path: str) -> tuple[int, str]:
    """A new temporary file beside ``path``: (open descriptor, name), recorded as pending."""
    folder = os.path.dirname(os.path.abspath(path))
    sweep_stale(path)
    with signals_held():
        fd, temp = tempfile.mkstemp(prefix=prefix_for(path), suffix=".tmp", dir=folder)
        _pending.add(temp)
    return fd, temp


def replaced(temp: str, path: str) -> None:
    """Rename a finished temporary file over ``path``; it is no longer pending."""
    with signals_held():
        os.replace(temp, path)
        _pending.discard(temp)


def discard(temp: str) -> None:
    """Remove a temporary file (gone already is fine)."""
    with signals_held():
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        _pending.discard(temp)


def remove_pending() -> None:
    """Remove every temporary file this process created and has not renamed into place."""
    for temp in list(_pending):
        try:
            discard(temp)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def sweep_stale(path: str) -> list[str]:
    """Remove ``.<name>.<pid>.<random>.tmp`` files beside ``path`` whose process is gone, with a
    note on standard error; return their names."""
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(rf"^\.{re.escape(os.path.basename(path))}\.([0-9]+)\.[A-Za-z0-9_]+\.tmp$")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            continue
        removed.append(name)
    if removed:
        shown = ", ".join(removed[:3]) + (", ..." if len(removed) > 3 else "")
        sys.stderr.write(
            f"jac: note: removed {len(removed)} temporary file(s) that an interrupted jac left beside "
            f"{path}: {shown}\n"
        )
    return removed
