"""Writing results: ``.npz``, ``.npy``, ``.yaml``, ``.json``, to a file or to standard output.

Files are written atomically: into a temporary file beside the target, flushed, then renamed
over it, so a reader sees the old file or the complete new one, never a part. Destinations
are checked before any work, so a bad ``-o`` costs nothing and changes nothing.

JSON and YAML documents map each key to ``{dtype, shape, data}``: jac reads them back as
inputs (``-p results.json`` gives one primal per key). Given a reproducibility record
(:mod:`jaccli.report.record`), JSON and YAML documents and ``.npz`` files carry it under the
reserved key ``__jac__``, which jac's readers skip; a ``.npy`` has no room for it.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import IO, Any, Callable

from jaccli.errors import InputError
from jaccli.io.streams import write_all

RECORD_KEY = "__jac__"  # where result files keep their reproducibility record (jaccli.report.record)
FORMATS = ("text", "json", "yaml", "npz", "npy")
BINARY_FORMATS = ("npz", "npy")
SUFFIXES = {".npz": "npz", ".npy": "npy", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def format_for_path(path: str, option: str = "-o/--out", allowed: tuple[str, ...] = FORMATS) -> str:
    """The format a path's suffix names, among ``allowed``."""
    suffix = os.path.splitext(path)[1].lower()
    if SUFFIXES.get(suffix) not in allowed:
        known = [s for s, fmt in SUFFIXES.items() if fmt in allowed]
        raise InputError(
            f"{option} {path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            f"use one of {', '.join(known)}"
        )
    return SUFFIXES[suffix]


def check_destination(path: str, option: str = "-o/--out") -> None:
    """An output path must be a file in an existing, writable folder (no folder is created)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {folder} is not writable")
    if os.path.exists(path) and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
        # judged by the mode bits too: root may write anything, but a read-only file is a request
        raise InputError(f"{option} {path} exists and is read-only; choose another path or make it writable")


def check_distinct(paths: dict[str, str | None]) -> None:
    """Two outputs of one command must not be one file (``-o r.json --timings r.json``, also
    through ``./``, symbolic links or hard links): the second would overwrite the first."""
    seen: dict[tuple, tuple[str, str]] = {}
    for option, path in paths.items():
        if path is None or path == "-":
            continue
        keys = [("path", os.path.normcase(os.path.realpath(path)))]
        try:
            info = os.stat(path)
            keys.append(("inode", info.st_dev, info.st_ino))
        except OSError:
            pass
        for key in keys:
            if key in seen:
                other, other_path = seen[key]
                same = f"{other} {other_path} and {option} {path}"
                raise InputError(f"{same} are the same file; give each output its own path")
            seen[key] = (option, path)


def check_count(fmt: str, keys: list[str], where: str) -> None:
    """``.npy`` holds exactly one array."""
    if fmt == "npy" and len(keys) != 1:
        raise InputError(
            f"{where}: .npy holds one array but there are {len(keys)} results "
            f"({', '.join(keys)}); add --select KEY, or write .npz, .json or .yaml"
        )


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(fileobj)`` into a temporary file, then rename it over ``path``."""
    from jaccli.io import tempfiles

    try:
        fd, tmp = tempfiles.create(path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}; nothing was changed") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        replace_into(tmp, path)
    except BaseException as exc:
        tempfiles.discard(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}; nothing was changed") from exc
        raise


def replace_into(tmp: str, path: str) -> None:
    """Rename a finished temporary file over ``path``, keeping an existing file's permissions."""
    from jaccli.io import tempfiles

    os.chmod(tmp, _mode_for(path))
    tempfiles.replaced(tmp, path)


def _mode_for(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777  # keep an existing file's permissions
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_results(path: str, fmt: str, results: dict[str, Any], record: dict | None = None) -> None:
    """Write ``{key: ndarray}`` to ``path`` in ``fmt`` (npz, npy, yaml, json), atomically."""
    atomic_write(path, lambda fh: encode(fh, fmt, results, record))


def encode(fh: IO[bytes], fmt: str, results: dict[str, Any], record: dict | None = None) -> None:
    """Write ``results`` (and ``record`` where the format has room) to a binary stream in ``fmt``
    (not text: that is render's)."""
    import numpy as np

    if fmt == "npz":
        np.savez(fh, **results, **({RECORD_KEY: record_entry(record)} if record else {}))
    elif fmt == "npy":
        (array,) = results.values()
        np.save(fh, array, allow_pickle=False)
    elif fmt in ("json", "yaml"):
        doc = document(results)
        if record:
            doc[RECORD_KEY] = record
        fh.write(dump_document(doc, fmt).encode("utf-8"))
    else:
        raise ValueError(f"encode: unknown format {fmt!r}")


def record_entry(doc: dict[str, Any]) -> Any:
    """A record as a ``.npz`` entry: a 0-d numpy string of JSON, read with ``allow_pickle=False``."""
    import json

    import numpy as np

    return np.array(json.dumps(doc, allow_nan=False, default=str))


def document(results: dict[str, Any]) -> dict[str, Any]:
    """``{key: {dtype, shape, data}}`` with plain Python numbers."""
    return {
        key: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.tolist()} for key, a in results.items()
    }


def dump_document(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(_json_safe(doc), allow_nan=False) + "\n"
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN or infinities: write them as the strings jac (and float()) read back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def check_stream(stream: IO[bytes], fmt: str) -> None:
    """Binary formats go to standard output only when it is not a terminal."""
    if fmt in BINARY_FORMATS and hasattr(stream, "isatty") and stream.isatty():
        raise InputError(
            f"refusing to write binary .{fmt} data to a terminal; redirect standard output "
            f"(> out.{fmt}) or give -o out.{fmt}"
        )


def write_stream(stream: IO[bytes], fmt: str, results: dict[str, Any], record: dict | None = None) -> None:
    """Write to standard output, all at once (a failure mid-way writes no partial document)."""
    check_stream(stream, fmt)
    buffer = io.BytesIO()
    try:
        encode(buffer, fmt, results, record)
        write_all(stream, buffer.getvalue())  # every byte, or an error: never a silent short write
    except OSError as exc:
        raise InputError(f"cannot write to standard output: {exc.strerror or exc}") from exc
