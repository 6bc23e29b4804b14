"""Exceptions whose message is shown to the user, each carrying the exit code of the contract.

Anything else that escapes is a bug in jac and is reported as such by the CLI.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    INPUT = 2
    FUNCTION = 3
    INTERNAL = 70  # sysexits EX_SOFTWARE: a bug in jac itself


class JacError(Exception):
    """An error meant for the user: ``str(error)`` is one line saying what is wrong and how to fix it."""

    exit_code: ExitCode = ExitCode.INPUT


class InputError(JacError):
    """Bad usage or input: an option, a file, a shape, a module or name, a device (exit 2)."""

    exit_code = ExitCode.INPUT


class FunctionError(JacError):
    """The user's function, or its derivative, raised (exit 3)."""

    exit_code = ExitCode.FUNCTION


def describe(exc: BaseException) -> str:
    """``TypeName: first line of the message``, for one-line reports of someone else's exception."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def kind_of(obj: object) -> str:
    """``None``, ``a module``, ``an int``, ``a Tensor``: what an object is, for messages."""
    import inspect

    if obj is None:
        return "None"
    if inspect.ismodule(obj):
        return "a module"
    return with_article(type(obj).__name__)


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def human_size(n_bytes: float) -> str:
    """1.5 KiB, 20.4 GiB: sizes in messages."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:,.0f} bytes" if unit == "bytes" else f"{n_bytes:,.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def key_mismatch(expected: list[str], given: list[str], most: int = 5) -> str | None:
    """``missing a, b; unexpected c`` when two sets of names differ, else None."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:most])}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:most])}")
    return "; ".join(parts) or None
