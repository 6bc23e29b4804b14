"""A corpus of bad inputs, each built by the test itself, and the awkward inputs that must work.

The issue "Hardening" asks for at least 50 generated bad inputs (no binary blobs in the
repository), each asserting the contract of SPEC.md, "Errors and exit codes":

- the exit code (2 input, 3 the function raised, 130 interrupted);
- one line on stderr naming the culprit (file, option or FUNC) and how to fix it;
- no traceback, nothing on stdout;
- no output file created or changed: every case runs twice, with ``-o out.npz`` absent (it
  must stay absent, with no ``.out.npz.*.tmp`` left behind) and pre-created with known bytes
  and permissions (unchanged); the whole folder is snapshotted before and after;
- nothing executed: pickles and YAML ``!!python`` tags create a marker file if they ever run,
  and the user function of the input-error cases creates one if it is ever called.

``BAD`` is the table of bad inputs. ``test_bad_input`` runs them in-process; the few that only
a real process shows (a YAML "billion laughs" under a memory limit and a time bound, a closed
standard input) run as subprocesses. The second half is the "must work" group: big-endian,
Fortran-order and non-contiguous arrays, zero-size and 0-d arrays, NaN and infinity, integers
and booleans, and functions that print, each compared with torch.func called directly.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import pickle
import resource
import stat
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_clean_error, jac, write_module

OLD_BYTES = b"previous contents: must survive any failed jac run\n"
OLD_MODE = 0o640
CALLED = "CALLED_f"  # the input-error cases' function creates this if it is ever called

MODULE = f'''
import asyncio
import os
import sys

import torch

submodule = os  # a module, not a function


def f(x, *rest):
    open({CALLED!r}, "a").close()  # proof that the function ran
    return torch.sin(x)


def sin(x):
    return torch.sin(x)


def twice(x):
    return x * 2


def cube(x):
    return x ** 3


def total(x):
    return x.sum()


def mix(x):
    """Shape- and order-sensitive: any mix-up of layout changes the answer."""
    w = torch.arange(1, x.numel() + 1, dtype=x.dtype).reshape(x.shape)
    return (torch.sin(x) * w).cumsum(-1) if x.dim() else torch.sin(x) * 3


def mul(x, y):
    return x * y


def noisy(x):
    print("noise from the user function", flush=True)
    sys.stdout.write("more noise without a newline")
    return x * 2


class Cls:
    def __call__(self, x):
        return x * 2


NUMBER = 42


def gen(x):
    yield x * 2


async def coro(x):
    return x * 2


async def agen(x):
    yield x * 2


lam_float = lambda x: 1.5  # noqa: E731
lam_int_tensor = lambda x: (x * 10).long()  # noqa: E731
lam_bool_tensor = lambda x: x > 0  # noqa: E731
lam_list = lambda x: [1.0, 2.0]  # noqa: E731
lam_none = lambda x: None  # noqa: E731
lam_str = lambda x: "a string"  # noqa: E731
lam_ndarray = lambda x: x.detach().numpy() * 2  # noqa: E731


def exits(x):
    sys.exit(4)


def exits_zero(x):
    sys.exit(0)


def raises_system_exit(x):
    raise SystemExit("leaving now")


def interrupts(x):
    raise KeyboardInterrupt


class InterruptedBackward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise KeyboardInterrupt


def interrupts_in_backward(x):
    return InterruptedBackward.apply(x)


def factory_interrupts():
    raise KeyboardInterrupt
'''

# A FUNC module that Ctrl-C interrupts while it is being imported
INTERRUPTING_MODULE = "raise KeyboardInterrupt\n"
SYNTAX_ERROR_MODULE = "def f(x):\n    return x *\n"


# --- building bad bytes ----------------------------------------------------------------


class _Marker:
    """Unpickling this creates the file ``path`` (relative: the test's folder)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple, descr: str = "<f8", fortran: bool = False, version: int = 1) -> bytes:
    """A well-formed .npy header (as numpy writes it) declaring whatever the test likes."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}".encode("latin1")
    size_len = 2 if version == 1 else 4
    pad = 64 - (6 + 2 + size_len + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    length = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text


def raw_npy_header(text: bytes) -> bytes:
    """The magic and version 1.0, then ``text`` as the header, padded: for malformed headers."""
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def npz(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def evil_object_array(marker: str) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[0] = _Marker(marker)
    array[1] = 1.0
    return array


GOOD = np.array([0.5, -1.0, 2.0])  # float64, (3,)
GOOD_NPY = npy(GOOD)
GOOD_NPZ = npz({"x.npy": GOOD_NPY, "y.npy": npy(np.ones(3))}, zipfile.ZIP_DEFLATED)


def corrupt_crc(data: bytes) -> bytes:
    """Flip one byte of a stored member's data: the zip's CRC no longer matches."""
    buffer = bytearray(data)
    at = buffer.index(b"\x93NUMPY") + 128 + 3  # inside the array data, past the header
    buffer[at] ^= 0xFF
    return bytes(buffer)


def billion_laughs(key: str = "x") -> str:
    """Ten lines of YAML whose aliases expand into 2 * 10**9 numbers."""
    lines = ["a: &a [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"]
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
        previous = name
    lines.append(f"{key}: [*{previous}, *{previous}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, closed: bool = True) -> str:
    return "[" * depth + ("1.0" + "]" * depth if closed else "")


# --- the table -------------------------------------------------------------------------


@dataclass
class Bad:
    """One bad input: the files it needs, the jac arguments, what the one error line says."""

    args: list[str]
    code: int
    culprit: tuple[str, ...]  # exact fragments naming the file, option or FUNC at fault
    hint: tuple[str, ...] = ()  # the fix: at least one of these words (case-insensitive)
    files: dict[str, bytes | str] = field(default_factory=dict, repr=False)
    stdin: bytes | None = field(default=None, repr=False)
    markers: tuple[str, ...] = ()  # files the payload creates if it is ever executed
    absent: tuple[str, ...] = ()  # fragments the message must not contain (wrong advice)


def bad(
    id: str, args: list[str], code: int, culprit: tuple[str, ...], hint: tuple[str, ...] = (), **kw
) -> pytest.param:
    return pytest.param(Bad(args, code, culprit, hint, **kw), id=id)


P = ["jacrev", "corpus:f", "-p"]  # a bad primal
T = ["jvp", "corpus:f", "-p", "good.npy", "-t"]  # a bad tangent
U = ["vjp", "corpus:f", "-p", "good.npy", "-u"]  # a bad cotangent
X = ["-p", "[0.5, 1.0]"]  # a good primal for the FUNC cases

TRUNCATED = ("truncated", "corrupt", "complete", "re-save", "np.save")
NOT_NPY = ("np.save", "right file", "signature", "name it", "truncated", "corrupt")
PICKLE_HINT = ("np.save", "numeric", "never")
COMPLEX_HINT = ("real",)
NOT_A_NUMBER = ("number",)
RAGGED_HINT = ("same length", "row")
NESTED_HINT = ("nested", "deep")
TOO_BIG = ("memory", "too large", "too big", "absurd")
ABSURD = TOO_BIG + TRUNCATED  # refused as too big, or as not holding what it declares
BAD_HEADER = NOT_NPY + ("header",)
TENSOR_HINT = ("tensor",)
SYSEXIT_HINT = ("sys.exit", "SystemExit")
REFUSED_FUNC = ("plain function", "point", "instance", "callable", "construct")

SEVENTEEN = npy(np.arange(17.0))  # long enough to cut into a header and some data

# fmt: off
BAD = [
    # --- .npy files: empty, cut, garbage, malformed headers -----------------------------
    bad("npy-empty", P + ["empty.npy"], 2, ("--primals", "empty.npy"), ("empty",), files={"empty.npy": b""}),
    bad("npy-garbage-text", P + ["garbage.npy"], 2, ("--primals", "garbage.npy"), NOT_NPY,
        files={"garbage.npy": b"this is not an npy file, just some words\n"}, absent=("pickle",)),
    bad("npy-garbage-binary", P + ["noise.npy"], 2, ("--primals", "noise.npy"), NOT_NPY,
        files={"noise.npy": bytes(range(7, 256)) * 3}, absent=("pickle",)),
    bad("npy-truncated-data", P + ["cut.npy"], 2, ("--primals", "cut.npy"), TRUNCATED,
        files={"cut.npy": SEVENTEEN[:-20]}),
    bad("npy-truncated-header", P + ["cuthdr.npy"], 2, ("--primals", "cuthdr.npy"), BAD_HEADER,
        files={"cuthdr.npy": SEVENTEEN[:30]}),
    bad("npy-magic-only", P + ["magic.npy"], 2, ("--primals", "magic.npy"), BAD_HEADER,
        files={"magic.npy": b"\x93NUMPY"}),
    bad("npy-header-not-a-dict", P + ["hdr.npy"], 2, ("--primals", "hdr.npy"), ("header",),
        files={"hdr.npy": raw_npy_header(b"this is no header") + b"\0" * 8}),
    bad("npy-header-missing-key", P + ["nokey.npy"], 2, ("--primals", "nokey.npy"), ("header",),
        files={"nokey.npy": raw_npy_header(b"{'descr': '<f8', 'shape': (1,), }") + b"\0" * 8}),
    bad("npy-header-bad-descr", P + ["descr.npy"], 2, ("--primals", "descr.npy"), ("header", "dtype"),
        files={"descr.npy": npy_header((1,), descr="<q99") + b"\0" * 8}),
    bad("npy-header-negative-shape", P + ["neg.npy"], 2, ("--primals", "neg.npy"), ("header", "shape"),
        files={"neg.npy": npy_header((-1,)) + b"\0" * 16}),
    bad("npy-header-length-overflows", P + ["longhdr.npy"], 2, ("--primals", "longhdr.npy"), BAD_HEADER,
        files={"longhdr.npy": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f8'"}),
    bad("npy-version-9", P + ["v9.npy"], 2, ("--primals", "v9.npy"), ("version", "header", "np.save"),
        files={"v9.npy": b"\x93NUMPY\x09\x00" + GOOD_NPY[8:]}),
    # --- .npy files declaring absurd shapes: refused before any allocation ----------------
    bad("npy-shape-1e12", P + ["huge.npy"], 2, ("--primals", "huge.npy"), ABSURD,
        files={"huge.npy": npy_header((10**12,)) + b"\0" * 16}),
    bad("npy-shape-2to40-squared", P + ["huge2.npy"], 2, ("--primals", "huge2.npy"), ABSURD,
        files={"huge2.npy": npy_header((2**40, 2**40)) + b"\0" * 16}),
    bad("npy-shape-1GiB-holding-16-bytes", P + ["lie.npy"], 2, ("--primals", "lie.npy"), TRUNCATED,
        files={"lie.npy": npy_header((2**27,)) + b"\0" * 16}),
    bad("npy-shape-1e12-version-2", P + ["huge3.npy"], 2, ("--primals", "huge3.npy"), ABSURD,
        files={"huge3.npy": npy_header((10**6, 10**6), version=2) + b"\0" * 16}),
    bad("npy-shape-1e12-stdin", P + ["-"], 2, ("--primals", "standard input"), ABSURD,
        stdin=npy_header((10**12,)) + b"\0" * 16),
    bad("npy-shape-1e12-tangent", T + ["huge.npy"], 2, ("--tangents", "huge.npy"), ABSURD,
        files={"huge.npy": npy_header((10**12,)) + b"\0" * 16}),
    # --- pickles and non-numeric dtypes: refused, never executed ----------------------------
    bad("npy-object-dtype-pickle", P + ["evil.npy"], 2, ("--primals", "evil.npy"), PICKLE_HINT,
        files={"evil.npy": npy(evil_object_array("MARKER_npy"), allow_pickle=True)}, markers=("MARKER_npy",)),
    bad("npy-raw-pickle", P + ["raw.npy"], 2, ("--primals", "raw.npy", "pickle"), PICKLE_HINT,
        files={"raw.npy": pickle.dumps(_Marker("MARKER_raw_npy"))}, markers=("MARKER_raw_npy",)),
    bad("npy-raw-pickle-protocol-0", P + ["raw0.npy"], 2, ("--primals", "raw0.npy"), PICKLE_HINT + NOT_NPY,
        files={"raw0.npy": pickle.dumps(_Marker("MARKER_raw0"), protocol=0)}, markers=("MARKER_raw0",)),
    bad("npy-object-dtype-tangent", T + ["evil_t.npy"], 2, ("--tangents", "evil_t.npy"), PICKLE_HINT,
        files={"evil_t.npy": npy(evil_object_array("MARKER_t"), allow_pickle=True)}, markers=("MARKER_t",)),
    bad("npy-strings", P + ["strs.npy"], 2, ("--primals", "strs.npy"), ("numeric",),
        files={"strs.npy": npy(np.array(["a", "b"]))}),
    bad("npy-structured", P + ["rec.npy"], 2, ("--primals", "rec.npy"), ("numeric",),
        files={"rec.npy": npy(np.zeros(2, dtype=[("a", "<f8"), ("b", "<f8")]))}),
    bad("npy-datetime", P + ["dates.npy"], 2, ("--primals", "dates.npy"), ("numeric",),
        files={"dates.npy": npy(np.array(["2024-01-01"], dtype="datetime64[D]"))}),
    # --- complex arrays: refused with a clear message ------------------------------------------
    bad("npy-complex64", P + ["c64.npy"], 2, ("--primals", "c64.npy", "complex"), COMPLEX_HINT,
        files={"c64.npy": npy(np.ones(3, np.complex64))}),
    bad("npy-complex128-big-endian", P + ["c128.npy"], 2, ("--primals", "c128.npy", "complex"), COMPLEX_HINT,
        files={"c128.npy": npy(np.ones((2, 2), ">c16"))}),
    bad("npy-complex-tangent", T + ["ct.npy"], 2, ("--tangents", "ct.npy", "complex"), COMPLEX_HINT,
        files={"ct.npy": npy(np.ones(3, np.complex128))}),
    bad("npy-complex-cotangent", U + ["cu.npy"], 2, ("--cotangents", "cu.npy", "complex"), COMPLEX_HINT,
        files={"cu.npy": npy(np.ones(3, np.complex128))}),
    bad("npy-complex-stdin", P + ["-"], 2, ("--primals", "standard input", "complex"), COMPLEX_HINT,
        stdin=npy(np.ones(3, np.complex64))),
    bad("npz-complex-member", P + ["cz.npz"], 2, ("--primals", "cz.npz", "[z]", "complex"), COMPLEX_HINT,
        files={"cz.npz": npz({"x.npy": GOOD_NPY, "z.npy": npy(np.ones(3, np.complex64))})}),
    bad("yaml-complex-dtype", P + ["c.yaml"], 2, ("--primals", "c.yaml", "complex64"), ("float32",),
        files={"c.yaml": "{data: [1.0, 2.0], dtype: complex64}\n"}),
    bad("literal-complex-number", P + ["[1+2j, 3.0]"], 2, ("--primals", "1+2j"), NOT_A_NUMBER),
    # --- .npz files ---------------------------------------------------------------------------
    bad("npz-empty", P + ["empty.npz"], 2, ("--primals", "empty.npz"), ("empty",), files={"empty.npz": b""}),
    bad("npz-garbage", P + ["garbage.npz"], 2, ("--primals", "garbage.npz"), NOT_NPY,
        files={"garbage.npz": b"hello, I am not a zip archive\n" * 4}, absent=("pickle",)),
    bad("npz-truncated", P + ["cut.npz"], 2, ("--primals", "cut.npz"), TRUNCATED,
        files={"cut.npz": GOOD_NPZ[: len(GOOD_NPZ) * 2 // 3]}),
    bad("npz-truncated-stdin", P + ["-"], 2, ("--primals", "standard input"), TRUNCATED,
        stdin=GOOD_NPZ[: len(GOOD_NPZ) * 2 // 3]),
    bad("npz-no-members", P + ["none.npz"], 2, ("--primals", "none.npz"), ("no arrays",),
        files={"none.npz": npz({})}),
    bad("npz-member-not-npy", P + ["txt.npz"], 2, ("--primals", "txt.npz"), ("np.savez",),
        files={"txt.npz": npz({"notes.txt": b"a zip, but no array inside"})}),
    bad("npz-member-garbage", P + ["junk.npz"], 2, ("--primals", "junk.npz", "[a]"),
        BAD_HEADER + ("np.savez",),
        files={"junk.npz": npz({"a.npy": b"\x93NUMPY garbage after the magic"})}),
    bad("npz-member-truncated", P + ["cutm.npz"], 2, ("--primals", "cutm.npz", "[a]"), TRUNCATED,
        files={"cutm.npz": npz({"a.npy": SEVENTEEN[:-20]})}),
    bad("npz-member-bad-crc", P + ["crc.npz"], 2, ("--primals", "crc.npz"), TRUNCATED + ("crc",),
        files={"crc.npz": corrupt_crc(npz({"a.npy": SEVENTEEN}))}),
    bad("npz-member-object-pickle", P + ["evil.npz"], 2, ("--primals", "evil.npz"), PICKLE_HINT,
        files={"evil.npz": npz({"a.npy": npy(evil_object_array("MARKER_npz"), allow_pickle=True)})},
        markers=("MARKER_npz",)),
    bad("npz-raw-pickle", P + ["raw.npz"], 2, ("--primals", "raw.npz", "pickle"), PICKLE_HINT,
        files={"raw.npz": pickle.dumps(_Marker("MARKER_raw_npz"))}, markers=("MARKER_raw_npz",)),
    bad("npz-member-shape-1e12", P + ["hugez.npz"], 2, ("--primals", "hugez.npz"), ABSURD,
        files={"hugez.npz": npz({"a.npy": npy_header((10**12,)) + b"\0" * 16}, zipfile.ZIP_DEFLATED)}),
    bad("npz-member-shape-2to40-squared", P + ["hugez2.npz"], 2, ("--primals", "hugez2.npz"), ABSURD,
        files={"hugez2.npz": npz({"a.npy": npy_header((2**40, 2**40)) + b"\0" * 16})}),
    # --- standard input ------------------------------------------------------------------------
    bad("stdin-empty", P + ["-"], 2, ("--primals", "standard input", "empty"), ("pipe",), stdin=b""),
    bad("stdin-binary-garbage", P + ["-"], 2, ("--primals", "standard input"), ("npy",),
        stdin=b"\xff\xfe\x00\x01 neither npy, npz nor UTF-8"),
    bad("stdin-truncated-npy", P + ["-"], 2, ("--primals", "standard input"), TRUNCATED,
        stdin=SEVENTEEN[:-20]),
    bad("stdin-raw-pickle", P + ["-"], 2, ("--primals", "standard input"), PICKLE_HINT + NOT_NPY + ("npy",),
        stdin=pickle.dumps(_Marker("MARKER_stdin_pickle")), markers=("MARKER_stdin_pickle",)),
    bad("stdin-object-npy", P + ["-"], 2, ("--primals", "standard input"), PICKLE_HINT,
        stdin=npy(evil_object_array("MARKER_stdin_npy"), allow_pickle=True), markers=("MARKER_stdin_npy",)),
    bad("stdin-yaml-tag", P + ["-"], 2, ("--primals", "standard input", "tag"), ("plain",),
        stdin=b'!!python/object/apply:os.system ["touch MARKER_stdin_yaml"]\n',
        markers=("MARKER_stdin_yaml",)),
    # --- YAML and JSON: code tags, aliases, nesting, ragged lists, wrong types -----------------
    bad("yaml-tag-os-system", P + ["sys.yaml"], 2, ("--primals", "sys.yaml", "tag"), ("plain",),
        files={"sys.yaml": '!!python/object/apply:os.system ["touch MARKER_yaml_system"]\n'},
        markers=("MARKER_yaml_system",)),
    bad("yaml-tag-open", P + ["open.yml"], 2, ("--primals", "open.yml", "tag"), ("plain",),
        files={"open.yml": '!!python/object/apply:builtins.open ["MARKER_yaml_open", "w"]\n'},
        markers=("MARKER_yaml_open",)),
    bad("yaml-tag-nested-in-data", P + ["inner.yaml"], 2, ("--primals", "inner.yaml", "tag"), ("plain",),
        files={"inner.yaml": 'data: [1.0, !!python/object/apply:builtins.open ["MARKER_inner", "w"]]\n'},
        markers=("MARKER_inner",)),
    bad("yaml-tag-python-name", P + ["name.yaml"], 2, ("--primals", "name.yaml", "tag"), ("plain",),
        files={"name.yaml": "!!python/name:os.system\n"}),
    bad("yaml-tag-python-module", P + ["mod.yaml"], 2, ("--primals", "mod.yaml", "tag"), ("plain",),
        files={"mod.yaml": "!!python/module:os\n"}),
    bad("yaml-tag-literal", P + ['!!python/object/apply:os.system ["touch MARKER_literal"]'], 2,
        ("--primals", "tag"), ("plain",), markers=("MARKER_literal",)),
    bad("yaml-deep-nesting-unclosed", P + ["deep.yaml"], 2, ("--primals", "deep.yaml"), NESTED_HINT,
        files={"deep.yaml": nested(100_000, closed=False)}),
    bad("yaml-deep-nesting", P + ["deep2.yaml"], 2, ("--primals", "deep2.yaml"), NESTED_HINT,
        files={"deep2.yaml": nested(100_000)}),
    bad("json-deep-nesting", P + ["deep.json"], 2, ("--primals", "deep.json"), NESTED_HINT,
        files={"deep.json": nested(100_000)}),
    bad("literal-deep-nesting", P + [nested(100_000)], 2, ("--primals",), NESTED_HINT),
    bad("yaml-nesting-beyond-torch-dims", P + ["d100.yaml"], 2, ("--primals", "d100.yaml"), NESTED_HINT,
        files={"d100.yaml": nested(100)}),
    bad("yaml-ragged", P + ["ragged.yaml"], 2, ("--primals", "ragged.yaml", "ragged"), RAGGED_HINT,
        files={"ragged.yaml": "[[1.0, 2.0], [3.0]]\n"}),
    bad("yaml-ragged-number-then-list", P + ["ragged2.yaml"], 2, ("--primals", "ragged2.yaml", "[1]"),
        ("ragged", "list"), files={"ragged2.yaml": "[1.0, [2.0, 3.0]]\n"}),
    bad("json-ragged", P + ["ragged.json"], 2, ("--primals", "ragged.json", "ragged"), RAGGED_HINT,
        files={"ragged.json": '[[1.0], [2.0, 3.0], [4.0]]'}),
    bad("yaml-string", P + ["word.yaml"], 2, ("--primals", "word.yaml", "hello"), NOT_A_NUMBER,
        files={"word.yaml": "hello\n"}),
    bad("yaml-string-element", P + ["strs.yaml"], 2, ("--primals", "strs.yaml", "[1]"), NOT_A_NUMBER,
        files={"strs.yaml": "[1.0, abc, 3.0]\n"}),
    bad("json-string-element", P + ["strs.json"], 2, ("--primals", "strs.json", "[0][1]"), NOT_A_NUMBER,
        files={"strs.json": '[[1.0, "x"]]'}),
    bad("yaml-null-element", P + ["nulls.yaml"], 2, ("--primals", "nulls.yaml", "null"), NOT_A_NUMBER,
        files={"nulls.yaml": "[1.0, null]\n"}),
    bad("yaml-mapping-element", P + ["maps.yaml"], 2, ("--primals", "maps.yaml", "mapping"), NOT_A_NUMBER,
        files={"maps.yaml": "[1.0, {a: 1}]\n"}),
    bad("yaml-timestamp", P + ["when.yaml"], 2, ("--primals", "when.yaml"), NOT_A_NUMBER,
        files={"when.yaml": "[2024-01-01]\n"}),
    bad("yaml-set", P + ["set.yaml"], 2, ("--primals", "set.yaml"), NOT_A_NUMBER,
        files={"set.yaml": "!!set {1, 2}\n"}),
    bad("yaml-empty-file", P + ["empty.yaml"], 2, ("--primals", "empty.yaml", "empty"), ("number", "list"),
        files={"empty.yaml": ""}),
    bad("yaml-unknown-key", P + ["keys.yaml"], 2, ("--primals", "keys.yaml", "'values'"), ("data:",),
        files={"keys.yaml": "{data: [1.0], values: [2.0]}\n"}),
    bad("yaml-shape-mismatch", P + ["shape.yaml"], 2, ("--primals", "shape.yaml", "(2,)", "(3,)"), ("shape",),
        files={"shape.yaml": "{data: [1.0, 2.0], shape: [3]}\n"}),
    bad("yaml-int-too-large", P + ["big.yaml"], 2, ("--primals", "big.yaml", "int64"), ("too large",),
        files={"big.yaml": f"[1, {10**30}]\n"}),
    bad("yaml-syntax", P + ["syntax.yaml"], 2, ("--primals", "syntax.yaml", "line 2"), ("YAML",),
        files={"syntax.yaml": "a: [1, 2\nb: 3\n"}),
    bad("json-syntax", P + ["syntax.json"], 2, ("--primals", "syntax.json", "line 1"), ("JSON",),
        files={"syntax.json": '{"a": [1, 2'}),
    bad("yaml-not-utf8", P + ["latin.yaml"], 2, ("--primals", "latin.yaml"), ("UTF-8",),
        files={"latin.yaml": "[1.0]  # caf\xe9\n".encode("latin-1")}),
    # --- FUNC: not something jac can differentiate (exit 2, before any data is read) -----------
    bad("func-is-a-module", ["jacrev", "corpus:submodule"] + X, 2, ("corpus:submodule", "module"),
        REFUSED_FUNC),
    bad("func-is-a-class", ["jacrev", "corpus:Cls"] + X, 2, ("corpus:Cls", "class"), ("corpus:Cls()",)),
    bad("func-is-not-callable", ["jacrev", "corpus:NUMBER"] + X, 2, ("corpus:NUMBER", "int"), REFUSED_FUNC),
    bad("func-is-a-generator-function", ["jacrev", "corpus:gen"] + X, 2, ("corpus:gen", "generator"),
        REFUSED_FUNC),
    bad("func-is-a-coroutine-function", ["jacrev", "corpus:coro"] + X, 2, ("corpus:coro", "async"),
        REFUSED_FUNC),
    bad("func-is-an-async-generator", ["jacrev", "corpus:agen"] + X, 2, ("corpus:agen",), REFUSED_FUNC),
    bad("func-file-is-not-python", ["jacrev", "./notes.txt:f"] + X, 2, ("notes.txt",), (".py",),
        files={"notes.txt": "def f(x):\n    return x\n"}),
    # --- the function returns what has no derivative (exit 3) ----------------------------------
    bad("returns-python-float", ["jacrev", "corpus:lam_float"] + X, 3, ("output", "float"), TENSOR_HINT),
    bad("returns-int-tensor", ["vjp", "corpus:lam_int_tensor", "-u", "ones"] + X, 3, ("output", "int64"),
        ("floating",)),
    bad("returns-bool-tensor", ["jacfwd", "corpus:lam_bool_tensor"] + X, 3, ("output", "bool"),
        ("floating",)),
    bad("returns-list-of-floats", ["jvp", "corpus:lam_list", "-t", "ones"] + X, 3, ("output.0", "float"),
        TENSOR_HINT),
    bad("returns-none", ["jacrev", "corpus:lam_none"] + X, 3, ("output", "None"), TENSOR_HINT),
    bad("returns-str", ["hessian", "corpus:lam_str", "-p", "0.5"], 3, ("output", "str"), TENSOR_HINT),
    bad("returns-ndarray", ["jacrev", "corpus:lam_ndarray"] + X, 3, ("ndarray",), TENSOR_HINT),
    bad("module-syntax-error", ["jacrev", "broken:f"] + X, 3, ("broken", "SyntaxError"), (),
        files={"broken.py": SYNTAX_ERROR_MODULE}),
    # --- the function exits or is interrupted ---------------------------------------------------
    bad("function-sys-exit", ["jacrev", "corpus:exits"] + X, 3, SYSEXIT_HINT[:1] + ("4",), ()),
    bad("function-sys-exit-0", ["jvp", "corpus:exits_zero", "-t", "ones"] + X, 3, ("sys.exit(0)",), ()),
    bad("function-raises-system-exit", ["vjp", "corpus:raises_system_exit", "-u", "ones"] + X, 3,
        ("sys.exit", "leaving now"), ()),
    bad("function-keyboard-interrupt", ["jacrev", "corpus:interrupts"] + X, 130, ("interrupted",), ()),
    bad("backward-keyboard-interrupt", ["vjp", "corpus:interrupts_in_backward", "-u", "ones"] + X, 130,
        ("interrupted",), ()),
    bad("import-keyboard-interrupt", ["jacrev", "ctrlc:f"] + X, 130, ("interrupted",), (),
        files={"ctrlc.py": INTERRUPTING_MODULE}),
    bad("factory-keyboard-interrupt", ["jacrev", "corpus:factory_interrupts()"] + X, 130,
        ("interrupted",), ()),
]
# fmt: on


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (bytecode caches aside) with its bytes and mode, or '<dir>'."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        state[rel.as_posix()] = (
            "<dir>" if path.is_dir() else (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        )
    return state


def assert_one_line_error(run, case: Bad) -> None:
    """The exit code, one line on stderr naming the culprit and a fix, no traceback, no stdout."""
    assert run.code == case.code, run
    assert "Traceback" not in run.stderr, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run
    line = lines[0]
    assert len(line) < 1000, f"the one line is {len(line)} characters long: {line[:300]!r}..."
    for fragment in case.culprit:
        assert fragment in line, (fragment, run)
    if case.hint:
        assert any(word.lower() in line.lower() for word in case.hint), (case.hint, run)
    for fragment in case.absent:
        assert fragment not in line, (fragment, run)
    assert run.stdout_bytes == b"", run


@pytest.fixture
def corpus(workdir: Path) -> Path:
    write_module(workdir, "corpus", MODULE)
    (workdir / "good.npy").write_bytes(GOOD_NPY)
    for name in ("broken", "ctrlc"):
        sys.modules.pop(name, None)
    return workdir


def _variants():
    for param in BAD:
        for variant in ("absent", "existing"):
            yield pytest.param(param.values[0], variant, id=f"{param.id}-{variant}")


def test_the_corpus_is_large_enough():
    assert len(BAD) >= 55
    ids = [param.id for param in BAD]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("case", "variant"), list(_variants()))
def test_bad_input(corpus: Path, case: Bad, variant: str):
    for name, content in case.files.items():
        path = corpus / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    out = corpus / "out.npz"
    if variant == "existing":
        out.write_bytes(OLD_BYTES)
        out.chmod(OLD_MODE)
    before = snapshot(corpus)

    run = jac(*case.args, "-o", "out.npz", "--no-timings", input=case.stdin)

    assert_one_line_error(run, case)
    for marker in case.markers + ((CALLED,) if case.code == 2 else ()):
        assert not (corpus / marker).exists(), f"{marker} exists: jac executed what it must not"
    if variant == "existing":
        assert out.read_bytes() == OLD_BYTES, "out.npz was changed"
        assert stat.S_IMODE(out.stat().st_mode) == OLD_MODE, "out.npz lost its permissions"
    else:
        assert not out.exists(), "out.npz was created"
    assert not list(corpus.glob(".out.npz.*")), "a temporary file was left behind"
    assert snapshot(corpus) == before, "the folder changed"


MARKED = [param for param in BAD if param.values[0].markers]


@pytest.mark.parametrize("case", [param.values[0] for param in MARKED], ids=[param.id for param in MARKED])
def test_the_payloads_are_live(tmp_path: Path, monkeypatch, case: Bad):
    """Guard for the corpus: each payload does create its marker when loaded carelessly."""
    monkeypatch.chdir(tmp_path)
    payloads = [c.encode() if isinstance(c, str) else c for c in case.files.values()]
    if case.stdin is not None:
        payloads.append(case.stdin)
    if case.args[-1].startswith("!!python"):
        payloads.append(case.args[-1].encode())
    for data in payloads:
        if data.startswith(b"\x93NUMPY"):
            np.load(io.BytesIO(data), allow_pickle=True)
        elif data.startswith(b"PK"):
            with np.load(io.BytesIO(data), allow_pickle=True) as archive:
                [archive[key] for key in archive.files]
        elif data.startswith(b"\x80") or data.startswith(b"c"):
            pickle.loads(data)
        else:
            yaml.unsafe_load(data.decode())
    for marker in case.markers:
        assert (tmp_path / marker).exists(), f"test bug: the payload does not create {marker}"


# --- what only a real process shows ----------------------------------------------------------


def _limit_memory(gib: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (gib * 2**30, gib * 2**30))

    return apply


def _process(args: list[str], cwd: Path, stdin=None, preexec_fn=None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "jaccli", *args],
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        preexec_fn=preexec_fn,
        timeout=timeout,
    )


def _as_run(proc: subprocess.CompletedProcess):
    from conftest import Run

    return Run(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


# A hang detector, not a timing assertion (this machine is shared and noisy): expanding
# 2 * 10**9 numbers would take far longer, and the 3 GiB cap would stop it first anyway.
LAUGHS_SECONDS = 120


@pytest.mark.parametrize(
    ("key", "variant"), [("x", "absent"), ("data", "existing")], ids=["mapping-absent", "data-existing"]
)
def test_yaml_billion_laughs_is_refused_quickly_with_bounded_memory(corpus: Path, key: str, variant: str):
    """Ten lines of aliases that expand into 2e9 numbers: refused in seconds, under a 3 GiB cap."""
    (corpus / "lol.yaml").write_text(billion_laughs(key))
    out = corpus / "out.npz"
    if variant == "existing":
        out.write_bytes(OLD_BYTES)
    before = snapshot(corpus)
    try:
        proc = _process(
            ["jacrev", "corpus:f", "-p", "lol.yaml", "-o", "out.npz", "--no-timings"],
            corpus,
            preexec_fn=_limit_memory(3),
            timeout=LAUGHS_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a billion-laughs YAML file was still being read after {LAUGHS_SECONDS} s")
    run = _as_run(proc)
    assert_one_line_error(run, Bad([], 2, ("--primals", "lol.yaml"), ("alias", "expand", "anchor")))
    assert "MemoryError" not in run.stderr and "memory" not in run.stderr.lower(), run
    assert not (corpus / CALLED).exists()
    assert snapshot(corpus) == before


def test_closed_stdin_is_an_input_error(corpus: Path):
    """'-p -' with standard input closed (jac ... <&-): one line, exit 2, nothing written."""
    before = snapshot(corpus)
    proc = _process(
        ["jacrev", "corpus:f", "-p", "-", "-o", "out.npz", "--no-timings"],
        corpus,
        preexec_fn=lambda: os.close(0),
    )
    run = _as_run(proc)
    assert_one_line_error(run, Bad([], 2, ("--primals", "standard input"), ("closed", "pipe")))
    assert not (corpus / "out.npz").exists()
    assert snapshot(corpus) == before


# ===========================================================================================
# Must work: awkward but valid inputs give torch.func's answer
# ===========================================================================================


def results(*args: str, input: bytes | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Run jac asking for .npz on stdout; the results and stderr."""
    run = jac(*args, "--format", "npz", "--no-timings", input=input)
    assert run.code == 0, run
    assert "Traceback" not in run.stderr, run
    return run.npz(), run.stderr


def close(actual: np.ndarray, expected, dtype=None) -> None:
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if dtype is not None:
        assert actual.dtype == np.dtype(dtype), actual.dtype
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def mix(x: torch.Tensor) -> torch.Tensor:  # as corpus:mix
    w = torch.arange(1, x.numel() + 1, dtype=x.dtype).reshape(x.shape)
    return (torch.sin(x) * w).cumsum(-1) if x.dim() else torch.sin(x) * 3


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))).clone()


