"""Jacobians larger than --max-memory: computed in chunks, or streamed into -o J.npy.

A tiny --max-memory forces each path on small problems; every result is compared with
torch.func's jacrev / jacfwd called directly, in float64, entry for entry.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, jac, write_module

SOURCE = """
import torch

def f(x):  # R^10 -> R^7: reverse mode needs fewer passes
    return torch.tanh(x[:, None] * x[None, :]).sum(0)[:7] * x[:7].sin()

def wide(x):  # R^(2,3) -> R^(4,5): forward mode needs fewer passes
    return torch.cat([x.exp(), x.cos()], 0).reshape(-1)[:, None].repeat(1, 5)[:4] * x.sum()

def two(x, y):
    return (x.sin()[:, None] * y).reshape(-1)

class NoForward(torch.autograd.Function):  # no jvp: forward mode must fall back
    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (output,) = ctx.saved_tensors
        return grad * output

def no_forward(x):
    return NoForward.apply(x) * x[:3].sum()

CALLS = [0]
FAILURE = [RuntimeError]

class Breaks(torch.autograd.Function):  # its fourth reverse pass raises
    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        CALLS[0] += 1
        if CALLS[0] == 4:
            raise FAILURE[0]("broken backward on pass 4")
        return grad * 2

def breaks(x):
    return Breaks.apply(x)
