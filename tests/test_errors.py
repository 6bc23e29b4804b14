"""Every error path of the contract: exit code, one clear line on stderr, and nothing written.

SPEC.md, "Errors and exit codes": exit 2 for usage or input errors, exit 3 when the user's
function or its derivative raises; one line on stderr naming the culprit and the fix; no
traceback unless --debug; on any error no output file is created or changed.

Each case of ``CASES`` runs in a fresh folder (``scene``) holding the user modules and the
broken, malicious and mismatched input files it needs. Unless the case writes its own ``-o``,
``-o out.npz`` is added, and every case runs twice: with the output file(s) absent (they must
still be absent) and pre-created with known bytes (they must be byte-for-byte unchanged). The
whole folder is snapshotted before and after, so a stray temporary file, a created folder or
a marker file left by executed data fails the test too.
"""

from __future__ import annotations

import builtins
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import EXAMPLES, assert_clean_error, jac, write_module

X = str(EXAMPLES / "x.npy")  # (3, 2) float32, ones
V = str(EXAMPLES / "v.npy")  # (3, 2)
QUICK = f"{EXAMPLES}/quickstart.py:f"  # x (3, 2) -> (3,)
OLD_BYTES = b"previous contents: must survive any failed jac run\n"

PRINTING_MODULE = """
print("printmod imported")  # output at import time must not reach jac's stdout


def printer(x):
    print("hello from the user function")
    return x * 2
"""

USER_MODULE = '''
import sys
import torch

def f(x):
    return 2 * x.sum(dim=1)


def raises(x):
    raise ValueError("boom from user")


def multiline(x):
    raise ValueError("first line of the message\\nsecond line\\nthird line")


def exits(x):
    sys.exit(5)


def returns_float(x):
    return 1.5


def returns_none(x):
    return None


def returns_int(x):
    return (x * 0).long()


class Cls:
    def __call__(self, x):
        return x * 2


NOT_CALLABLE = 42


def gen(x):
    yield x * 2


def factory_raises():
    raise RuntimeError("factory exploded")


def factory_exits():
    sys.exit(6)


def aux_str(x):
    return x * 2, "a note, not a tensor"


def tuple_out(x):
    return x * 2, x.sum()


def dict_out(x):
    return {"a": x * 2, "b": x.sum()}


def ignores(x, y):
    return x * 2


class Triple(torch.autograd.Function):
    """Backward only: no jvp, so forward mode cannot go through it."""

    @staticmethod
    def forward(x):
        return x * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 3


def custom(x):
    return Triple.apply(x)


class BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("backward boom")


def bad_backward(x):
    return BadBackward.apply(x)
'''


class _OpensMarker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _evil_object_array(marker: Path) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[0] = _OpensMarker(str(marker))
    array[1] = 1.0
    return array


def _evil_yaml(kind: str, marker: Path) -> str:
    if kind == "open":
        return f'!!python/object/apply:builtins.open ["{marker}", "w"]\n'
    return f'!!python/object/apply:os.system ["touch {marker}"]\n'