A = np.arange(1.0, 7.0).reshape(3, 2) / 7  # (3, 2) float64


def save(path: Path, array: np.ndarray) -> str:
    path.write_bytes(npy(array))
    return path.name


def test_big_endian_npy_works(corpus: Path):
    name = save(corpus / "be.npy", A.astype(">f8"))
    assert np.load(corpus / name).dtype.byteorder == ">"
    res, _ = results("jacrev", "corpus:mix", "-p", name)
    close(res["jacobian"], torch.func.jacrev(mix)(torch.tensor(A)), "float64")


def test_big_endian_float32_tangent_and_cotangent_work(corpus: Path):
    x, v = A.astype(">f4"), (A * 3 + 1).astype(">f4")
    save(corpus / "x.npy", x)
    save(corpus / "v.npy", v)
    res, _ = results("jvp", "corpus:mix", "-p", "x.npy", "-t", "v.npy")
    out, jv = torch.func.jvp(mix, (as_tensor(x),), (as_tensor(v),))
    close(res["output"], out, "float32")
    close(res["jvp"], jv, "float32")
    save(corpus / "u.npy", (A - 1).astype(">f4"))
    res, _ = results("vjp", "corpus:mix", "-p", "x.npy", "-u", "u.npy")
    _, pullback = torch.func.vjp(mix, as_tensor(x))
    close(res["vjp.0"], pullback(as_tensor((A - 1).astype("<f4")))[0], "float32")


