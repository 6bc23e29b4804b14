"""A seeded fuzz test of the contract, through the real ``jac``: hundreds of generated hostile
inputs (.npy and .npz headers, YAML, literals, FUNC strings, option combinations, configs),
most run in this process (fast), some as real processes.

Every case must keep the contract: an exit code of 0, 1 (jac check only), 2 or 3, never 70;
no traceback without --debug; an error is one short line; no temporary file left behind; an
existing output byte-identical after a failure; no hang. The seed is fixed (JAC_FUZZ_SEED
overrides it, JAC_FUZZ_CASES the count), so a failure names a case that reruns the same.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import jac, write_module

SEED = int(os.environ.get("JAC_FUZZ_SEED", "20261201"))
CASES = int(os.environ.get("JAC_FUZZ_CASES", "300"))
PROCESS_CASES = 8
OLD = b"previous output, to be kept byte for byte"
MAX_ERROR_LINE = 1200

MODULE = """
import torch

def f(x):
    return x.sin() * 2

def two(x, y):
    return x * y.sum()

def loss(x):
    return (x ** 2).sum()

def raises(x):
    raise ValueError("no " * 5000)

def not_tensor(x):
    return "a string"

def gives_none(x):
    return None

def dict_out(x):
    return {"a": x.cos(), "b": x.sum()}

def with_aux(x):
    return x * 3, {"n": x.sum()}

def scaled(x, scale=1.0):
    return x * scale

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)

def make():
    torch.manual_seed(0)
    return Net()
