"""Standard output as shell pipelines need it: every byte written or an error, never a silent
short write; a reader that leaves (``| head``) ends jac as it ends ``cat``; the user's function
may print but not close jac's streams.

A large ``write`` to a pipe whose reader has gone can return after part of the data (the
kernel took 64 KiB, then the reader closed): :func:`write_all` loops until every byte is
taken, so the next write meets the broken pipe and raises. :func:`end_by_sigpipe` then ends
the process by SIGPIPE (exit status 141 in the shell), as Unix tools do, with nothing on
standard error.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from jaccli.errors import FunctionError, InputError

EXIT_SIGPIPE = 128 + 13  # what the shell reports for a process ended by SIGPIPE


class ReaderGone(Exception):
    """Standard output's reader went away (``| head``). Not an OSError, so that click's own
    handling of EPIPE (exit status 1, meaning "check failed" in jac) does not take it."""

    exit_code = EXIT_SIGPIPE


def write_all(stream: IO[bytes], data: bytes) -> None:
    """Write every byte of ``data`` to a binary stream (looping over short writes), then flush."""
    view = memoryview(data)
    try:
        while view:
            taken = stream.write(view)
            if taken is None:  # a non-blocking stream that would block: the rest must still go
                raise BlockingIOError("standard output is non-blocking and full")
            view = view[taken:]
        stream.flush()
    except BrokenPipeError as exc:
        raise ReaderGone() from exc


def write_text(stream: IO[str], text: str) -> None:
    """Write ``text`` to a text stream, checked like :func:`write_all` when it has a byte buffer."""
    try:
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(text)
            stream.flush()
            return
        stream.flush()  # whatever was written through the text layer goes first
        encoding = getattr(stream, "encoding", None) or "utf-8"
        write_all(buffer, text.encode(encoding, errors="replace"))
    except BrokenPipeError as exc:
        raise ReaderGone() from exc  # the reader left: main ends quietly
    except OSError as exc:
        raise InputError(f"cannot write to standard output: {exc.strerror or exc}") from exc


def is_plain(stream: IO[str]) -> bool:
    """A pipe or a file (not a terminal) and no FORCE_COLOR: plain text, and no need of rich."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError, OSError):
        return True


def plain_width() -> int:
    """Columns for text that does not go to a terminal: $COLUMNS, else 80 (rich's rule)."""
    try:
        return max(int(os.environ.get("COLUMNS", "")), 1)
    except ValueError:
        return 80


def raise_broken_pipe() -> None:
    """For rich's Console.on_broken_pipe, which would otherwise exit with status 1."""
    raise ReaderGone()


def end_by_sigpipe() -> int:
    """After a broken pipe on standard output: no more writes to it, then die by SIGPIPE when
    this is the process's own standard output (the shell sees 141); else return 141."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.__stdout__.fileno())  # the interpreter's final flush cannot fail again
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass
    if sys.stdout is sys.__stdout__ and hasattr(os, "kill"):
        import signal

        if hasattr(signal, "SIGPIPE"):
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGPIPE)
    return EXIT_SIGPIPE


class UserStdout:
    """What the user's code sees as ``sys.stdout`` while jac runs it: standard error (standard
    output holds results alone), which it may write to but not close."""

    def __init__(self, target: IO[str]):
        self._target = target

    def write(self, text: str) -> int:
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def close(self) -> None:
        raise FunctionError(
            "the function closed sys.stdout; jac's standard streams are not the function's to close "
            "(print freely: jac shows it on standard error)"
        )

    @property
    def closed(self) -> bool:
        return self._target.closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)