def test_fortran_order_npy_works(corpus: Path):
    fortran = np.asfortranarray(A)
    name = save(corpus / "f.npy", fortran)
    with open(corpus / name, "rb") as fh:  # the file really is stored column-major
        assert np.lib.format.read_magic(fh) == (1, 0)
        _, fortran_order, _ = np.lib.format.read_array_header_1_0(fh)
    assert fortran_order
    res, _ = results("jacfwd", "corpus:mix", "-p", name)
    close(res["jacobian"], torch.func.jacfwd(mix)(torch.tensor(A)), "float64")


def test_big_endian_fortran_order_hand_written_header_works(corpus: Path):
    """A header written by hand: '>f4', fortran_order True, shape (2, 3), data column-major."""
    data = (np.arange(6, dtype=np.float32) / 5).reshape(2, 3)
    body = data.astype(">f4").tobytes(order="F")
    (corpus / "bef.npy").write_bytes(npy_header((2, 3), descr=">f4", fortran=True) + body)
    np.testing.assert_array_equal(np.load(corpus / "bef.npy"), data)  # the file is what we think
    res, _ = results("jacrev", "corpus:mix", "-p", "bef.npy")
    close(res["jacobian"], torch.func.jacrev(mix)(torch.tensor(data)), "float32")


def test_npz_with_big_endian_and_fortran_members_works(corpus: Path):
    x, y = A.astype(">f8"), np.asfortranarray(A + 1)
    np.savez(corpus / "xy.npz", x=x, y=y)
    res, _ = results("jacrev", "corpus:mul", "-p", "xy.npz", "--argnums", "0,1")
    expected = torch.func.jacrev(lambda a, b: a * b, argnums=(0, 1))(torch.tensor(A), torch.tensor(A + 1))
    close(res["jacobian.0"], expected[0], "float64")
    close(res["jacobian.1"], expected[1], "float64")