"""

X = "[0.3, -1.2, 0.5, 2.0, -0.7, 0.1, 1.5, -0.4, 0.9, -2.2]"
X23 = "[[0.3, -1.2, 0.5], [2.0, -0.7, 0.1]]"
F64 = ("--dtype", "float64")


@pytest.fixture
def mod(workdir):
    write_module(workdir, "streammod", SOURCE)
    import importlib

    return importlib.import_module("streammod")


def _tensor(literal: str) -> torch.Tensor:
    import yaml

    return torch.tensor(yaml.safe_load(literal), dtype=torch.float64)


def _stream(*args: str) -> np.ndarray:
    run = jac(*args, "-o", "J.npy", "--max-memory", "100", "--dtype", "float64")
    assert run.code == 0, run
    assert "memory: streamed to J.npy" in run.stderr, run
    return np.load("J.npy", allow_pickle=False)


REFERENCES = {"rev": torch.func.jacrev, "fwd": torch.func.jacfwd}


@pytest.mark.parametrize(
    "command, name, literal, options, ref",
    [
        ("jacrev", "f", X, [], "rev"),
        ("jacfwd", "f", X, [], "fwd"),
        ("jacobian", "wide", X23, [], "fwd"),  # auto: fewer passes
        ("jacobian", "wide", X23, ["--mode", "rev"], "rev"),
        ("jacrev", "wide", X23, ["--engine", "autograd"], "rev"),
        ("jacfwd", "f", X, ["--engine", "func"], "fwd"),
    ],
)
def test_streamed_equals_torch_func_and_the_in_memory_result(mod, command, name, literal, options, ref):
    x = _tensor(literal)
    fn = getattr(mod, name)
    streamed = _stream(command, f"streammod:{name}", "-p", literal, *options)
    np.testing.assert_array_equal(streamed, REFERENCES[ref](fn)(x).numpy())
    other = REFERENCES["fwd" if ref == "rev" else "rev"]
    np.testing.assert_allclose(streamed, other(fn)(x).numpy(), rtol=1e-13, atol=1e-15)
    whole = jac(command, f"streammod:{name}", "-p", literal, *options, "--dtype", "float64", "-o", "M.npy")
    assert whole.code == 0 and "memory:" not in whole.stderr, whole
    np.testing.assert_allclose(streamed, np.load("M.npy"), rtol=1e-13, atol=1e-15)


def test_auto_mode_streams_by_the_mode_with_fewer_passes(mod):
    run = jac("jacobian", "streammod:wide", "-p", X23, "-o", "J.npy", "--max-memory", "100")
    assert "columns" in run.stderr and "forward mode" in run.stderr, run
    run = jac("jacobian", "streammod:f", "-p", X, "-o", "J.npy", "--max-memory", "100")
    assert "rows" in run.stderr and "reverse mode" in run.stderr, run


def test_flatten_writes_the_matrix_with_the_same_bytes(mod):
    x = _tensor(X23)
    for command in ("jacrev", "jacfwd"):
        flat = _stream(command, "streammod:wide", "-p", X23, "--flatten")
        assert flat.shape == (20, 6)
        want = REFERENCES[command[3:]](mod.wide)(x).reshape(20, 6).numpy()
        np.testing.assert_array_equal(flat, want)


XY = ("-p", "[0.5, -1.0, 2.0]", "-p", "[1.0, 2.0, -3.0, 0.5]")


def _xy() -> tuple[torch.Tensor, torch.Tensor]:
    return _tensor(XY[1]), _tensor(XY[3])


def test_argnums_with_select_streams_one_block(mod):
    block = _stream("jacrev", "streammod:two", *XY, "--argnums", "0,1", "--select", "jacobian.1")
    np.testing.assert_array_equal(block, torch.func.jacrev(mod.two, argnums=1)(*_xy()).numpy())
    block = _stream("jacfwd", "streammod:two", *XY, "--argnums", "1")
    np.testing.assert_array_equal(block, torch.func.jacfwd(mod.two, argnums=1)(*_xy()).numpy())


def test_forward_mode_without_a_formula_falls_back_to_rows(mod):
    x = _tensor(X)
    run = jac(
        "jacfwd", "streammod:no_forward", "-p", X, "--dtype", "float64", "-o", "J.npy", "--max-memory", "100"
    )
    assert run.code == 0, run
    assert "fell back to torch.func vjp over row chunks" in run.stderr, run
    np.testing.assert_array_equal(np.load("J.npy"), torch.func.jacrev(mod.no_forward)(x).numpy())


def test_small_chunks_in_memory_when_only_the_working_memory_would_not_fit(mod):
    x = _tensor(X)
    # the result is 7 x 10 float64 = 560 bytes; all passes at once need about 3.2 KiB
    for command, unit in (("jacrev", "rows"), ("jacfwd", "columns")):
        want = REFERENCES[command[3:]](mod.f)(x).numpy()
        run = jac(command, "streammod:f", "-p", X, *F64, "--max-memory", "2000", "--format", "npz")
        assert run.code == 0, run
        assert "memory: computed in chunks of" in run.stderr and unit in run.stderr, run
        np.testing.assert_array_equal(run.npz()["jacobian"], want)
    several = jac(
        "jacrev", "streammod:two", *XY, "--argnums", "0,1", *F64, "--max-memory", "1000", "--format", "npz"
    )
    assert several.code == 0 and "computed in chunks" in several.stderr, several
    want = torch.func.jacrev(mod.two, argnums=(0, 1))(*_xy())
    for i in (0, 1):
        np.testing.assert_array_equal(several.npz()[f"jacobian.{i}"], want[i].numpy())


def test_a_disk_too_small_is_an_input_error_before_any_work(mod, monkeypatch):
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 300, 300))
    run = jac("jacrev", "streammod:f", "-p", X, *F64, "-o", "J.npy", "--max-memory", "100")
    assert_clean_error(run, 2, "needs 560 bytes", "has 300 bytes free")
    assert not [n for n in os.listdir(".") if n.startswith(("J", ".J"))]


@pytest.mark.parametrize(
    "failure, code, needle",
    [(RuntimeError, 3, "broken backward on pass 4"), (KeyboardInterrupt, 130, "interrupted")],
)
def test_an_error_mid_stream_leaves_no_file_and_keeps_the_old_one(mod, failure, code, needle):
    mod.FAILURE[0] = failure
    np.save("J.npy", np.arange(3.0))
    run = jac(
        "jacrev",
        "streammod:breaks",
        "-p",
        X,
        *F64,
        "-o",
        "J.npy",
        "--max-memory",
        "100",
        "--engine",
        "autograd",
    )
    assert_clean_error(run, code, needle)
    assert mod.CALLS[0] == 4  # it failed mid-way, after rows had been written
    np.testing.assert_array_equal(np.load("J.npy"), np.arange(3.0))
    assert not [n for n in os.listdir(".") if n.endswith(".tmp")]


@pytest.mark.parametrize("out", [["-o", "J.npz"], ["-o", "J.json"], ["--format", "npz"], []])
def test_a_result_that_cannot_be_streamed_is_refused(mod, out):
    run = jac("jacrev", "streammod:f", "-p", X, *F64, "--max-memory", "100", *out)
    assert_clean_error(run, 2, "560 bytes", "more than --max-memory", "-o J.npy")
    assert sorted(os.listdir(".")) in (["streammod.py"], ["__pycache__", "streammod.py"])


@pytest.mark.cuda
def test_streaming_on_cuda_equals_torch_func_on_the_cpu(mod):
    x = _tensor(X)
    streamed = _stream("jacrev", "streammod:f", "-p", X, "--device", "cuda")
    np.testing.assert_allclose(streamed, torch.func.jacrev(mod.f)(x).numpy(), rtol=1e-12, atol=1e-14)