"""

COMMANDS = ["jvp", "vjp", "jacfwd", "jacrev", "jacobian", "hessian", "hvp", "check"]
FUNCS = [
    "fuzzmod:f",
    "fuzzmod:two",
    "fuzzmod:loss",
    "fuzzmod:raises",
    "fuzzmod:not_tensor",
    "fuzzmod:gives_none",
    "fuzzmod:dict_out",
    "fuzzmod:with_aux",
    "fuzzmod:scaled",
    "fuzzmod:make()",
    "fuzzmod:Net",
    "fuzzmod:make",
    "fuzzmod:missing",
    "fuzzmod:f()",
    "fuzzmod:f.g",
    "fuzzmod.py:f",
    "./fuzzmod.py:f",
    "nosuchmod_x:f",
    "torch:sin",
    "math:sin",
    "fuzzmod",
    ":f",
    "fuzzmod:",
    "fuzzmod:1f",
    "fuzzmod:f(1)",
    "a b:c",
    "fuzzmod:f:g",
    "../../nowhere.py:f",
    "/dev/null:f",
    "fuzzmod:Net.forward",
    "torch.nn:Linear",
    "fuzzmod:torch",
]


def _number(r: random.Random) -> str:
    return r.choice(
        [
            "1",
            "-2",
            "0.5",
            "1e-3",
            "-1E5",
            ".5",
            "nan",
            ".nan",
            "inf",
            "-.inf",
            "1e999",
            "0x1F",
            "1_000",
            "9" * 30,
            "true",
            "false",
            "null",
            "~",
            '"2.0"',
            "'NaN'",
            '"Infinity"',
            "abc",
            '"x"',
            "[]",
            "{}",
            "1:2",
            "0o17",
            "-0",
            "+3",
        ]
    )


def _yaml_value(r: random.Random, depth: int = 0) -> str:
    roll = r.random()
    if depth > 3 or roll < 0.35:
        return _number(r)
    if roll < 0.65:
        n = r.choice([0, 1, 2, 3, 3, 4])
        items = [_yaml_value(r, depth + 1) for _ in range(n)]
        if r.random() < 0.5 and items:  # ragged or uniform rows
            items = [f"[{', '.join(_number(r) for _ in range(r.choice([2, 2, 3])))}]" for _ in range(n)]
        return "[" + ", ".join(items) + "]"
    if roll < 0.8:
        keys = r.sample(["data", "dtype", "shape", "extra"], r.randint(1, 3))
        parts = []
        for key in keys:
            if key == "dtype":
                value = r.choice(
                    ["float64", "float32", "int8", "bool", "complex64", "object", "float128", "3"]
                )
            elif key == "shape":
                value = r.choice(["[2]", "[0, 3]", "[-1]", "3", "[2, 2]", "x"])
            else:
                value = _yaml_value(r, depth + 1)
            parts.append(f"{key}: {value}")
        return "{" + ", ".join(parts) + "}"
    return r.choice(
        [
            "!!python/object/apply:os.system ['true']",
            "&a [1, 2]",
            "{a: &x [1, 2], b: *x}",
            "[" * 40 + "1" + "]" * 40,
            "x" * r.choice([10, 5000, 200_000]),
            "'\\x1b[31mred'",
            '"\\u0000\\t"',
            "- 1\n- 2\n  - 3",
            "{a: 1, a: 2}",
            "? [1]\n: 2",
            "%YAML 1.1\n---\n[1, 2]",
            "[1, 2]\n---\n[3]",
            "",
            "\ufeff[1.0]",
        ]
    )


def _npy_bytes(r: random.Random) -> bytes:
    array = np.arange(r.choice([1, 3, 6])).astype(r.choice(["<f8", "<f4", ">f8", "<i4", "|b1"]))
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = bytearray(buffer.getvalue())
    roll = r.random()
    if roll < 0.2:  # flip bytes in the header
        for _ in range(r.randint(1, 4)):
            data[r.randrange(6, min(len(data), 128))] = r.randrange(256)
    elif roll < 0.35:
        data = data[: r.randrange(len(data))]
    elif roll < 0.7:  # a header written by hand
        header = r.choice(
            [
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '<c16', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '<f8', 'fortran_order': False, 'shape': (-3,), }",
                "{'descr': '<f8', 'fortran_order': False, 'shape': (10**12,), }",
                "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), ",
                "{'descr': 'xyz', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '<f8', 'fortran_order': 'maybe', 'shape': (3,), }",
                "{'descr': '<f8', 'shape': (3,), }",
                "__import__('os').system('true')",
                "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '<f8', 'fortran_order': True, 'shape': (3, 1), }",
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1,) * 40, }",
            ]
        ).encode("latin1")
        version = r.choice([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x00"])
        length = len(header) + 1 + r.choice([0, 0, 0, 5, -3])
        size = length.to_bytes(2 if version == b"\x01\x00" else 4, "little", signed=True)
        data = bytearray(b"\x93NUMPY" + version + size + header + b"\n" + b"\0" * 24)
    return bytes(data)


def _npz_bytes(r: random.Random) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for i in range(r.choice([0, 1, 2])):
            name = r.choice([f"a{i}.npy", f"a{i}.txt", "../evil.npy", f"dir/a{i}.npy"])
            z.writestr(name, _npy_bytes(r) if r.random() < 0.8 else b"not npy")
    data = buffer.getvalue()
    if r.random() < 0.3:
        data = data[: r.randrange(max(len(data), 1))]
    return data


def _source(r: random.Random, folder: Path, tag: str) -> str:
    """An input source: a file of hostile bytes, a literal, a generator or a path."""
    roll = r.random()
    if roll < 0.25:
        path = folder / f"{tag}.npy"
        path.write_bytes(_npy_bytes(r))
        return path.name
    if roll < 0.35:
        path = folder / f"{tag}.npz"
        path.write_bytes(_npz_bytes(r))
        return path.name
    if roll < 0.5:
        path = folder / f"{tag}.{r.choice(['yaml', 'yml', 'json'])}"
        path.write_text(_yaml_value(r), encoding="utf-8")
        return path.name
    if roll < 0.7:
        return _yaml_value(r)
    return r.choice(
        [
            "randn:3",
            "randn:2,3",
            "ones",
            "randn",
            "zeros:0",
            "randn:-1",
            "randn:a",
            "randn:10000000000",
            "-",
            "nofile.npy",
            "/dev/null",
            ".",
            "randn:",
        ]
    )


def _options(r: random.Random, command: str, folder: Path, tag: str) -> list[str]:
    pool = [
        ["--dtype", r.choice(["float64", "float16", "bfloat16", "int8", "float"])],
        ["--argnums", r.choice(["0", "1", "0,1", "-1", "a", "0,0"])],
        ["--chunk-size", r.choice(["0", "-1", "2", "x"])],
        ["--device", r.choice(["cpu", "cuda:7", "auto", "xpu", "meta"])],
        ["--format", r.choice(["text", "json", "yaml", "npz", "npy", "csv"])],
        ["--select", r.choice(["jvp", "nope", "jacobian.0"])],
        ["--batch-dim", r.choice(["0", "1", "-1", "x"])],
        ["--max-memory", r.choice(["1", "100", "1G", "abc", "-5"])],
        ["--seed", r.choice(["0", "-5", "1e3"])],
        [
            "--kwarg",
            r.choice(["scale=2.0", "scale=[1,2]", "bad", "scale=!!python/name:os.system", "=1", "x=*a"]),
        ],
        ["--has-aux"],
        ["--flatten"],
        ["--randomness", r.choice(["same", "different", "error", "maybe"])],
        ["--engine", r.choice(["func", "autograd", "auto", "jax"])],
        ["--mode", r.choice(["fwd", "rev", "auto", "up"])],
        ["--wrt", r.choice(["params", "inputs", "both"])],
        ["--warmup", r.choice(["0", "-1"])],
        ["--timings", r.choice([f"t{tag}.json", f"o{tag}.npz", f"t{tag}.txt", "/nonexistent/t.json"])],
        ["--directions", r.choice(["1", "0"])],
        ["--eps", r.choice(["1e-6", "0", "-1"])],
        ["--strict"],
        ["--quiet"],
        ["--full"],
    ]
    chosen = [opt for opt in pool if r.random() < 0.12]
    return [word for opt in chosen for word in opt]


VALID_FUNCS = {"hessian": ["fuzzmod:loss"], "hvp": ["fuzzmod:loss"]}
VALID_OPTIONS = [
    ["--dtype", "float64"],
    ["--format", "json"],
    ["--format", "yaml"],
    ["--seed", "3"],
    ["--quiet"],
]


def _case(r: random.Random, folder: Path, index: int) -> tuple[list[str], Path | None]:
    """argv for one case, and the output file that must survive a failure (if any): a valid
    command with none, one or two hostile parts, or one hostile throughout."""
    tag = f"c{index}"
    command = r.choice(COMMANDS)
    hostile = r.choice([0, 1, 1, 2, 2, 9])
    parts = set(r.sample(["func", "primal", "direction", "options", "out"], min(hostile, 5)))
    if "func" in parts:
        func = r.choice(FUNCS)
    else:
        func = r.choice(VALID_FUNCS.get(command, ["fuzzmod:f", "fuzzmod:make()", "fuzzmod:dict_out"]))
    argv = [command, func]
    if "primal" in parts:
        for _ in range(r.choice([0, 1, 1, 1, 2])):
            argv += ["-p", _source(r, folder, f"{tag}p{len(argv)}")]
    else:
        argv += ["-p", "randn:3"]
    direction = {"jvp": "-t", "hvp": "-t", "vjp": "-u"}.get(command)
    if direction is not None:
        value = _source(r, folder, f"{tag}d") if "direction" in parts else "randn"
        argv += [direction, value]
    if "options" in parts:
        argv += _options(r, command, folder, tag)
    elif r.random() < 0.5:
        argv += r.choice(VALID_OPTIONS)
    out = None
    if r.random() < 0.5:
        suffix = r.choice(["npz", "npy", "json", "yaml", "txt"]) if "out" in parts else "npz"
        if command == "check" and "out" not in parts:
            suffix = "json"
        out = folder / f"o{tag}.{suffix}"
        out.write_bytes(OLD)
        argv += ["-o", out.name]
    if r.random() < 0.15:  # as a config file
        config = folder / f"{tag}.yaml"
        lines = [f"command: {command}", f"function: {func!r}", "primals: randn:3"]
        lines += r.sample(
            [
                "options:\n  dtype: float64",
                "options: 3",
                "kwargs: [1]",
                "tangents: ones",
                "out: x.npz",
                "bogus: 1",
                "options:\n  repeat: -1",
                "options:\n  timings: " + (out.name if out else "t.json"),
            ],
            r.randint(0, 3) if hostile else 0,
        )
        config.write_text("\n".join(lines) + "\n")
        argv = ["run", config.name] + (["-o", out.name] if out else [])
    if r.random() < 0.9:
        argv += ["--repeat", "0"]
    return argv, out


class Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001
    raise Hang()


def _check_contract(argv: list[str], code: int, stderr: str, stdout: bytes, out: Path | None, folder: Path):
    what = f"jac {' '.join(a[:80] for a in argv)}"
    assert code in (0, 1, 2, 3), (what, code, stderr[-2000:])
    if code == 1:
        assert argv[0] in ("check", "run"), (what, stderr[-2000:])
    assert "Traceback" not in stderr, (what, stderr[-2000:])
    assert "Exception ignored" not in stderr, (what, stderr[-2000:])
    if code >= 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines and all(len(line) <= MAX_ERROR_LINE for line in lines), (what, [len(x) for x in lines])
        assert lines[-1].startswith(("jac", "Usage", "Error", "Try")) or "error" in lines[-1], (
            what,
            lines[-1],
        )
        if out is not None:
            assert out.read_bytes() == OLD, what
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert not leftovers, (what, leftovers)


def test_fuzz_in_process(workdir):
    write_module(workdir, "fuzzmod", MODULE)
    r = random.Random(SEED)
    counts: dict[int, int] = {}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for index in range(CASES):
            argv, out = _case(r, workdir, index)
            signal.alarm(120)
            try:
                run = jac(*argv, input=b"")
            except Hang:
                pytest.fail(f"case {index} hung: jac {' '.join(argv)}")
            finally:
                signal.alarm(0)
            counts[run.code] = counts.get(run.code, 0) + 1
            _check_contract(argv, run.code, run.stderr, run.stdout_bytes, out, workdir)
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(f"fuzz: {CASES} cases in process, exit codes {dict(sorted(counts.items()))}")
    assert counts.get(0, 0) > CASES // 20 and counts.get(2, 0) > CASES // 4  # the cases reach both sides


def test_fuzz_as_processes(tmp_path):
    """A smaller share as real processes, in parallel: what only a process shows (the
    interpreter's exit, stdin closed, real file descriptors)."""
    (tmp_path / "fuzzmod.py").write_text(MODULE)
    r = random.Random(SEED + 1)
    cases = [_case(r, tmp_path, 10_000 + i) for i in range(PROCESS_CASES)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaccli", *argv],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for argv, _ in cases
    ]
    for (argv, out), proc in zip(cases, procs):
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"hung: jac {' '.join(argv)}")
        _check_contract(argv, proc.returncode, stderr.decode("utf-8", "replace"), stdout, out, tmp_path)