NONCONTIGUOUS = {
    "numpy-column-slice": lambda: (np.arange(1.0, 13.0).reshape(3, 4) / 9)[:, ::2],
    "numpy-reversed": lambda: (np.arange(1.0, 6.0) / 5)[::-1],
    "numpy-transposed": lambda: A.T,
    "numpy-big-endian-slice": lambda: (np.arange(1.0, 13.0).reshape(3, 4) / 4).astype(">f8")[::2, 1:],
    "torch-transposed": lambda: torch.tensor(A).T,
    "torch-column-slice": lambda: (torch.arange(1.0, 13.0, dtype=torch.float64).reshape(3, 4) / 9)[:, 1::2],
    "torch-expanded-stride-0": lambda: torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64).expand(2, 3),
}


@pytest.mark.parametrize("make", NONCONTIGUOUS.values(), ids=list(NONCONTIGUOUS))
def test_non_contiguous_arrays_work_through_the_library(make):
    from jaccli import Request, run

    view = make()
    assert not (view.flags["C_CONTIGUOUS"] if isinstance(view, np.ndarray) else view.is_contiguous())
    reference = as_tensor(view) if isinstance(view, np.ndarray) else view.clone()
    expected = torch.func.jacrev(mix)(reference)
    outcome = run(Request("jacrev", mix, primals=[view], repeat=0))
    close(outcome.results["jacobian"], expected)
    outcome = run(Request("jvp", mix, primals=[view], tangents=[view], repeat=0))
    out, jv = torch.func.jvp(mix, (reference,), (reference,))
    close(outcome.results["output"], out)
    close(outcome.results["jvp"], jv)


