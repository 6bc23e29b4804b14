"""Reading array sources: ``.npy``, ``.npz``, YAML/JSON files, ``-`` (stdin), inline literals, generators.

Nothing here unpickles or executes data: ``.npy``/``.npz`` are read with ``allow_pickle=False``
and YAML with ``yaml.safe_load``. A source yields either a :class:`Generator` (its shape is
decided later, from the primal or output it stands for) or a list of :class:`Array`. The
reproducibility record jac writes into its own results (an ``.npz`` entry or a top-level key
``__jac__``, see :mod:`jaccli.report.record`) is skipped, so a result file is an input as is.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Union

import numpy as np

from jaccli.errors import InputError, describe, excerpt, human_size, quoted
from jaccli.io import safeyaml
from jaccli.io.outputs import RECORD_KEY  # a result file's record: not an array to read

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INT_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64")
DATA_SUFFIXES = (".npy", ".npz", ".yaml", ".yml", ".json")
_GENERATOR = re.compile(r"^(ones|zeros|randn)(?::(.*))?$")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
MAX_DEPTH = 32  # torch tensors have at most 64 dims; real inputs far fewer


@dataclass
class Array:
    """One array read from a source.

    ``name`` is its key in an ``.npz`` or a YAML mapping (``None`` when positional);
    ``dtype`` is the dtype its source asked for (``None``: YAML or a literal without one,
    which becomes float32 when floating); ``origin`` names the source in messages.
    """

    data: np.ndarray
    origin: str
    name: str | None = None
    dtype: str | None = None


@dataclass
class Generator:
    """``ones``, ``zeros`` or ``randn``, with a shape when one was written (``randn:3,2``)."""

    kind: str
    shape: tuple[int, ...] | None
    origin: str

    def make(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        size = math.prod(shape)
        limit = available_memory()
        if size * 8 > limit:
            raise InputError(
                f"{self.origin}: shape {shape} has {size:,} elements ({human_size(size * 8)} "
                f"in float64), more than the {human_size(limit)} of memory available"
            )
        if self.kind == "randn":
            return rng.standard_normal(shape)
        return np.ones(shape) if self.kind == "ones" else np.zeros(shape)


Source = Union[Generator, "list[Array]"]


def available_memory() -> int:
    """Bytes of physical memory available now (all of it where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62


class Stdin:
    """Standard input, readable once for the whole command."""

    def __init__(self, stream: BinaryIO | None = None):
        self._stream = stream
        self._taken_by: str | None = None

    def read(self, origin: str) -> bytes:
        if self._taken_by is not None:
            raise InputError(
                f"{origin}: standard input was already read for {self._taken_by}; "
                "'-' can stand for one option value only"
            )
        self._taken_by = origin
        stream = self._stream
        if stream is None:
            stream = getattr(sys.stdin, "buffer", None)  # sys.stdin is None when fd 0 is closed
        if stream is None or stream.closed:
            raise InputError(f"{origin}: standard input is closed; pipe .npy, .npz or YAML into jac")
        if hasattr(stream, "isatty") and stream.isatty():
            raise InputError(
                f"{origin}: standard input is a terminal; pipe .npy, .npz or YAML into jac "
                "(e.g. 'cat x.npy | jac ... -p -')"
            )
        data = stream.read()
        if not data:
            raise InputError(f"{origin}: standard input is empty; pipe .npy, .npz or YAML into jac")
        global _stdin_sha256
        _stdin_sha256 = hashlib.sha256(data).hexdigest()
        return data


_stdin_sha256: str | None = None  # of the bytes read from standard input last


def stdin_sha256() -> str | None:
    """The sha256 of what standard input held, once read (for jaccli.report.record)."""
    return _stdin_sha256


def read_source(text: str, option: str, stdin: Stdin | None = None) -> Source:
    """Read one option value (``-p x.npy``, ``-t randn``, ``-p "[1, 2]"``, ``-u -``)."""
    shown = text if len(text) <= 60 else text[:40] + "..." + text[-10:]
    origin = f"{option} {shown!r}"
    if text == "-":
        return _read_bytes((stdin or Stdin()).read(origin), f"{option} - (standard input)")
    if os.path.isfile(text) or (os.path.exists(text) and not os.path.isdir(text)):
        return _read_file(text, f"{option} {text}")
    if os.path.isdir(text):
        raise InputError(f"{origin} is a folder; give a .npy, .npz, .yaml or .json file")
    match = _GENERATOR.match(text.strip())
    if match:
        return Generator(match.group(1), _parse_shape(match.group(2), origin), origin)
    if text.lower().endswith(DATA_SUFFIXES):
        raise InputError(f"{origin}: no such file")
    try:
        return _from_yaml_text(text, origin)
    except InputError:
        if _looks_like_a_word(text):
            raise InputError(
                f"{origin}: no such file, and not a number, a list or a generator (ones, zeros, randn:SHAPE)"
            ) from None
        raise


def _looks_like_a_word(text: str) -> bool:
    """A bare word or path (a typo, most likely), not a list or mapping literal."""
    return not any(c in text for c in "[]{}:,\n")


def _parse_shape(spec: str | None, origin: str) -> tuple[int, ...] | None:
    if spec is None:
        return None
    spec = spec.strip()
    if spec in ("", "()", "[]"):
        return ()
    parts = spec.strip("()[]").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip() != "")
    except ValueError:
        shape = None
    if shape is None or any(n < 0 for n in shape):
        raise InputError(
            f"{origin}: the shape after ':' must be non-negative integers separated by commas, e.g. randn:3,2"
        )
    return shape