@pytest.fixture
def scene(workdir: Path) -> Path:
    """A folder with the user modules and every input file the cases below read."""
    write_module(workdir, "errmod", USER_MODULE)
    write_module(workdir, "printmod", PRINTING_MODULE)
    write_module(workdir, "badimport", 'raise RuntimeError("import boom")\n')
    # a script that calls sys.exit at import time (no __main__ guard), with a clean and a failing code
    write_module(workdir, "exits_at_import", "import sys\n\ndef f(x):\n    return x * 2\n\nsys.exit(0)\n")
    (workdir / "helpers").mkdir()
    (workdir / "helpers" / "funcs.py").write_text("def g(x):\n    return x * 2\n")
    (workdir / "helpers" / "exits.py").write_text(
        "import sys\n\ndef f(x):\n    return x * 2\n\nsys.exit(4)\n"
    )

    good = (EXAMPLES / "x.npy").read_bytes()
    (workdir / "good.npy").write_bytes(good)
    (workdir / "garbage.npy").write_bytes(b"this is not an npy file at all\x00\x01\x02")
    (workdir / "trunc.npy").write_bytes(good[:-7])  # header intact, data cut short
    (workdir / "trunchdr.npy").write_bytes(good[:20])  # cut inside the header
    (workdir / "empty.npy").write_bytes(b"")
    np.save(workdir / "cplx.npy", np.ones((3, 2), np.complex64))
    np.save(workdir / "strs.npy", np.array(["a", "b"]))
    np.save(workdir / "bad_t.npy", np.ones((2, 3), np.float32))
    np.save(workdir / "u3.npy", np.ones(3, np.float32))
    np.save(workdir / "u4.npy", np.ones(4, np.float32))

    np.save(workdir / "evil.npy", _evil_object_array(workdir / "MARKER_npy"), allow_pickle=True)
    np.savez(workdir / "evil.npz", x=_evil_object_array(workdir / "MARKER_npz"))
    np.save(workdir / "evil_stdin.npy", _evil_object_array(workdir / "MARKER_stdin_npy"), allow_pickle=True)
    (workdir / "evil_open.yaml").write_text(_evil_yaml("open", workdir / "MARKER_yaml_open"))
    (workdir / "evil_system.yml").write_text(_evil_yaml("system", workdir / "MARKER_yaml_system"))
    (workdir / "evil_stdin.yaml").write_text(_evil_yaml("open", workdir / "MARKER_stdin_yaml"))

    npz = (EXAMPLES / "xy.npz").read_bytes()
    (workdir / "trunc.npz").write_bytes(npz[: len(npz) // 2])
    (workdir / "garbage.npz").write_bytes(b"hello world, not a zip")
    with zipfile.ZipFile(workdir / "notnpy.npz", "w") as z:
        z.writestr("a.txt", "a zip, but its member is no .npy")
    with zipfile.ZipFile(workdir / "badmember.npz", "w") as z:
        z.writestr("a.npy", b"\x93NUMPYgarbage")
    (workdir / "binary.bin").write_bytes(b"\xff\xfe\x00 neither npy, npz nor UTF-8")
    (workdir / "bad.yaml").write_text("a: [1, 2\nb: 3\n")
    (workdir / "bad.json").write_text('{"a": [1, 2')
    (workdir / "cot_wrong.yaml").write_text("a: [[1, 1], [1, 1], [1, 1]]\nc: 1.0\n")
    (workdir / "adir").mkdir()
    (workdir / "res.npz").mkdir()  # a folder that looks like an output file
    return workdir


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (bytecode caches aside) with its bytes, or '<dir>'."""
    state: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        state[rel.as_posix()] = "<dir>" if path.is_dir() else path.read_bytes()
    return state


@dataclass
class Case:
    args: list[str]
    code: int
    needles: tuple[str, ...]
    absent: tuple[str, ...] = ()  # fragments the message must not contain (wrong advice)
    stdin: str | bytes | None = None  # bytes, or "@file" to pipe a file of the scene
    out: str | None = "out.npz"  # appended as -o OUT; None: the case sets its own -o or none
    watch: tuple[str, ...] = ("out.npz",)  # output paths that must not appear or change
    precreate: bool = True  # whether the watched files can be pre-created (folder exists)


def case(id: str, args: list[str], code: int, *needles: str, marks=(), **kw) -> pytest.param:
    return pytest.param(Case(args, code, needles, **kw), id=id, marks=marks)


KWARG_TAG = 'scale=!!python/object/apply:os.system ["touch MARKER_kwarg"]'  # must never run
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# fmt: off
CASES = [
    # --- usage: options and FUNC syntax ------------------------------------------------
    case("unknown-option", ["jvp", "errmod:f", "-p", X, "-t", V, "--bogus"], 2, "--bogus"),
    case("missing-primals", ["jvp", "errmod:f"], 2, "--primals"),
    case("missing-func", ["jvp"], 2, "FUNC"),
    case("unknown-command", ["hessianx", "errmod:f"], 2, "hessianx", out=None, watch=()),
    case("func-without-colon", ["jvp", "errmod", "-p", X, "-t", V], 2, "FUNC", "'errmod'", "MODULE:NAME"),
    case("func-bad-name", ["jvp", "errmod:f-g", "-p", X, "-t", V], 2, "FUNC", "f-g"),
    case("tangents-on-vjp", ["vjp", "errmod:f", "-p", X, "-t", V], 2, "-t"),
    case("cotangents-on-jvp", ["jvp", "errmod:f", "-p", X, "-u", V], 2, "-u"),
    case("dtype-int8", ["jvp", "errmod:f", "-p", X, "-t", V, "--dtype", "int8"], 2, "--dtype", "int8",
         "float32"),
    case("device-tpu", ["jvp", "errmod:f", "-p", X, "-t", V, "--device", "tpu"], 2, "--device", "tpu", "cpu"),
    case("device-cuda", ["jvp", "errmod:f", "-p", X, "-t", V, "--device", "cuda"], 2, "--device cuda",
         "available", "cpu", marks=NO_CUDA),
    case("device-cuda-1", ["jvp", "errmod:f", "-p", X, "-t", V, "--device", "cuda:1"], 2, "--device cuda:1",
         "available", "cpu", marks=NO_CUDA),
    case("format-xml", ["jvp", "errmod:f", "-p", X, "-t", V, "--format", "xml"], 2, "--format", "xml"),
    case("chunk-size-0", ["jacrev", "errmod:f", "-p", X, "--chunk-size", "0"], 2, "--chunk-size"),
    case("repeat-negative", ["jacrev", "errmod:f", "-p", X, "--repeat", "-1"], 2, "--repeat"),
    case("argnums-text", ["jacrev", "errmod:f", "-p", X, "--argnums", "abc"], 2, "--argnums", "abc"),
    case("argnums-out-of-range", ["jacfwd", "errmod:f", "-p", X, "--argnums", "5"], 2, "--argnums 5",
         "out of range", "1 primal"),
    case("argnums-repeated", ["jacrev", "errmod:ignores", "-p", X, "-p", X, "--argnums", "0,0"], 2,
         "--argnums 0,0", "repeats"),
    case("kwarg-malformed", ["jvp", "errmod:f", "-p", X, "-t", V, "--kwarg", "=3"], 2, "--kwarg",
         "NAME=VALUE"),
    case("kwarg-unknown-name", ["jvp", "errmod:f", "-p", X, "-t", V, "--kwarg", "nosuch=1"], 2, "errmod:f",
         "nosuch"),
    case("too-many-primals", ["jvp", "errmod:f", "-p", X, "-p", X, "-t", V, "-t", V], 2, "errmod:f",
         "2 positional"),
    # --- FUNC: finding the function ----------------------------------------------------
    case("unknown-module", ["jvp", "nosuchmod_xyz:f", "-p", X, "-t", V], 2, "nosuchmod_xyz"),
    case("unknown-dotted-module", ["jvp", "nosuchpkg_xyz.sub:f", "-p", X, "-t", V], 2, "nosuchpkg_xyz"),
    case("no-such-attribute", ["jvp", "errmod:nosuch", "-p", X, "-t", V], 2, "errmod", "'nosuch'"),
    case("no-such-dotted-attribute", ["jvp", "errmod:Cls.nosuch", "-p", X, "-t", V], 2, "errmod:Cls",
         "'nosuch'"),
    case("func-file-missing", ["jvp", "missing/dir/file.py:f", "-p", X, "-t", V], 2, "missing/dir/file.py",
         "does not exist"),
    case("func-file-is-folder", ["jvp", "helpers/:g", "-p", X, "-t", V], 2, "helpers", "folder"),
    case("func-file-no-attribute", ["jvp", "helpers/funcs.py:nosuch", "-p", X, "-t", V], 2,
         "helpers/funcs.py", "'nosuch'"),
    case("func-is-class", ["jvp", "errmod:Cls", "-p", X, "-t", V], 2, "errmod:Cls", "class", "errmod:Cls()"),
    case("func-not-callable", ["jvp", "errmod:NOT_CALLABLE", "-p", X, "-t", V], 2, "errmod:NOT_CALLABLE",
         "not a function"),
    case("func-is-module", ["jvp", "torch:nn", "-p", X, "-t", V], 2, "torch:nn", "module"),
    case("func-generator", ["jvp", "errmod:gen", "-p", X, "-t", V], 2, "errmod:gen", "generator"),
    case("factory-needs-arguments", ["jvp", "errmod:f()", "-p", X, "-t", V], 2, "errmod:f()", "argument"),
    case("factory-not-callable", ["jvp", "errmod:NOT_CALLABLE()", "-p", X, "-t", V], 2, "errmod:NOT_CALLABLE",
         "factory"),
    case("import-raises", ["jvp", "badimport:f", "-p", X, "-t", V], 3, "badimport", "RuntimeError",
         "import boom"),
    case("import-calls-sys-exit-0", ["jvp", "exits_at_import:f", "-p", X, "-t", V], 3, "exits_at_import"),
    case("path-import-calls-sys-exit", ["jvp", "helpers/exits.py:f", "-p", X, "-t", V], 3,
         "helpers/exits.py"),
    case("factory-calls-sys-exit", ["jvp", "errmod:factory_exits()", "-p", X, "-t", V], 3, "factory_exits"),
    case("factory-raises", ["jvp", "errmod:factory_raises()", "-p", X, "-t", V], 3, "factory_raises",
         "RuntimeError", "factory exploded"),
    # --- the function or its derivative raises (exit 3) --------------------------------
    case("function-raises", ["jvp", "errmod:raises", "-p", X, "-t", V], 3, "ValueError", "boom from user"),
    case("function-raises-in-jacrev", ["jacrev", "errmod:raises", "-p", X], 3, "ValueError",
         "boom from user"),
    case("function-raises-multiline", ["vjp", "errmod:multiline", "-p", X, "-u", "ones"], 3, "ValueError",
         "first line of the message", absent=("second line",)),
    case("function-sys-exit", ["jvp", "errmod:exits", "-p", X, "-t", V], 3, "sys.exit(5)"),
    case("returns-float", ["jvp", "errmod:returns_float", "-p", X, "-t", V], 3, "float", "tensor"),
    case("returns-none", ["jacrev", "errmod:returns_none", "-p", X], 3, "None", "tensor"),
    case("returns-int-tensor", ["vjp", "errmod:returns_int", "-p", X, "-u", "ones"], 3, "int64", "floating"),
    case("has-aux-not-a-pair", ["jvp", "errmod:f", "-p", X, "-t", V, "--has-aux"], 3, "--has-aux",
         "(output, aux)"),
    case("aux-not-a-tensor", ["vjp", "errmod:aux_str", "-p", X, "-u", "ones", "--has-aux"], 3, "str"),
    case("backward-raises", ["vjp", "errmod:bad_backward", "-p", X, "-u", "ones"], 3, "vjp", "RuntimeError",
         "backward boom"),
    case("no-forward-mode-jvp", ["jvp", "errmod:custom", "-p", X, "-t", V, "--engine", "func"], 3, "forward",
         "--engine auto", "jac vjp"),
    case("no-forward-mode-jacfwd", ["jacfwd", "errmod:custom", "-p", X, "--engine", "func"], 3, "jacfwd",
         "RuntimeError"),
    case("strict-unused-input", ["jvp", "errmod:ignores", "-p", X, "-p", X, "-t", V, "-t", V, "--strict"], 3,
         "--strict", "primal 1", "drop --strict"),
    case("strict-unused-input-jacrev",
         ["jacrev", "errmod:ignores", "-p", X, "-p", X, "--argnums", "0,1", "--strict"], 3, "--strict",
         "primal 1"),
    # --- inputs: files, literals, stdin ---------------------------------------------------
    case("primal-file-missing", ["jvp", "errmod:f", "-p", "missing.npy", "-t", V], 2, "missing.npy",
         "no such file"),
    case("tangent-file-missing", ["jvp", "errmod:f", "-p", X, "-t", "nov.npy"], 2, "--tangents", "nov.npy"),
    case("npy-garbage", ["jvp", "errmod:f", "-p", "garbage.npy", "-t", V], 2, "--primals garbage.npy",
         absent=("pickle",)),
    case("npy-truncated-data", ["jvp", "errmod:f", "-p", "trunc.npy", "-t", V], 2, "--primals trunc.npy"),
    case("npy-truncated-header", ["jvp", "errmod:f", "-p", "trunchdr.npy", "-t", V], 2,
         "--primals trunchdr.npy"),
    case("npy-empty-file", ["jvp", "errmod:f", "-p", "empty.npy", "-t", V], 2, "--primals empty.npy"),
    case("npy-complex", ["jvp", "errmod:f", "-p", "cplx.npy", "-t", V], 2, "cplx.npy", "complex"),
    case("npy-strings", ["jvp", "errmod:f", "-p", "strs.npy", "-t", V], 2, "strs.npy", "numeric"),
    case("npz-truncated", ["jvp", "errmod:f", "-p", "trunc.npz", "-t", V], 2, "--primals trunc.npz"),
    case("npz-truncated-stdin", ["jvp", "errmod:f", "-p", "-", "-t", V], 2, "--primals", "standard input",
         stdin="@trunc.npz"),
    case("npz-garbage", ["jvp", "errmod:f", "-p", "garbage.npz", "-t", V], 2, "--primals garbage.npz",
         absent=("pickle",)),
    case("npz-member-not-npy", ["jvp", "errmod:f", "-p", "notnpy.npz", "-t", V], 2, "--primals notnpy.npz"),
    case("npz-member-garbage", ["jvp", "errmod:f", "-p", "badmember.npz", "-t", V], 2,
         "--primals badmember.npz"),
    case("stdin-binary-garbage", ["jvp", "errmod:f", "-p", "-", "-t", V], 2, "--primals", "standard input",
         stdin="@binary.bin"),
    case("primal-is-folder", ["jvp", "errmod:f", "-p", "adir", "-t", V], 2, "adir", "folder"),
    case("npy-pickled-object", ["jvp", "errmod:f", "-p", "evil.npy", "-t", V], 2, "evil.npy", "pickle"),
    case("npz-pickled-object", ["jvp", "errmod:f", "-p", "evil.npz", "-t", V], 2, "evil.npz", "pickle"),
    case("stdin-pickled-object", ["jvp", "errmod:f", "-p", "-", "-t", V], 2, "standard input", "pickle",
         stdin="@evil_stdin.npy"),
    case("yaml-tag-open", ["jvp", "errmod:f", "-p", "evil_open.yaml", "-t", V], 2, "evil_open.yaml", "tag"),
    case("yaml-tag-os-system", ["jvp", "errmod:f", "-p", "evil_system.yml", "-t", V], 2, "evil_system.yml",
         "tag"),
    case("yaml-tag-stdin", ["jvp", "errmod:f", "-p", "-", "-t", V], 2, "standard input", "tag",
         stdin="@evil_stdin.yaml"),
    case("yaml-tag-literal",
         ["jvp", "errmod:f", "-p", '!!python/object/apply:os.system ["touch MARKER_lit"]', "-t", V], 2,
         "--primals", "tag"),
    case("yaml-invalid", ["jvp", "errmod:f", "-p", "bad.yaml", "-t", V], 2, "bad.yaml", "YAML", "line 2"),
    case("json-invalid", ["jvp", "errmod:f", "-p", "bad.json", "-t", V], 2, "bad.json", "JSON", "line 1"),
    case("literal-invalid-yaml", ["jvp", "errmod:f", "-p", "[1, 2", "-t", V], 2, "'[1, 2'", "YAML"),
    case("literal-ragged", ["jvp", "errmod:f", "-p", "[[1, 2], [3]]", "-t", V], 2, "[[1, 2], [3]]", "ragged"),
    case("literal-not-a-number", ["jvp", "errmod:f", "-p", "hello", "-t", V], 2, "'hello'", "not a number"),
    case("literal-element-not-a-number", ["jvp", "errmod:f", "-p", "[1, abc]", "-t", V], 2, "abc", "[1]",
         "not a number"),
    case("generator-primal-without-shape", ["jvp", "errmod:f", "-p", "randn", "-t", V], 2, "randn",
         "randn:3,2"),
    case("generator-shape-too-big", ["jvp", "errmod:f", "-p", "randn:99999999999,99999999999", "-t", V], 2,
         "--primals", "randn:99999999999,99999999999"),
    case("literal-unhashable-key", ["jvp", "errmod:f", "-p", "[1, 2]:", "-t", V], 2, "--primals", "'[1, 2]:'",
         absent=("tag",)),
    case("kwarg-python-tag", ["jvp", "errmod:f", "-p", X, "-t", V, "--kwarg", KWARG_TAG], 2, "--kwarg",
         "scale"),
    case("generator-bad-shape", ["jvp", "errmod:f", "-p", "randn:3,x", "-t", V], 2, "randn:3,x", "shape"),
    case("stdin-empty", ["jvp", "errmod:f", "-p", "-", "-t", V], 2, "--primals", "standard input", "empty",
         stdin=b""),
    case("stdin-read-twice", ["jvp", "errmod:f", "-p", "-", "-t", "-"], 2, "--tangents", "standard input",
         stdin="@good.npy"),
    # --- shapes and counts ------------------------------------------------------------
    case("tangent-shape-mismatch", ["jvp", "errmod:f", "-p", X, "-t", "bad_t.npy"], 2, "tangent 0",
         "bad_t.npy", "(2, 3)", "(3, 2)"),
    case("tangent-literal-shape-mismatch", ["jvp", "errmod:f", "-p", X, "-t", "[1, 2]"], 2, "tangent 0",
         "(2,)", "(3, 2)"),
    case("tangent-count-mismatch", ["jvp", "errmod:f", "-p", X, "-t", V, "-t", V], 2, "2 tangent", "1 primal",
         "--tangents"),
    case("jvp-without-tangents", ["jvp", "errmod:f", "-p", X], 2, "--tangents", "6 elements"),
    case("vjp-without-cotangents", ["vjp", "errmod:f", "-p", X], 2, "--cotangents", "(3,)"),
    case("cotangent-shape-mismatch", ["vjp", "errmod:f", "-p", X, "-u", "u4.npy"], 2, "cotangent", "u4.npy",
         "(4,)", "(3,)"),
    case("cotangent-count-mismatch", ["vjp", "errmod:tuple_out", "-p", X, "-u", "u3.npy"], 2, "1 cotangent",
         "2 output", "--cotangents"),
    case("cotangent-wrong-key", ["vjp", "errmod:dict_out", "-p", X, "-u", "cot_wrong.yaml"], 2,
         "--cotangents", "missing b", "unexpected c"),
    case("cotangent-unnamed-for-dict", ["vjp", "errmod:dict_out", "-p", X, "-u", "u3.npy"], 2, "u3.npy",
         "dict", "a, b"),
    # --- outputs ----------------------------------------------------------------------
    case("select-nosuch", ["jacrev", "errmod:f", "-p", X, "--select", "nosuch"], 2, "--select", "nosuch",
         "jacobian"),
    case("npy-several-results", ["jacrev", "errmod:tuple_out", "-p", X, "-o", "out.npy"], 2, "out.npy",
         "2 results", "--select", out=None, watch=("out.npy",)),
    case("npy-several-results-jvp", ["jvp", "errmod:f", "-p", X, "-t", V, "-o", "out.npy"], 2, "out.npy",
         "output, jvp", "--select", out=None, watch=("out.npy",)),
    case("format-npy-several-results", ["jacrev", "errmod:tuple_out", "-p", X, "--format", "npy"], 2,
         "--format npy", "--select", out=None, watch=()),
    case("out-folder-missing", ["jvp", "errmod:f", "-p", X, "-t", V, "-o", "nodir/out.npz"], 2,
         "nodir/out.npz", "does not exist", out=None, watch=("nodir",), precreate=False),
    case("out-unknown-suffix", ["jvp", "errmod:f", "-p", X, "-t", V, "-o", "out.txt"], 2, "out.txt", ".txt",
         ".npz", out=None, watch=("out.txt",)),
    case("out-no-suffix-folder", ["jvp", "errmod:f", "-p", X, "-t", V, "-o", "adir"], 2, "-o", "adir",
         out=None, watch=("adir",), precreate=False),
    case("out-is-folder", ["jvp", "errmod:f", "-p", X, "-t", V, "-o", "res.npz"], 2, "res.npz", "folder",
         out=None, watch=("res.npz",), precreate=False),
    case("timings-unknown-suffix", ["jvp", "errmod:f", "-p", X, "-t", V, "--timings", "t.txt"], 2,
         "--timings", "t.txt", ".json", ".yaml", absent=(".npz", ".npy"), watch=("out.npz", "t.txt")),
    case("timings-npz", ["jvp", "errmod:f", "-p", X, "-t", V, "--timings", "t.npz"], 2, "--timings", "t.npz",
         ".json", watch=("out.npz", "t.npz")),
    case("timings-folder-missing", ["jvp", "errmod:f", "-p", X, "-t", V, "--timings", "tdir/t.json"], 2,
         "--timings", "tdir/t.json", "does not exist", watch=("out.npz", "tdir")),
    # an input error after a valid --timings: neither file may appear
    case("timings-and-out-untouched", ["jvp", "errmod:f", "-p", X, "-t", "bad_t.npy", "--timings", "t.json"],
         2, "tangent 0", watch=("out.npz", "t.json")),
]
# fmt: on


def _params():
    for param in CASES:
        (c,) = param.values
        variants = ["absent", "existing"] if (c.precreate and c.watch) else ["absent"]
        for variant in variants:
            yield pytest.param(c, variant, id=f"{param.id}-{variant}", marks=param.marks)


@pytest.mark.parametrize(("c", "variant"), list(_params()))
def test_error_is_one_line_with_exit_code_and_writes_nothing(scene: Path, c: Case, variant: str):
    if variant == "existing":
        for name in c.watch:
            (scene / name).write_bytes(OLD_BYTES)
    args = list(c.args) + (["-o", c.out] if c.out else [])
    stdin = (scene / c.stdin[1:]).read_bytes() if isinstance(c.stdin, str) else c.stdin
    before = snapshot(scene)
    had = {name: (scene / name).exists() for name in c.watch}

    run = jac(*args, input=stdin)

    assert_clean_error(run, c.code, *c.needles)
    for fragment in c.absent:
        assert fragment not in run.stderr, (fragment, run)
    for name in c.watch:
        path = scene / name
        if variant == "existing":
            assert path.read_bytes() == OLD_BYTES, f"{name} was changed"
        elif not had[name]:
            assert not path.exists(), f"{name} was created"
    assert not list(scene.glob("MARKER*")), "input data was executed"
    assert snapshot(scene) == before, "the folder changed"


@pytest.mark.parametrize("variant", ["absent", "existing"])
def test_control_the_same_command_does_write(scene: Path, variant: str):
    """The harness can see a write: the valid twin of the cases above creates/replaces out.npz."""
    if variant == "existing":
        (scene / "out.npz").write_bytes(OLD_BYTES)
    run = jac("jvp", "errmod:f", "-p", X, "-t", V, "-o", "out.npz", "--timings", "t.json")
    assert run.code == 0, run
    with np.load(scene / "out.npz") as z:
        np.testing.assert_array_equal(z["jvp"], [6, 14, 22])
    assert json.loads((scene / "t.json").read_text())["phases"]
    assert not [p for p in scene.iterdir() if p.name.endswith(".tmp")]


# --- untrusted data is never executed --------------------------------------------------


@pytest.mark.parametrize("how", ["file", "stdin", "npz"])
def test_pickled_object_array_is_refused_and_never_unpickled(workdir: Path, how: str):
    marker = workdir / "MARKER_pickle"
    array = _evil_object_array(marker)
    if how == "npz":
        np.savez(workdir / "evil.npz", a=array)
        source, stdin, path = "evil.npz", None, workdir / "evil.npz"
    else:
        np.save(workdir / "evil.npy", array, allow_pickle=True)
        path = workdir / "evil.npy"
        source, stdin = ("evil.npy", None) if how == "file" else ("-", path.read_bytes())

    run = jac("jvp", QUICK, "-p", source, "-t", V, "-o", "out.npz", input=stdin)

    assert_clean_error(run, 2, "pickle")
    assert not marker.exists(), "jac unpickled the object array"
    assert not (workdir / "out.npz").exists()
    # The file is live: a careless np.load would have run it.
    if how == "npz":
        with np.load(path, allow_pickle=True) as z:
            z["a"]
    else:
        np.load(path, allow_pickle=True)
    assert marker.exists(), "test bug: the malicious pickle does not create its marker"


@pytest.mark.parametrize("tag", ["open", "system"])
@pytest.mark.parametrize("how", ["file", "stdin", "literal"])
def test_yaml_python_tags_are_refused_and_never_run(workdir: Path, tag: str, how: str):
    marker = workdir / f"MARKER_yaml_{tag}"
    text = _evil_yaml(tag, marker)
    (workdir / "evil.yaml").write_text(text)
    source, stdin = {"file": ("evil.yaml", None), "stdin": ("-", text.encode()), "literal": (text, None)}[how]

    run = jac("vjp", QUICK, "-p", source, "-u", "ones", "-o", "out.npz", input=stdin)

    assert_clean_error(run, 2, "--primals", "tag")
    assert not marker.exists(), "jac executed a YAML python tag"
    assert not (workdir / "out.npz").exists()
    yaml.unsafe_load(text)  # the document is live: an unsafe loader would have run it
    assert marker.exists(), "test bug: the malicious YAML does not create its marker"


def test_pickled_object_array_really_is_a_pickle():
    """Guard for the cases above: the object array must need pickle to be stored."""
    array = _evil_object_array(Path("/nonexistent/never-created"))
    with pytest.raises(ValueError):
        np.save(__import__("io").BytesIO(), array, allow_pickle=False)
    assert b"open" in pickle.dumps(array[0])


# --- forward mode: the message points to reverse mode, which works -----------------------


def test_autograd_function_without_jvp_fails_forward_but_vjp_works(scene: Path):
    forward = jac("jvp", "errmod:custom", "-p", X, "-t", V, "--engine", "func")
    assert_clean_error(forward, 3, "forward", "reverse mode")
    reverse = jac("vjp", "errmod:custom", "-p", X, "-u", "ones", "--format", "npz", "--no-timings")
    assert reverse.code == 0, reverse
    res = reverse.npz()
    np.testing.assert_array_equal(res["output"], np.full((3, 2), 3.0))
    np.testing.assert_array_equal(res["vjp.0"], np.full((3, 2), 3.0))


# --- --debug --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "last"),
    [
        (["jvp", "errmod:raises", "-p", X, "-t", V], 3, "ValueError: boom from user"),
        (["jvp", "errmod:f", "-p", "missing.npy", "-t", V], 2, "missing.npy"),
    ],
    ids=["function-error", "input-error"],
)
def test_debug_shows_the_traceback(scene: Path, args: list[str], code: int, last: str):
    run = jac(*args, "--debug", "-o", "out.npz")
    assert run.code == code, run
    assert "Traceback (most recent call last)" in run.stderr, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("jac: error:") and last in lines[-1], run
    assert run.stdout_bytes == b""
    assert not (scene / "out.npz").exists()


def test_debug_is_not_sticky_between_runs(scene: Path):
    """--debug in one run must not make the next run's errors print tracebacks."""
    assert "Traceback" in jac("jvp", "errmod:raises", "-p", X, "-t", V, "--debug").stderr
    assert_clean_error(jac("jvp", "errmod:raises", "-p", X, "-t", V), 3, "boom from user")


# --- a function that prints must not corrupt machine-readable stdout ----------------------


@pytest.mark.parametrize(
    "how", [["--format", "json"], ["-o", "-", "--format", "json"]], ids=["format", "out-dash"]
)
def test_prints_go_to_stderr_and_json_stdout_stays_clean(scene: Path, how: list[str]):
    run = jac("jvp", "printmod:printer", "-p", X, "-t", V, *how)
    assert run.code == 0, run
    doc = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert set(doc) == {"output", "jvp", "__jac__"}  # the results and their record
    assert doc["jvp"]["shape"] == [3, 2]
    np.testing.assert_allclose(doc["jvp"]["data"], 2 * np.load(V))
    assert "hello from the user function" in run.stderr
    assert "printmod imported" in run.stderr  # import-time prints too
    assert "hello" not in run.stdout and "imported" not in run.stdout


def test_prints_do_not_corrupt_npz_stdout(scene: Path):
    # (timings stay on: conftest.jac reads stderr without flushing it, and the table flushes)
    run = jac("vjp", "printmod:printer", "-p", X, "-u", "ones", "--format", "npz")
    assert run.code == 0, run
    res = run.npz()
    np.testing.assert_array_equal(res["vjp.0"], np.full((3, 2), 2.0))
    assert "hello from the user function" in run.stderr


def test_bare_jac_prints_the_help_page_and_succeeds():
    run = jac()
    assert run.code == 0, run
    assert run.stdout.startswith("Usage: jac")
    for command in ("jvp", "vjp", "jacfwd", "jacrev"):
        assert command in run.stdout
    assert run.stderr == ""