# --- zero-size and 0-d arrays ------------------------------------------------------------------


def test_zero_size_jacobians_have_torch_shapes(corpus: Path):
    save(corpus / "empty.npy", np.zeros((0,)))
    res, _ = results("jacrev", "corpus:sin", "-p", "empty.npy")
    close(res["jacobian"], torch.func.jacrev(torch.sin)(torch.zeros(0, dtype=torch.float64)))
    assert res["jacobian"].shape == (0, 0)
    save(corpus / "e30.npy", np.zeros((3, 0), np.float32))
    res, _ = results("jacfwd", "corpus:sin", "-p", "e30.npy")
    assert res["jacobian"].shape == (3, 0, 3, 0)
    res, _ = results("jacrev", "corpus:total", "-p", "empty.npy")  # sum of nothing: a 0-d output
    close(res["jacobian"], torch.func.jacrev(torch.sum)(torch.zeros(0, dtype=torch.float64)))
    assert res["jacobian"].shape == (0,)


def test_zero_size_yaml_literal_jvp_and_vjp(corpus: Path):
    res, _ = results("jvp", "corpus:twice", "-p", "[]", "-t", "zeros")
    assert res["output"].shape == (0,) and res["jvp"].shape == (0,)
    res, _ = results("vjp", "corpus:twice", "-p", "[[], []]", "-u", "ones")
    assert res["output"].shape == (2, 0) and res["vjp.0"].shape == (2, 0)
    res, _ = results("vjp", "corpus:total", "-p", "[]")  # one-element (0-d) output: u = 1
    close(res["output"], np.float32(0.0))
    close(res["vjp.0"], np.zeros(0, np.float32))