def _read_file(path: str, origin: str) -> list[Array]:
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            return _read_npy(path, origin)
        if lower.endswith(".npz"):
            return _read_npz(path, origin)
        if lower.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                return _from_json_text(fh.read(), origin)
        if lower.endswith((".yaml", ".yml")):
            with open(path, encoding="utf-8") as fh:
                return _from_yaml_text(fh.read(), origin)
        with open(path, "rb") as fh:  # no known suffix (e.g. /dev/fd/63): tell by content
            return _read_bytes(fh.read(), origin)
    except UnicodeDecodeError as exc:
        raise InputError(f"{origin} is not UTF-8 text ({exc.reason}); YAML and JSON must be") from exc
    except PermissionError as exc:
        raise InputError(f"{origin} cannot be read: permission denied") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{origin} is a folder; give a file") from exc


def _read_bytes(data: bytes, origin: str) -> list[Array]:
    if data.startswith(_NPY_MAGIC):
        return _read_npy(io.BytesIO(data), origin)
    if data.startswith(_ZIP_MAGICS):
        return _read_npz(io.BytesIO(data), origin)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{origin} is neither .npy, .npz nor UTF-8 YAML text; check what is being piped in"
        ) from exc
    return _from_yaml_text(text, origin)


def _np_open(file: Any) -> IO[bytes]:
    return file if isinstance(file, io.BytesIO) else open(file, "rb")


def _peek(file: Any) -> bytes:
    if isinstance(file, io.BytesIO):
        return file.getvalue()[:8]
    with open(file, "rb") as fh:
        return fh.read(8)


def _check_signature(head: bytes, origin: str, kind: str) -> None:
    """numpy takes anything that is neither .npy nor .npz for a pickle; say what it really is."""
    if head.startswith(_NPY_MAGIC if kind == ".npy" else _ZIP_MAGICS):
        return
    if not head:
        raise InputError(f"{origin} is empty; expected a {kind} file")
    if head.startswith(_ZIP_MAGICS):
        raise InputError(f"{origin} holds .npz data; name it .npz")
    if head.startswith(_NPY_MAGIC):
        raise InputError(f"{origin} holds a single .npy array; name it .npy")
    if head.startswith(b"\x80"):  # the pickle protocol 2+ opcode PROTO
        raise InputError(
            f"{origin} is a Python pickle, which jac never loads; save the array with np.save instead"
        )
    raise InputError(f"{origin} is not a {kind} file (it lacks the {kind} signature); is it the right file?")


