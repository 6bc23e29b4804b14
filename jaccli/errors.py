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
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # noqa: BLE001 - a user's exception whose __str__ raises
        lines = []
    return f"{type(exc).__name__}: {excerpt(lines[0], 300)}" if lines else type(exc).__name__


def excerpt(text: str, limit: int = 60) -> str:
    """``text`` with control characters escaped, cut in the middle to about ``limit`` characters:
    messages quote user values (a YAML string, a FUNC, an exception's text) in one short line."""
    if len(text) > 4 * limit:
        text = text[: 2 * limit] + text[-2 * limit :]  # escaping below costs no more than this
        cut = True
    else:
        cut = False
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if cut or len(shown) > limit:
        head, tail = shown[: limit * 2 // 3], shown[-(limit // 3) :]
        return f"{head}...{tail}"
    return shown


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)``, or for a long value an excerpt: ``'hello...world' (3,000,000 characters)``."""
    if isinstance(value, str) and len(value) > limit:
        return f"{excerpt(value, limit)!r} ({len(value):,} characters)"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = object.__repr__(value)
    return excerpt(text, limit)


MAX_LINE = 1000  # the longest error line main prints (a safety net behind excerpt/quoted)


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """An error message as one line of at most about ``limit`` characters, escaped."""
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return excerpt(text, limit) if len(text) > limit or not text.isprintable() else text


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