def test_zero_d_arrays_work(corpus: Path):
    save(corpus / "s.npy", np.array(0.75))
    x = torch.tensor(0.75, dtype=torch.float64)
    res, _ = results("jacrev", "corpus:sin", "-p", "s.npy")
    close(res["jacobian"], torch.func.jacrev(torch.sin)(x), "float64")
    res, _ = results("jvp", "corpus:sin", "-p", "s.npy")  # one element: v = 1
    close(res["jvp"], torch.cos(x))
    res, _ = results("hessian", "corpus:cube", "-p", "s.npy")
    close(res["hessian"], torch.func.hessian(lambda t: t**3)(x))
    res, _ = results("vjp", "corpus:mix", "-p", "0.5")  # a YAML scalar literal: float32, 0-d
    _, pullback = torch.func.vjp(mix, torch.tensor(0.5))
    close(res["vjp.0"], pullback(torch.tensor(1.0))[0], "float32")


# --- NaN and infinity ---------------------------------------------------------------------------


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_nan_and_inf_inputs_work_and_warn_on_the_results_that_hold_them(corpus: Path):
    x = np.array([np.nan, np.inf, -np.inf, 1.0])
    save(corpus / "nan.npy", x)
    res, stderr = results("vjp", "corpus:twice", "-p", "nan.npy", "-u", "ones")
    close(res["output"], 2 * x)
    close(res["vjp.0"], np.full(4, 2.0))  # the gradient of 2x is finite everywhere
    warnings = _warnings(stderr)
    assert len(warnings) == 1 and "output" in warnings[0], stderr
    assert not any("vjp.0" in line for line in warnings), stderr