def _read_array(fh: IO[bytes], size: int, origin: str) -> np.ndarray:
    """One .npy stream of ``size`` bytes: the header is checked against the size and the memory
    available before anything is allocated, so a header declaring an absurd shape costs nothing."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):  # 3.0 only allows UTF-8 field names: same layout
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast and tokenize: any
        # of their errors (ValueError, SyntaxError, tokenize.TokenError, ...) means a malformed file
        raise InputError(
            f"{origin} has a malformed .npy header ({excerpt(describe(exc), 120)}); is it the right file?"
        ) from exc
    if dtype.hasobject:
        raise InputError(
            f"{origin} holds Python objects (dtype object), which jac never unpickles; save a numeric array"
        )
    if any(d < 0 for d in shape):
        raise InputError(
            f"{origin} has a malformed .npy header (negative shape {shape}); is it the right file?"
        )
    declared = math.prod(shape) * dtype.itemsize
    if declared > available_memory():
        raise InputError(
            f"{origin} declares shape {shape} ({human_size(declared)}), more than the "
            f"{human_size(available_memory())} of memory available"
        )
    if size >= 0 and declared != size - fh.tell():
        raise InputError(
            f"{origin} declares shape {shape} ({declared:,} bytes of {dtype}) but holds "
            f"{size - fh.tell():,}: it is truncated or corrupt"
        )
    try:
        data = np.frombuffer(fh.read(declared), dtype=dtype, count=math.prod(shape))
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{origin} cannot be read ({exc}); is it truncated?") from exc
    return data.reshape(shape, order="F" if fortran else "C")


def _read_npy(file: Any, origin: str) -> list[Array]:
    _check_signature(_peek(file), origin, ".npy")
    fh = _np_open(file)
    try:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        data = _read_array(fh, size, origin)
    finally:
        if fh is not file:
            fh.close()
    return [Array(_check_numeric(data, origin), origin, dtype=_dtype_name(data.dtype))]


def _read_npz(file: Any, origin: str) -> list[Array]:
    """Every member of an .npz, in stored order, each header checked before reading."""
    _check_signature(_peek(file), origin, ".npz")
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{origin} is not a valid .npz file ({exc}); is it truncated?") from exc
    arrays = []
    with archive:
        members = [m for m in archive.infolist() if m.filename != RECORD_KEY + ".npy"]
        if not members:
            raise InputError(f"{origin} holds no arrays")
        for info in members:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            where = f"{origin} [{key}]"
            if not info.filename.endswith(".npy"):
                raise InputError(f"{where} is not a .npy array; an .npz holds arrays saved by np.savez")
            try:
                with archive.open(info) as member:
                    if member.read(6) != _NPY_MAGIC:
                        raise InputError(
                            f"{where} is not a .npy array; an .npz holds arrays saved by np.savez"
                        )
                    member.seek(0)
                    data = _read_array(member, info.file_size, where)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError) as exc:
                raise InputError(f"{where} cannot be read ({exc}); is the file truncated?") from exc
            arrays.append(Array(_check_numeric(data, where), where, key, _dtype_name(data.dtype)))
    return arrays


def _check_numeric(data: np.ndarray, origin: str) -> np.ndarray:
    kind = data.dtype.kind
    if kind in "fiub":
        return data
    if kind == "c":
        raise InputError(f"{origin} is complex ({data.dtype}); jac differentiates real arrays only")
    raise InputError(f"{origin} has dtype {data.dtype}; jac needs a numeric (float, int or bool) array")


def _dtype_name(dtype: np.dtype) -> str:
    return "bool" if dtype.kind == "b" else dtype.name


# --- YAML, JSON and literals -------------------------------------------------------------


MAX_TEXT_BYTES = 64 * 2**20  # YAML and JSON cost ~50x their size in Python objects: use .npy beyond


def _check_text_size(text: str, origin: str) -> None:
    if len(text) > MAX_TEXT_BYTES:
        raise InputError(
            f"{origin} is {human_size(len(text))} of text, more than jac parses as YAML or JSON "
            f"({human_size(MAX_TEXT_BYTES)}); save large arrays as .npy or .npz"
        )


MAX_YAML_BYTES = 4 * 2**20  # YAML parses at about 1 s per MiB even with libyaml: fail fast beyond


def _from_yaml_text(text: str, origin: str) -> list[Array]:
    _check_text_size(text, origin)
    if text.lstrip()[:1] in ("[", "{"):
        try:  # JSON is YAML (flow style): parsed at C speed, with the same values
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            pass
        else:
            return _from_document(obj, origin)
    if len(text) > MAX_YAML_BYTES:
        raise InputError(
            f"{origin} is {human_size(len(text))} of YAML, more than jac parses as YAML "
            f"({human_size(MAX_YAML_BYTES)}: it parses slowly); save large arrays as .npy or .npz, "
            "or as JSON (which has no such limit)"
        )
    return _from_document(safeyaml.load(text, origin), origin)


def _from_json_text(text: str, origin: str) -> list[Array]:
    _check_text_size(text, origin)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InputError(f"{origin}: JSON nested too deeply to parse; is the file right?") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{origin} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    return _from_document(obj, origin)


def _from_document(obj: Any, origin: str) -> list[Array]:
    """A number or nested list; ``{data: ..., dtype: ...}``; or a mapping or list of those."""
    if obj is None:
        raise InputError(f"{origin} is empty; give a number, a nested list or {{data: ..., dtype: ...}}")
    if isinstance(obj, dict) and RECORD_KEY in obj:  # a result file of jac's: its record is no array
        obj = {key: value for key, value in obj.items() if key != RECORD_KEY}
    if isinstance(obj, dict) and "data" not in obj:
        if not obj:
            raise InputError(f"{origin} is an empty mapping; give arrays as name: value")
        return [_one_value(value, f"{origin} [{key}]", str(key)) for key, value in obj.items()]
    if isinstance(obj, list) and obj and all(isinstance(item, dict) for item in obj):
        return [_one_value(value, f"{origin} [{i}]", None) for i, value in enumerate(obj)]
    return [_one_value(obj, origin, None)]


def _one_value(obj: Any, origin: str, name: str | None) -> Array:
    dtype = None
    if isinstance(obj, dict):
        unknown = sorted(set(map(str, obj)) - {"data", "dtype", "shape"})
        if "data" not in obj or unknown:
            what = f"unknown key {quoted(unknown[0])}" if unknown else "no 'data' key"
            raise InputError(f"{origin}: {what}; an array is written {{data: ..., dtype: float64}}")
        dtype = obj.get("dtype")
        if isinstance(dtype, str) and dtype.startswith("complex"):
            raise InputError(
                f"{origin}: dtype {dtype} is complex; jac differentiates real arrays only: use one of "
                f"{', '.join(FLOAT_DTYPES)}"
            )
        if dtype is not None and dtype not in FLOAT_DTYPES + _INT_DTYPES:
            raise InputError(f"{origin}: unknown dtype {quoted(dtype)}; use one of {', '.join(FLOAT_DTYPES)}")
        data = _nested_to_array(obj["data"], origin)
        shape = obj.get("shape")
        if shape is not None:
            want = tuple(shape) if isinstance(shape, list) else (shape,)
            if data.size == 0 and math.prod(want) == 0 and all(isinstance(d, int) and d >= 0 for d in want):
                data = data.reshape(want)  # nested lists cannot spell (0, 3): the shape says it
            if want != data.shape:
                raise InputError(f"{origin}: data has shape {data.shape} but 'shape' says {want}")
    else:
        data = _nested_to_array(obj, origin)
    return Array(data, origin, name, dtype)


def _nested_to_array(obj: Any, origin: str) -> np.ndarray:
    shape: list[int] = []
    flat: list[Any] = []
    _walk(obj, 0, shape, flat, origin, [])
    bools = [isinstance(v, bool) for v in flat]
    if any(bools) and not all(bools):
        where = _where([int(i) for i in np.unravel_index(bools.index(True), shape)])
        raise InputError(
            f"{origin}: {str(flat[bools.index(True)]).lower()} at {where} in an array of numbers; "
            "write 1 or 0 (only an array of true and false alone is read as booleans)"
        )
    if all(bools) and flat:
        dtype = np.bool_
    elif all(isinstance(v, int) for v in flat) and flat:
        dtype = np.int64
    else:
        dtype = np.float64
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InputError(f"{origin}: an integer is too large for int64") from exc


def _walk(obj: Any, depth: int, shape: list[int], flat: list[Any], origin: str, path: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise InputError(f"{origin}: lists nested deeper than {MAX_DEPTH} levels; is the file right?")
    if isinstance(obj, (list, tuple)):
        if depth == len(shape) and not flat:
            shape.append(len(obj))
        if depth >= len(shape) or len(obj) != shape[depth]:
            raise InputError(
                f"{origin}: ragged nested list at {_where(path)}; every row must have the same "
                "length (for several arguments use a list of {data: ...} mappings or repeat the option)"
            )
        for i, item in enumerate(obj):
            _walk(item, depth + 1, shape, flat, origin, path + [i])
        return
    if depth != len(shape):
        raise InputError(
            f"{origin}: ragged nested list at {_where(path)}; a number stands where a list should"
        )
    flat.append(_number(obj, origin, path))


def _number(obj: Any, origin: str, path: list[int]) -> Any:
    if isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        try:
            value = float(obj)
        except ValueError:
            value = None
        if value is not None and not math.isfinite(value):
            return value  # "NaN", "Infinity": how JSON (jac's own output too) writes them
        if value is not None:
            raise InputError(
                f"{origin}: the quoted string {quoted(obj)} at {_where(path)} is not a number; write "
                "numbers without quotes (only NaN, Infinity and -Infinity may be quoted)"
            )
    kind = "a mapping" if isinstance(obj, dict) else "null" if obj is None else quoted(obj)
    raise InputError(f"{origin}: {kind} at {_where(path)} is not a number")


def _where(path: list[int]) -> str:
    return "".join(f"[{i}]" for i in path) or "the top level"