def test_finite_results_from_nan_inputs_give_no_warning(corpus: Path):
    res, stderr = results("jacrev", "corpus:twice", "-p", "[.nan, 1.0]")
    close(res["jacobian"], 2 * np.eye(2))
    assert _warnings(stderr) == [], stderr


def test_inf_input_gives_nan_jacobian_and_a_warning_naming_it(corpus: Path):
    res, stderr = results("jacrev", "corpus:sin", "-p", "[inf, 0.0]", "--dtype", "float64")
    expected = torch.func.jacrev(torch.sin)(torch.tensor([math.inf, 0.0], dtype=torch.float64))
    close(res["jacobian"], expected)
    assert np.isnan(res["jacobian"][0, 0])
    assert any("jacobian" in line for line in _warnings(stderr)), stderr


def test_nan_results_as_json_on_stdout(corpus: Path):
    run = jac(
        "jvp", "corpus:twice", "-p", "[nan, inf, -inf]", "-t", "ones", "--format", "json", "--no-timings"
    )
    assert run.code == 0, run
    doc = json.loads(run.stdout)
    assert doc["output"]["data"] == ["NaN", "Infinity", "-Infinity"]
    assert doc["jvp"]["data"] == [2.0, 2.0, 2.0]
    assert any("output" in line for line in _warnings(run.stderr)), run


# --- integers and booleans are promoted ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected", "dtype"),
    [
        ("int32.npy", np.array([1, 2, 3], np.float32), "float32"),
        ("bool.npy", np.array([1, 0, 1], np.float32), "float32"),
        ("uint8.npz", np.array([7, 0, 255], np.float32), "float32"),
        ("[true, false, true]", np.array([1, 0, 1], np.float32), "float32"),
        ("[1, 2, 3]", np.array([1, 2, 3], np.float32), "float32"),
        ("{data: [true, false], dtype: float64}", np.array([1.0, 0.0]), "float64"),
    ],
    ids=[
        "npy-int32",
        "npy-bool",
        "npz-uint8",
        "yaml-bools",
        "yaml-ints",
        "yaml-bools-as-float64",
    ],
)
def test_integers_and_booleans_are_promoted(corpus: Path, source: str, expected: np.ndarray, dtype: str):
    save(corpus / "int32.npy", np.array([1, 2, 3], np.int32))
    save(corpus / "bool.npy", np.array([True, False, True]))
    np.savez(corpus / "uint8.npz", a=np.array([7, 0, 255], np.uint8))
    res, _ = results("vjp", "corpus:mix", "-p", source, "-u", "ones")
    x = torch.tensor(expected)
    out, pullback = torch.func.vjp(mix, x)
    close(res["output"], out, dtype)
    close(res["vjp.0"], pullback(torch.ones_like(out))[0], dtype)


def test_booleans_among_numbers_are_an_error(corpus: Path):
    """issue 11: [true, 2.5, 3] was read as [1, 2.5, 3]; a boolean among numbers is a mistake."""
    run = jac("vjp", "corpus:mix", "-p", "[true, 2.5, 3]", "-u", "ones")
    assert_clean_error(run, 2, "true at [0]", "array of numbers")


def test_an_integer_primal_takes_the_float64_of_its_neighbour(corpus: Path):
    save(corpus / "i.npy", np.array([1, 2, 3], np.int64))
    save(corpus / "y.npy", np.array([0.5, 0.25, 0.125]))
    res, _ = results("jacrev", "corpus:mul", "-p", "i.npy", "-p", "y.npy", "--argnums", "0,1")
    assert res["jacobian.0"].dtype == np.float64 and res["jacobian.1"].dtype == np.float64
    close(res["jacobian.0"], np.diag([0.5, 0.25, 0.125]))
    close(res["jacobian.1"], np.diag([1.0, 2.0, 3.0]))


# --- functions that print: results on stdout stay clean ------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        ["--format", "json"],
        ["-o", "-", "--format", "json"],
        ["--format", "yaml"],
        ["-o", "-", "--format", "npz"],
    ],
    ids=["format-json", "out-dash-json", "format-yaml", "out-dash-npz"],
)
def test_prints_go_to_stderr_and_stdout_holds_only_results(corpus: Path, how: list[str]):
    run = jac("jvp", "corpus:noisy", "-p", "[1.0, 2.0]", "-t", "[1.0, 1.0]", *how, "--no-timings")
    assert run.code == 0, run
    if "npz" in how:
        res = run.npz()
        close(res["jvp"], np.full(2, 2.0, np.float32))
    else:
        load = json.loads if "json" in how else yaml.safe_load
        doc = load(run.stdout)
        assert set(doc) == {"output", "jvp", "__jac__"}  # the results and their record
        assert doc["jvp"]["data"] == [2.0, 2.0]
        assert "noise" not in run.stdout
    assert "noise from the user function" in run.stderr
    assert "more noise without a newline" in run.stderr


def test_control_the_harness_sees_a_call_and_a_write(corpus: Path):
    """The valid twin of the cases: the marker appears and out.npz is written, no temp file left."""
    run = jac("jacrev", "corpus:f", "-p", "good.npy", "-o", "out.npz", "--no-timings")
    assert run.code == 0, run
    assert (corpus / CALLED).exists()
    with np.load(corpus / "out.npz") as z:
        close(z["jacobian"], torch.func.jacrev(torch.sin)(torch.tensor(GOOD)))
    assert not list(corpus.glob(".out.npz.*"))
