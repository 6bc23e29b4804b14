"""Breadth tests for the commands that came after the core four: ``jacobian --mode``, ``hessian``,
``hvp``, ``--engine`` (with every fallback route on a real case), ``--batch-dim``,
``--wrt params`` / ``--state`` and ``info``.

Every number is compared with torch called directly in the test (float64, tight tolerances),
a few also with central finite differences. All runs are in-process (``conftest.jac``).
"""

from __future__ import annotations

import importlib
import json
import platform
import re

import numpy as np
import pytest
import torch
import torch.func as tf
from conftest import assert_clean_error, jac, write_module

FAST = ("--repeat", "1", "--warmup", "0")

SOURCE = """
import time

import torch
from torch import nn


# --- smooth functions ---------------------------------------------------------------------

def widen(x):  # 2 -> 5
    return torch.cat([x.sin(), x.cos() * x.sum(), (x[0] * x[1]).reshape(1)])


def narrow(x):  # n -> 2
    return torch.stack([x.sin().sum(), (x ** 2).prod()])


def square(x):  # n -> n
    return x.tanh() * x.sum()


def grid(x):  # (2, 3) -> (3,)
    return (x.sin() * x.cos().sum(0)).sum(0) + x[0] * x[1] ** 2


def wide(x):  # 2 -> 5000: too big to measure both modes, forward by pass counts
    return torch.outer(torch.linspace(0.0, 1.0, 2500, dtype=x.dtype), x).sin().reshape(-1) * x.sum()


def long(x):  # 5000 -> 2: reverse by pass counts
    return torch.stack([(x.sin() * x).sum(), (x ** 2).sum().sqrt()])


SLOW = 0.02


def slow_square(x):  # slow to call (no time to measure both modes): 4 -> 4, a tie: reverse (docs/engines.md)
    time.sleep(SLOW)
    return square(x)


def slow_widen(x):  # 2 -> 5: forward
    time.sleep(SLOW)
    return widen(x)


def slow_grid(x):  # 6 -> 3: reverse
    time.sleep(SLOW)
    return grid(x)


def two(x, y):  # x (2,), y (3,) -> (3,)
    return x.sum() * y.sin() + (x ** 2).prod() * y ** 2


def pair(x, y):  # a tuple output
    return x.sin() * y.sum(), (x * x).sum() * y


def scalar(x):
    return (x.sin() * x ** 2).sum() + x.prod() + (x ** 3).sum() * 0.1


def scalar2(x, y):
    return (x.sin() * y.sum()).sum() + (x ** 2).sum() * (y ** 3).sum()


def per_row(x):  # a vector output: not for hessian
    return x.sin() * 2


def mlp_like(x):  # per sample: (3,) -> (2,)
    return torch.stack([(x.tanh() * torch.arange(1.0, 4.0, dtype=x.dtype)).sum(), (x ** 2).sum().sqrt()])


def mix(x, y):  # per sample: x (3,), y (3,) -> (3,)
    return x.sin() * y + (x * y).sum() * x.cos()


# --- a custom autograd.Function with backward only (no jvp, no vmap rule) -------------------

class Cube(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


def custom(x):
    return Cube.apply(x).sin() + x


def custom_scalar(x):
    return (Cube.apply(x).sin() * x).sum()


class OldCube(torch.autograd.Function):  # the old style: forward(ctx, ...), no setup_context
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g


def old_custom(x):
    return OldCube.apply(x).sin() + x


# --- builtins without forward-mode formulas -------------------------------------------------

def dist(a):
    return torch.cdist(a, a.flip(0) + 1.0)


def attention(q):  # (1, 2, 4, 8): the CPU flash kernel
    return torch.nn.functional.scaled_dot_product_attention(q, q.flip(-1) * 0.5, q * 2.0)


# --- functions vmap cannot batch ------------------------------------------------------------

def uses_item(x):
    s = x.sum().item()
    return x.sin() * s + x ** 2


def branches(x):
    if x.sum() > 0:
        return x.sin() * x.sum()
    return x.cos() * x.prod()


def writes_in_place(x):
    out = torch.zeros(x.shape[0] + 1, dtype=x.dtype)
    out[0] = x[0] * x[1]
    out[1:] = x.sin()
    return out * 2


def scalar_item(x):
    return (x ** 3).sum() * (1.0 + abs(x.sum().item()))


# --- modules --------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x)))


def make():
    torch.manual_seed(0)
    return Net().double()


def make_other():
    torch.manual_seed(1)
    return Net().double()


class ScalarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.v = nn.Parameter(torch.tensor([0.5, -1.0]))

    def forward(self, x):
        return (torch.tanh(self.lin(x)) * self.v).sum()


def make_scalar():
    torch.manual_seed(0)
    return ScalarNet().double()


class NotATensor:
    def __init__(self):
        self.value = 3
"""


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def mod(workdir):
    """The test module ``bmod`` in a fresh working directory, imported for the references."""
    write_module(workdir, "bmod", SOURCE)
    return importlib.import_module("bmod")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def save(path, array) -> str:
    np.save(path, np.asarray(array, dtype=np.float64))
    return str(path)


def t(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def n(tensor) -> np.ndarray:
    return tensor.detach().numpy()


def close(actual, expected, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    expected = n(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.dtype == np.float64, actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def run_ok(*args: str):
    """``jac ARGS --format npz`` (fast timings): the results and the run."""
    run = jac(*args, "--format", "npz", *FAST)
    assert run.code == 0, run
    return run.npz(), run


def run_once(*args: str):
    """``jac ARGS --format npz`` as a one-shot run (no --repeat): the results and the run."""
    run = jac(*args, "--format", "npz")
    assert run.code == 0, run
    return run.npz(), run


def notes(run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("jac: note:")]


def footer(run) -> str:
    lines = [line for line in run.stderr.splitlines() if "derivative/function" in line]
    assert len(lines) == 1, run
    return lines[0]


def assert_no_fallback(run) -> None:
    assert notes(run) == [], run
    assert "note:" not in run.stderr, run
    assert "(fallback)" not in footer(run), run


def assert_one_fallback(run, *needles: str) -> str:
    found = notes(run)
    assert len(found) == 1, run
    assert "fell back" in found[0], run
    for needle in needles:
        assert needle in found[0], (needle, run)
    assert "(fallback)" in footer(run), run
    return found[0]


def fd_jacobian(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences, column by column: shape output.shape + x.shape."""
    out_shape = f(x).shape
    cols = []
    flat = x.reshape(-1)
    for k in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[k] = eps
        cols.append(
            ((f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * eps)).reshape(-1)
        )
    return torch.stack(cols, dim=-1).reshape(out_shape + x.shape)


# --- 1. jac jacobian --mode ------------------------------------------------------------------

SMALL_CASES = [  # small and fast: auto times both modes on the first call and keeps the faster
    pytest.param("widen", (2,), id="2-to-5"),
    pytest.param("narrow", (5,), id="5-to-2"),
    pytest.param("square", (4,), id="4-to-4"),
    pytest.param("grid", (2, 3), id="2d-6-to-3"),
]
COUNTED_CASES = [  # too big or too slow to measure: the pass counts decide
    # func, input shape, input elements, output elements, the mode auto must pick
    pytest.param("wide", (2,), 2, 5000, "forward", id="2-to-5000-forward"),
    pytest.param("long", (5000,), 5000, 2, "reverse", id="5000-to-2-reverse"),
    pytest.param("slow_widen", (2,), 2, 5, "forward", id="slow-2-to-5-forward"),
    pytest.param("slow_square", (4,), 4, 4, "reverse", id="slow-tie-reverse"),
    pytest.param("slow_grid", (2, 3), 6, 3, "reverse", id="slow-2d-6-to-3-reverse"),
]
_ROUTE = {  # what may run for each mode
    "forward": ("jacobian via torch.func.jacfwd",),
    "reverse": (
        "jacobian via torch.func.jacrev",
        "jacobian via a loop of reverse passes",
        "jacobian via batched reverse passes",
    ),
}


def assert_route(line: str, mode: str) -> None:
    assert any(route in line for route in _ROUTE[mode]), (mode, line)


def _mode_lines(run) -> list[str]:
    """The mode line under the Jacobian in the text output, and the one in the timing footer."""
    under = [line for line in run.stdout.splitlines() if "mode: " in line]
    assert len(under) == 1, run
    return [under[0], footer(run)]


def _stated_mode(line: str) -> str:
    modes = [m for m in ("forward", "reverse") if f"mode: {m}" in line]
    assert len(modes) == 1, line
    return modes[0]


@pytest.mark.parametrize("name,shape", SMALL_CASES)
@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
def test_jacobian_modes_equal_torch(mod, workdir, name, shape, mode):
    x = rng(1).standard_normal(shape)
    px = save(workdir / "x.npy", x)
    res, run = run_ok("jacobian", f"bmod:{name}", "-p", px, "--mode", mode)
    assert list(res) == ["jacobian"]
    f = getattr(mod, name)
    close(res["jacobian"], tf.jacfwd(f)(t(x)))
    close(res["jacobian"], tf.jacrev(f)(t(x)))
    line = footer(run)
    stated = _stated_mode(line)
    if mode != "auto":
        assert stated == {"fwd": "forward", "rev": "reverse"}[mode], run
    assert_route(line, stated)  # the route that ran is the mode it states
    assert_no_fallback(run)


def timed_routes(line: str) -> dict[str, float]:
    """The routes a trial timed, from the footer: {label: seconds}."""
    found = re.search(r"\(fastest on the first call of (.*)\)", line)
    assert found, line
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    return {
        m.group(1): float(m.group(2)) * unit[m.group(3)]
        for m in re.finditer(r"([^,]+?) ([0-9.]+) (us|ms|s)(?:, |$)", found.group(1))
    }


@pytest.mark.parametrize("name,shape", SMALL_CASES)
def test_jacobian_auto_small_problem_measures_both_modes(mod, workdir, name, shape):
    """With --repeat, auto times every route of both modes on the first call, keeps the fastest
    and states the mode of the route it kept."""
    px = save(workdir / "x.npy", rng(2).standard_normal(shape))
    run = jac("jacobian", f"bmod:{name}", "-p", px, *FAST)
    assert run.code == 0, run
    under, line = _mode_lines(run)
    assert "timed on the first call" in under, run
    times = timed_routes(line)
    assert "torch.func.jacfwd" in times and "torch.func.jacrev" in times, line
    kept = min(times, key=times.get)
    assert f"jacobian via {kept} (" in line, line
    stated = _stated_mode(line)
    assert stated == ("forward" if kept == "torch.func.jacfwd" else "reverse"), line
    assert _stated_mode(under) == stated, run


@pytest.mark.parametrize(("name", "shape", "n_in", "n_out", "picked"), COUNTED_CASES)
def test_jacobian_auto_by_pass_counts(mod, workdir, name, shape, n_in, n_out, picked):
    x = rng(3).standard_normal(shape)
    run = jac("jacobian", f"bmod:{name}", "-p", save(workdir / "x.npy", x), *FAST)
    assert run.code == 0, run
    for line in _mode_lines(run):
        assert _stated_mode(line) == picked, run
        # why: the two sizes that decided it
        assert f"{n_in} input elements" in line and f"{n_out} output elements" in line, run
    assert_route(footer(run), picked)
    res, _ = run_ok("jacobian", f"bmod:{name}", "-p", save(workdir / "x.npy", x))
    f = getattr(mod, name)
    reference = tf.jacfwd(f) if picked == "forward" else tf.jacrev(f)  # the cheap one for these sizes
    close(res["jacobian"], reference(t(x)))
    if name.startswith("slow"):  # small enough for both
        for mode in ("fwd", "rev"):
            res, _ = run_ok("jacobian", f"bmod:{name}", "-p", save(workdir / "x.npy", x), "--mode", mode)
            close(res["jacobian"], reference(t(x)))


def test_jacobian_several_argnums(mod, workdir):
    x, y = rng(3).standard_normal(2), rng(4).standard_normal(3)
    px, py = save(workdir / "x.npy", x), save(workdir / "y.npy", y)
    expected = tf.jacrev(mod.two, argnums=(0, 1))(t(x), t(y))
    for mode in ("auto", "fwd", "rev"):
        res, _ = run_ok("jacobian", "bmod:two", "-p", px, "-p", py, "--argnums", "0,1", "--mode", mode)
        assert list(res) == ["jacobian.0", "jacobian.1"]
        close(res["jacobian.0"], expected[0])
        close(res["jacobian.1"], expected[1])
    # one argnum of two; and in reverse order: keys are positions in --argnums
    res, _ = run_ok("jacobian", "bmod:two", "-p", px, "-p", py, "--argnums", "1")
    close(res["jacobian"], tf.jacfwd(mod.two, argnums=1)(t(x), t(y)))
    res, _ = run_ok("jacobian", "bmod:two", "-p", px, "-p", py, "--argnums", "1,0")
    close(res["jacobian.0"], expected[1])
    close(res["jacobian.1"], expected[0])


def test_jacobian_tuple_output_keys(mod, workdir):
    x, y = rng(5).standard_normal(2), rng(6).standard_normal(3)
    px, py = save(workdir / "x.npy", x), save(workdir / "y.npy", y)
    expected = tf.jacfwd(mod.pair, argnums=(0, 1))(t(x), t(y))
    res, _ = run_ok("jacobian", "bmod:pair", "-p", px, "-p", py, "--argnums", "0,1")
    assert sorted(res) == ["jacobian.0.0", "jacobian.0.1", "jacobian.1.0", "jacobian.1.1"]
    for i in range(2):
        for j in range(2):
            close(res[f"jacobian.{i}.{j}"], expected[i][j])


@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
def test_jacobian_flatten(mod, workdir, mode):
    x = rng(7).standard_normal((2, 3))
    px = save(workdir / "x.npy", x)
    res, _ = run_ok("jacobian", "bmod:grid", "-p", px, "--mode", mode, "--flatten")
    full = tf.jacfwd(mod.grid)(t(x))
    close(res["jacobian"], full.reshape(3, 6))


def test_jacobian_matches_finite_differences(mod, workdir):
    x = rng(8).standard_normal((2, 3))
    res, _ = run_ok("jacobian", "bmod:grid", "-p", save(workdir / "x.npy", x))
    close(res["jacobian"], fd_jacobian(mod.grid, t(x)), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
@pytest.mark.parametrize("dim", [0, 1])
def test_jacobian_batch_dim(mod, workdir, mode, dim):
    xb = rng(9).standard_normal((4, 3) if dim == 0 else (3, 4))
    res, run = run_ok(
        "jacobian",
        "bmod:mlp_like",
        "-p",
        save(workdir / "x.npy", xb),
        "--batch-dim",
        str(dim),
        "--mode",
        mode,
    )
    samples = [t(xb).select(dim, b) for b in range(4)]
    expected = torch.stack([tf.jacrev(mod.mlp_like)(s) for s in samples])
    close(res["jacobian"], expected)
    assert_no_fallback(run)
    assert_route(footer(run), _stated_mode(footer(run)))


# --- 2. jac hessian, jac hvp ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2, 3)], ids=["vector", "matrix"])
def test_hessian_equals_torch(mod, workdir, shape):
    x = rng(10).standard_normal(shape)
    res, run = run_ok("hessian", "bmod:scalar", "-p", save(workdir / "x.npy", x))
    assert list(res) == ["hessian"]
    expected = tf.hessian(mod.scalar)(t(x))
    assert expected.shape == shape + shape
    close(res["hessian"], expected)
    close(res["hessian"], torch.autograd.functional.hessian(mod.scalar, t(x)))
    assert_no_fallback(run)


def test_hessian_matches_finite_differences_of_the_gradient(mod, workdir):
    x = rng(11).standard_normal(4)
    res, _ = run_ok("hessian", "bmod:scalar", "-p", save(workdir / "x.npy", x))
    close(res["hessian"], fd_jacobian(tf.grad(mod.scalar), t(x)), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("argnums", [(0, 1), (1, 0)], ids=["0,1", "1,0"])
def test_hessian_several_argnums(mod, workdir, argnums):
    x, y = rng(12).standard_normal(2), rng(13).standard_normal(3)
    px, py = save(workdir / "x.npy", x), save(workdir / "y.npy", y)
    res, _ = run_ok("hessian", "bmod:scalar2", "-p", px, "-p", py, "--argnums", ",".join(map(str, argnums)))
    assert sorted(res) == ["hessian.0.0", "hessian.0.1", "hessian.1.0", "hessian.1.1"]
    expected = tf.hessian(mod.scalar2, argnums=argnums)(t(x), t(y))
    for i in range(2):
        for j in range(2):
            close(res[f"hessian.{i}.{j}"], expected[i][j])
    # positions in --argnums: hessian.0.1 is d2f / d(argnums[0]) d(argnums[1])
    shapes = {0: (2,), 1: (3,)}
    assert res["hessian.0.1"].shape == shapes[argnums[0]] + shapes[argnums[1]]


def test_hessian_second_argnum_alone(mod, workdir):
    x, y = rng(14).standard_normal(2), rng(15).standard_normal(3)
    res, _ = run_ok(
        "hessian",
        "bmod:scalar2",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "--argnums",
        "1",
    )
    assert list(res) == ["hessian"]
    close(res["hessian"], tf.hessian(mod.scalar2, argnums=1)(t(x), t(y)))


@pytest.mark.parametrize("command", ["hessian", "hvp"])
def test_hessian_and_hvp_need_one_element_output(mod, workdir, command):
    px = save(workdir / "x.npy", rng(16).standard_normal(3))
    extra = ("-t", "ones") if command == "hvp" else ()
    run = jac(command, "bmod:per_row", "-p", px, *extra)
    assert_clean_error(run, 2, "one-element", "(3,)")


@pytest.mark.parametrize("shape", [(4,), (2, 3)], ids=["vector", "matrix"])
def test_hvp_equals_jvp_of_grad(mod, workdir, shape):
    x, v = rng(17).standard_normal(shape), rng(18).standard_normal(shape)
    res, run = run_ok(
        "hvp", "bmod:scalar", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)
    )
    assert list(res) == ["output", "grad", "hvp"]
    close(res["output"], mod.scalar(t(x)))
    close(res["grad"], tf.grad(mod.scalar)(t(x)))
    close(res["hvp"], tf.jvp(tf.grad(mod.scalar), (t(x),), (t(v),))[1])
    close(res["hvp"], torch.autograd.functional.hvp(mod.scalar, t(x), t(v))[1])
    assert_no_fallback(run)


def test_hvp_matches_finite_differences(mod, workdir):
    x, v = rng(19).standard_normal(4), rng(20).standard_normal(4)
    res, _ = run_ok("hvp", "bmod:scalar", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v))
    g = tf.grad(mod.scalar)
    eps = 1e-6
    fd = (g(t(x) + eps * t(v)) - g(t(x) - eps * t(v))) / (2 * eps)
    close(res["hvp"], fd, rtol=1e-7, atol=1e-8)


def test_hvp_several_primals(mod, workdir):
    x, y = rng(21).standard_normal(2), rng(22).standard_normal(3)
    v, w = rng(23).standard_normal(2), rng(24).standard_normal(3)
    res, _ = run_ok(
        "hvp",
        "bmod:scalar2",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-t",
        save(workdir / "v.npy", v),
        "-t",
        save(workdir / "w.npy", w),
    )
    assert list(res) == ["output", "grad.0", "grad.1", "hvp.0", "hvp.1"]
    close(res["output"], mod.scalar2(t(x), t(y)))
    grads = tf.grad(mod.scalar2, argnums=(0, 1))(t(x), t(y))
    products = tf.jvp(tf.grad(mod.scalar2, argnums=(0, 1)), (t(x), t(y)), (t(v), t(w)))[1]
    for i in range(2):
        close(res[f"grad.{i}"], grads[i])
        close(res[f"hvp.{i}"], products[i])


def test_hvp_tangent_defaults_to_one_for_one_element_primal(mod, workdir):
    res, _ = run_ok("hvp", "bmod:scalar", "-p", "0.7", "--dtype", "float64")
    x = torch.tensor(0.7, dtype=torch.float64)
    close(res["output"], mod.scalar(x))
    close(res["grad"], tf.grad(mod.scalar)(x))
    close(res["hvp"], tf.jvp(tf.grad(mod.scalar), (x,), (torch.ones_like(x),))[1])


def test_hvp_tangent_required_for_several_elements(mod, workdir):
    run = jac("hvp", "bmod:scalar", "-p", save(workdir / "x.npy", rng(25).standard_normal(3)))
    assert_clean_error(run, 2, "--tangents")


# --- 3. --engine: every fallback on a real case --------------------------------------------


def test_fallback_jvp_custom_function_double_backward(mod, workdir):
    x, v = rng(30).standard_normal((3, 2)), rng(31).standard_normal((3, 2))
    res, run = run_once(
        "jvp", "bmod:custom", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)
    )
    out, expected = torch.autograd.functional.jvp(mod.custom, t(x), t(v))
    close(res["output"], out)
    close(res["jvp"], expected)
    # and the analytic derivative: cos(x^3) * 3x^2 + 1
    close(res["jvp"], (torch.cos(t(x) ** 3) * 3 * t(x) ** 2 + 1) * t(v))
    # one-shot: the double-backward trick goes first (it imports nothing), so nothing fails
    assert_no_fallback(run)
    assert "jvp via double-backward" in footer(run), run
    # with --repeat every route is tried: forward mode cannot run, a reverse route must
    res, run = run_ok("jvp", "bmod:custom", "-p", "x.npy", "-t", "v.npy")
    close(res["jvp"], expected)
    note = assert_one_fallback(run, "torch.func.jvp: an operator has no forward-mode formula")
    assert "forward-mode AD (torch.autograd.forward_ad): an operator has no forward-mode" in note, note
    assert "jvp via double-backward" in footer(run) or "jvp via reverse-mode Jacobian" in footer(run), run


def test_fallback_jvp_old_style_custom_function(mod, workdir):
    """An autograd.Function in the old style (forward(ctx, ...)): torch.func cannot run it at all."""
    x, v = rng(32).standard_normal(3), rng(33).standard_normal(3)
    res, run = run_once(
        "jvp", "bmod:old_custom", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)
    )
    close(res["jvp"], torch.autograd.functional.jvp(mod.old_custom, t(x), t(v))[1])
    assert_no_fallback(run)  # one-shot: the double-backward trick goes first
    res, run = run_ok("jvp", "bmod:old_custom", "-p", "x.npy", "-t", "v.npy")
    close(res["jvp"], torch.autograd.functional.jvp(mod.old_custom, t(x), t(v))[1])
    note = assert_one_fallback(run, "torch.func.jvp: torch.func cannot transform the function")
    # nothing is batched here: the reason given must not blame vmap
    assert "vmap" not in note, note


def test_engine_func_old_style_custom_function_names_the_real_cause(mod, workdir):
    run = jac(
        "jvp",
        "bmod:old_custom",
        "-p",
        save(workdir / "x.npy", rng(34).standard_normal(3)),
        "-t",
        "ones",
        "--engine",
        "func",
    )
    assert_clean_error(run, 3, "setup_context")
    # a plain jvp batches nothing: advice about vmap and looping is wrong here
    assert "control flow" not in run.stderr and "loop" not in run.stderr, run


def test_fallback_jvp_cdist(mod, workdir):
    a, v = rng(34).standard_normal((3, 2)), rng(35).standard_normal((3, 2))
    res, run = run_ok("jvp", "bmod:dist", "-p", save(workdir / "a.npy", a), "-t", save(workdir / "v.npy", v))
    close(res["output"], mod.dist(t(a)))
    jac_full = torch.autograd.functional.jacobian(mod.dist, t(a))
    close(res["jvp"], torch.tensordot(jac_full, t(v), dims=2))

    def explicit(a):  # the same distances, by operators with forward-mode formulas
        b = a.flip(0) + 1.0
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).sqrt()

    close(res["jvp"], tf.jvp(explicit, (t(a),), (t(v),))[1])
    eps = 1e-6
    close(
        res["jvp"],
        (mod.dist(t(a) + eps * t(v)) - mod.dist(t(a) - eps * t(v))) / (2 * eps),
        rtol=1e-7,
        atol=1e-8,
    )
    assert_one_fallback(run)


def test_fallback_jvp_flash_attention_reverse_jacobian_times_v(mod, workdir):
    q, v = rng(36).standard_normal((1, 2, 4, 8)), rng(37).standard_normal((1, 2, 4, 8))
    res, run = run_ok(
        "jvp", "bmod:attention", "-p", save(workdir / "q.npy", q), "-t", save(workdir / "v.npy", v)
    )

    def explicit(q):
        k, val = q.flip(-1) * 0.5, q * 2.0
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
        return weights @ val

    out, expected = tf.jvp(explicit, (t(q),), (t(v),))
    close(res["output"], out)
    close(res["jvp"], expected)
    jac_full = torch.autograd.functional.jacobian(mod.attention, t(q))
    close(res["jvp"], torch.tensordot(jac_full, t(v), dims=4))
    assert_one_fallback(run, "reverse")
    assert "Jacobian times v" in footer(run), run


@pytest.mark.parametrize("command", ["jacfwd", "jacobian"])
def test_fallback_jacfwd_custom_function_to_reverse(mod, workdir, command):
    x = rng(38).standard_normal(3)
    extra = ("--mode", "fwd") if command == "jacobian" else ()
    res, run = run_ok(command, "bmod:custom", "-p", save(workdir / "x.npy", x), *extra)
    close(res["jacobian"], tf.jacrev(mod.custom)(t(x)))
    close(res["jacobian"], torch.autograd.functional.jacobian(mod.custom, t(x)))
    assert_one_fallback(run, "reverse")


def test_jacobian_auto_states_the_mode_that_ran(mod, workdir):
    """Forward mode cannot run through the custom Function: auto must not claim (or time) it."""
    x = rng(38).standard_normal(3)
    px = save(workdir / "x.npy", x)
    for once in (True, False, False, False):  # one-shot, then timed trials (so try several times)
        res, run = (run_once if once else run_ok)("jacobian", "bmod:custom", "-p", px)
        close(res["jacobian"], torch.autograd.functional.jacobian(mod.custom, t(x)))
        line = footer(run)
        assert_route(line, "reverse")  # what ran: reverse mode...
        assert _stated_mode(line) == "reverse", run  # ... so that is the mode to state
        if not once and "fastest" in line:
            assert "torch.func.jacfwd" not in timed_routes(line), line  # it could not run


def test_fallback_hessian_custom_function(mod, workdir):
    x = rng(39).standard_normal(3)
    res, run = run_ok("hessian", "bmod:custom_scalar", "-p", save(workdir / "x.npy", x))
    close(res["hessian"], torch.autograd.functional.hessian(mod.custom_scalar, t(x)))
    close(res["hessian"], fd_jacobian(tf.grad(mod.custom_scalar), t(x)), rtol=1e-7, atol=1e-8)
    note = assert_one_fallback(run)
    assert "reverse over reverse" in note or "double-backward passes" in note, note


def test_fallback_hvp_custom_function(mod, workdir):
    x, v = rng(40).standard_normal(3), rng(41).standard_normal(3)
    res, run = run_once(
        "hvp", "bmod:custom_scalar", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)
    )
    close(res["output"], mod.custom_scalar(t(x)))
    close(res["grad"], torch.autograd.functional.vjp(mod.custom_scalar, t(x))[1])
    close(res["hvp"], torch.autograd.functional.hvp(mod.custom_scalar, t(x), t(v))[1])
    assert_no_fallback(run)  # one-shot: reverse over reverse goes first (it imports nothing)
    assert "hvp via reverse over reverse" in footer(run), run
    res, run = run_ok("hvp", "bmod:custom_scalar", "-p", "x.npy", "-t", "v.npy")
    close(res["hvp"], torch.autograd.functional.hvp(mod.custom_scalar, t(x), t(v))[1])
    assert_one_fallback(run, "reverse", "torch.func jvp of grad (forward over reverse): an operator")


def _batched_reference(command, f, xb, dim, vb=None, ub=None):
    samples = range(xb.shape[dim])
    xs = [t(xb).select(dim, b) for b in samples]
    if command == "jvp":
        return torch.stack([tf.jvp(f, (x,), (t(vb).select(dim, b),))[1] for b, x in zip(samples, xs)])
    if command == "vjp":
        return torch.stack([tf.vjp(f, x)[1](t(ub)[b])[0] for b, x in zip(samples, xs)])
    if command in ("jacrev", "jacobian"):
        return torch.stack([tf.jacrev(f)(x) for x in xs])
    if command == "hessian":
        return torch.stack([tf.hessian(f)(x) for x in xs])
    raise AssertionError(command)


@pytest.mark.parametrize("name", ["uses_item", "branches", "writes_in_place"])
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev", "jacobian"])
def test_fallback_batch_dim_loops_over_samples(mod, workdir, name, command):
    f = getattr(mod, name)
    xb = rng(42).standard_normal((4, 3))
    xb[1] *= -1.0  # both branches of `branches`
    xb[2] = -np.abs(xb[2])
    xb[3] = np.abs(xb[3])
    vb = rng(43).standard_normal((4, 3))
    n_out = f(t(xb[0])).shape[0]
    ub = rng(44).standard_normal((4, n_out))
    args = ["-p", save(workdir / "x.npy", xb), "--batch-dim", "0"]
    if command == "jvp":
        args += ["-t", save(workdir / "v.npy", vb)]
    if command == "vjp":
        args += ["-u", save(workdir / "u.npy", ub)]
    res, run = run_ok(command, f"bmod:{name}", *args)
    key = {"jvp": "jvp", "vjp": "vjp.0"}.get(command, "jacobian")
    close(res[key], _batched_reference(command, f, xb, 0, vb, ub))
    if "output" in res:
        close(res["output"], torch.stack([f(t(x)) for x in xb]))
    assert_one_fallback(run, "looping over samples")
    assert "per sample (loop)" in footer(run), run


def test_fallback_batch_dim_hessian_loops_over_samples(mod, workdir):
    xb = rng(45).standard_normal((3, 4))
    res, run = run_ok("hessian", "bmod:scalar_item", "-p", save(workdir / "x.npy", xb), "--batch-dim", "0")
    close(res["hessian"], _batched_reference("hessian", mod.scalar_item, xb, 0))
    assert_one_fallback(run, "looping over samples")


BATCHED_FALLBACKS = [
    # command, func, batched input shape: a per-sample fallback under --batch-dim
    pytest.param("jvp", "custom", (3, 4), id="jvp-custom-function"),
    pytest.param("vjp", "custom", (3, 4), id="vjp-custom-function"),
    pytest.param("jacfwd", "custom", (3, 4), id="jacfwd-custom-function"),
    pytest.param("jacobian", "custom", (3, 4), id="jacobian-custom-function"),
    pytest.param("hessian", "custom_scalar", (3, 4), id="hessian-custom-function"),
    pytest.param("hvp", "custom_scalar", (3, 4), id="hvp-custom-function"),
    pytest.param("jvp", "dist", (3, 3, 2), id="jvp-cdist"),
    pytest.param("jvp", "attention", (2, 1, 2, 4, 8), id="jvp-flash-attention"),
]


@pytest.mark.parametrize(("command", "name", "shape"), BATCHED_FALLBACKS)
def test_fallback_under_batch_dim(mod, workdir, command, name, shape):
    """The fallbacks above, per sample: --batch-dim must not lose them."""
    f = getattr(mod, name)
    g = rng(49)
    xb, vb = g.standard_normal(shape), g.standard_normal(shape)
    out_shape = tuple(f(t(xb[0])).shape)
    ub = g.standard_normal((shape[0],) + out_shape)
    args = [command, f"bmod:{name}", "-p", save(workdir / "x.npy", xb), "--batch-dim", "0"]
    if command in ("jvp", "hvp"):
        args += ["-t", save(workdir / "v.npy", vb)]
    if command == "vjp":
        args += ["-u", save(workdir / "u.npy", ub)]
    res, run = run_ok(*args)
    functional = torch.autograd.functional
    expected = []
    for b in range(shape[0]):
        x, v, u = t(xb[b]), t(vb[b]), t(ub[b])
        if command == "jvp":  # the reverse Jacobian times v: needs first derivatives only
            expected.append(torch.tensordot(functional.jacobian(f, x), v, dims=x.dim()))
        elif command == "vjp":
            expected.append(functional.vjp(f, x, u)[1])
        elif command in ("jacfwd", "jacobian"):
            expected.append(functional.jacobian(f, x))
        elif command == "hessian":
            expected.append(functional.hessian(f, x))
        else:
            expected.append(functional.hvp(f, x, v)[1])
    key = {"jvp": "jvp", "vjp": "vjp.0", "hessian": "hessian", "hvp": "hvp"}.get(command, "jacobian")
    close(res[key], torch.stack(expected))
    if "output" in res:
        close(res["output"], torch.stack([f(t(x)) for x in xb]))
    assert_one_fallback(run)


FUNC_ONLY_FAILURES = [
    pytest.param(["jvp", "bmod:custom", "-t", "V"], ("jvp function",), id="jvp-custom-function"),
    pytest.param(["jvp", "bmod:dist", "-t", "V"], ("forward AD",), id="jvp-cdist"),
    pytest.param(["jvp", "bmod:attention4", "-t", "V"], ("forward AD",), id="jvp-flash-attention"),
    pytest.param(["jacfwd", "bmod:custom"], ("Cube",), id="jacfwd-custom-function"),
    pytest.param(["hessian", "bmod:custom_scalar"], ("Cube",), id="hessian-custom-function"),
    pytest.param(
        ["jvp", "bmod:uses_item", "-t", "V", "--batch-dim", "0"], ("vmap", ".item()"), id="batch-item"
    ),
    pytest.param(
        ["jacrev", "bmod:branches", "--batch-dim", "0"], ("vmap", "control flow"), id="batch-control-flow"
    ),
]


@pytest.mark.parametrize(("args", "needles"), FUNC_ONLY_FAILURES)
def test_engine_func_never_falls_back(mod, workdir, args, needles):
    shape = (1, 2, 4, 8) if args[1] == "bmod:attention4" else (4, 3)
    args = ["bmod:attention" if a == "bmod:attention4" else a for a in args]
    x = save(workdir / "x.npy", rng(46).standard_normal(shape))
    v = save(workdir / "v.npy", rng(47).standard_normal(shape))
    args = [v if a == "V" else a for a in args]
    run = jac(*args, "-p", x, "--engine", "func")
    assert_clean_error(run, 3, *needles)
    assert "note:" not in run.stderr


def test_engine_func_error_points_at_auto(mod, workdir):
    x = save(workdir / "x.npy", rng(48).standard_normal(3))
    run = jac("jvp", "bmod:custom", "-p", x, "-t", "ones", "--engine", "func")
    assert_clean_error(run, 3, "forward", "--engine auto")


SMOOTH = [
    # command, func, extra inputs, keys
    pytest.param("jvp", "mix", ["-t", "V", "-t", "W"], id="jvp"),
    pytest.param("vjp", "mix", ["-u", "U"], id="vjp"),
    pytest.param("jacfwd", "mix", ["--argnums", "0,1"], id="jacfwd"),
    pytest.param("jacrev", "mix", ["--argnums", "0,1"], id="jacrev"),
    pytest.param("jacobian", "mix", ["--argnums", "0,1"], id="jacobian"),
    pytest.param("hessian", "scalar2", ["--argnums", "0,1"], id="hessian"),
    pytest.param("hvp", "scalar2", ["-t", "V", "-t", "W"], id="hvp"),
]


def _smooth_reference(mod, command, name, x, y, v, w, u):
    f = getattr(mod, name)
    X, Y = t(x), t(y)
    if command == "jvp":
        out, prod = tf.jvp(f, (X, Y), (t(v), t(w)))
        return {"output": out, "jvp": prod}
    if command == "vjp":
        out, fn = tf.vjp(f, X, Y)
        gx, gy = fn(t(u))
        return {"output": out, "vjp.0": gx, "vjp.1": gy}
    if command in ("jacfwd", "jacrev", "jacobian"):
        jx, jy = tf.jacrev(f, argnums=(0, 1))(X, Y)
        return {"jacobian.0": jx, "jacobian.1": jy}
    if command == "hessian":
        h = tf.hessian(f, argnums=(0, 1))(X, Y)
        return {f"hessian.{i}.{j}": h[i][j] for i in range(2) for j in range(2)}
    grads = tf.grad(f, argnums=(0, 1))(X, Y)
    products = tf.jvp(tf.grad(f, argnums=(0, 1)), (X, Y), (t(v), t(w)))[1]
    return {
        "output": f(X, Y),
        "grad.0": grads[0],
        "grad.1": grads[1],
        "hvp.0": products[0],
        "hvp.1": products[1],
    }


@pytest.mark.parametrize(("command", "name", "extra"), SMOOTH)
def test_engine_autograd_equals_func(mod, workdir, command, name, extra):
    g = rng(50)
    x, y, v, w, u = (g.standard_normal(3) for _ in range(5))
    files = {k: save(workdir / f"{k}.npy", a) for k, a in dict(V=v, W=w, U=u).items()}
    args = [command, f"bmod:{name}", "-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    args += [files.get(a, a) for a in extra]
    expected = _smooth_reference(mod, command, name, x, y, v, w, u)
    by_engine = {}
    for engine in ("func", "autograd", "auto"):
        res, run = run_ok(*args, "--engine", engine)
        assert sorted(res) == sorted(expected), (engine, run)
        for key, value in expected.items():
            close(res[key], value)
        assert_no_fallback(run)
        by_engine[engine] = (res, footer(run))
    assert "torch.autograd" in by_engine["autograd"][1]
    assert "torch.autograd" not in by_engine["func"][1]
    for key in expected:
        close(by_engine["autograd"][0][key], by_engine["func"][0][key], rtol=1e-12, atol=1e-14)


def test_engine_autograd_runs_the_custom_function_jvp_without_a_note(mod, workdir):
    x, v = rng(51).standard_normal(3), rng(52).standard_normal(3)
    res, run = run_ok(
        "jvp",
        "bmod:custom",
        "-p",
        save(workdir / "x.npy", x),
        "-t",
        save(workdir / "v.npy", v),
        "--engine",
        "autograd",
    )
    close(res["jvp"], torch.autograd.functional.jvp(mod.custom, t(x), t(v))[1])
    assert_no_fallback(run)
    assert "double-backward" in footer(run)


@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev", "hessian"])
def test_engine_autograd_with_batch_dim(mod, workdir, command):
    name = "scalar" if command == "hessian" else "mlp_like"
    f = getattr(mod, name)
    xb, vb = rng(53).standard_normal((4, 3)), rng(54).standard_normal((4, 3))
    ub = rng(55).standard_normal((4, 2))
    args = [
        command,
        f"bmod:{name}",
        "-p",
        save(workdir / "x.npy", xb),
        "--batch-dim",
        "0",
        "--engine",
        "autograd",
    ]
    if command == "jvp":
        args += ["-t", save(workdir / "v.npy", vb)]
    if command == "vjp":
        args += ["-u", save(workdir / "u.npy", ub)]
    res, run = run_ok(*args)
    key = {"jvp": "jvp", "vjp": "vjp.0", "jacrev": "jacobian", "hessian": "hessian"}[command]
    close(res[key], _batched_reference(command, f, xb, 0, vb, ub))
    assert_no_fallback(run)
    assert "torch.autograd" in footer(run)


# --- 4. --batch-dim --------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_batch_dim_jvp_two_primals(mod, workdir, dim):
    g = rng(60)
    shape = (5, 3) if dim == 0 else (3, 5)
    x, y, v, w = (g.standard_normal(shape) for _ in range(4))
    res, run = run_ok(
        "jvp",
        "bmod:mix",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-t",
        save(workdir / "v.npy", v),
        "-t",
        save(workdir / "w.npy", w),
        "--batch-dim",
        str(dim),
    )
    d = dim % 2
    outs, prods = [], []
    for b in range(5):
        out, prod = tf.jvp(
            mod.mix, (t(x).select(d, b), t(y).select(d, b)), (t(v).select(d, b), t(w).select(d, b))
        )
        outs.append(out)
        prods.append(prod)
    close(res["output"], torch.stack(outs))
    close(res["jvp"], torch.stack(prods))
    assert_no_fallback(run)
    assert "per sample (vmap)" in footer(run), run


@pytest.mark.parametrize("dim", [0, 1])
def test_batch_dim_vjp(mod, workdir, dim):
    g = rng(61)
    shape = (5, 3) if dim == 0 else (3, 5)
    x, y = g.standard_normal(shape), g.standard_normal(shape)
    u = g.standard_normal((5, 3))  # the batched output, batch first
    res, _ = run_ok(
        "vjp",
        "bmod:mix",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-u",
        save(workdir / "u.npy", u),
        "--batch-dim",
        str(dim),
    )
    gx, gy = [], []
    for b in range(5):
        _, fn = tf.vjp(mod.mix, t(x).select(dim, b), t(y).select(dim, b))
        a, c = fn(t(u)[b])
        gx.append(a)
        gy.append(c)
    close(res["vjp.0"], torch.stack(gx))
    close(res["vjp.1"], torch.stack(gy))
    assert res["vjp.0"].shape == (5, 3)


@pytest.mark.parametrize("command", ["jacrev", "jacfwd", "jacobian"])
@pytest.mark.parametrize("dim", [0, 1])
def test_batch_dim_jacobians(mod, workdir, command, dim):
    g = rng(62)
    shape = (5, 3) if dim == 0 else (3, 5)
    x, y = g.standard_normal(shape), g.standard_normal(shape)
    res, _ = run_ok(
        command,
        "bmod:mix",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "--argnums",
        "0,1",
        "--batch-dim",
        str(dim),
    )
    blocks = [tf.jacrev(mod.mix, argnums=(0, 1))(t(x).select(dim, b), t(y).select(dim, b)) for b in range(5)]
    close(res["jacobian.0"], torch.stack([j[0] for j in blocks]))
    close(res["jacobian.1"], torch.stack([j[1] for j in blocks]))
    assert res["jacobian.0"].shape == (5, 3, 3)


@pytest.mark.parametrize("dim", [0, 1])
def test_batch_dim_jacobian_flatten(mod, workdir, dim):
    x = rng(63).standard_normal((4, 2, 3) if dim == 0 else (2, 4, 3))
    res, _ = run_ok(
        "jacobian", "bmod:grid", "-p", save(workdir / "x.npy", x), "--batch-dim", str(dim), "--flatten"
    )
    expected = torch.stack([tf.jacrev(mod.grid)(t(x).select(dim, b)).reshape(3, 6) for b in range(4)])
    close(res["jacobian"], expected)


@pytest.mark.parametrize("dim", [0, 1])
def test_batch_dim_hessian_and_hvp(mod, workdir, dim):
    g = rng(64)
    shape = (4, 3) if dim == 0 else (3, 4)
    x, v = g.standard_normal(shape), g.standard_normal(shape)
    px = save(workdir / "x.npy", x)
    res, _ = run_ok("hessian", "bmod:scalar", "-p", px, "--batch-dim", str(dim))
    close(res["hessian"], _batched_reference("hessian", mod.scalar, x, dim))
    assert res["hessian"].shape == (4, 3, 3)
    res, _ = run_ok("hvp", "bmod:scalar", "-p", px, "-t", save(workdir / "v.npy", v), "--batch-dim", str(dim))
    xs = [t(x).select(dim, b) for b in range(4)]
    vs = [t(v).select(dim, b) for b in range(4)]
    close(res["output"], torch.stack([mod.scalar(a) for a in xs]))
    close(res["grad"], torch.stack([tf.grad(mod.scalar)(a) for a in xs]))
    close(res["hvp"], torch.stack([tf.jvp(tf.grad(mod.scalar), (a,), (b,))[1] for a, b in zip(xs, vs)]))


@pytest.mark.parametrize("command", ["vjp", "jvp"])
def test_batch_dim_one_element_samples_need_no_vector(mod, workdir, command):
    """Per-sample gradients: each sample's output (vjp) or primal (jvp) has one element, so u or v
    defaults to one, as it does without --batch-dim."""
    if command == "vjp":
        xb = rng(66).standard_normal((4, 3))
        res, _ = run_ok("vjp", "bmod:scalar", "-p", save(workdir / "x.npy", xb), "--batch-dim", "0")
        close(res["vjp.0"], torch.stack([tf.grad(mod.scalar)(t(x)) for x in xb]))
    else:
        xb = rng(67).standard_normal(4)
        res, _ = run_ok("jvp", "bmod:scalar", "-p", save(workdir / "x.npy", xb), "--batch-dim", "0")
        close(res["jvp"], torch.stack([tf.grad(mod.scalar)(t(x)) for x in xb]))
    close(res["output"], torch.stack([mod.scalar(t(x)) for x in xb]))


@pytest.mark.parametrize("dim", ["2", "-3", "5"])
def test_batch_dim_out_of_range(mod, workdir, dim):
    px = save(workdir / "x.npy", rng(65).standard_normal((4, 3)))
    run = jac("jacrev", "bmod:mlp_like", "-p", px, "--batch-dim", dim)
    assert_clean_error(run, 2, f"--batch-dim {dim}", "(4, 3)")


def test_batch_dim_sizes_must_agree(mod, workdir):
    run = jac(
        "jacrev",
        "bmod:mix",
        "-p",
        save(workdir / "x.npy", np.ones((4, 3))),
        "-p",
        save(workdir / "y.npy", np.ones((5, 3))),
        "--batch-dim",
        "0",
    )
    assert_clean_error(run, 2, "--batch-dim", "4", "5")


def test_batch_dim_on_a_scalar_primal(mod, workdir):
    run = jac("jacrev", "bmod:scalar", "-p", "0.5", "--batch-dim", "0")
    assert_clean_error(run, 2, "--batch-dim")


# --- 5. --wrt params and --state --------------------------------------------------------------


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _call(model, x):
    return lambda p: tf.functional_call(model, p, (x,))


NAMES = ["lin.weight", "lin.bias", "out.weight", "out.bias"]


@pytest.fixture
def net_input(workdir):
    x = rng(70).standard_normal(3)
    return x, save(workdir / "x.npy", x)


@pytest.mark.parametrize("engine", ["auto", "autograd"])
def test_wrt_params_vjp(mod, workdir, net_input, engine):
    x, px = net_input
    u = rng(71).standard_normal(2)
    res, run = run_ok(
        "vjp",
        "bmod:make()",
        "-p",
        px,
        "-u",
        save(workdir / "u.npy", u),
        "--wrt",
        "params",
        "--engine",
        engine,
    )
    model = mod.make()
    out, fn = tf.vjp(_call(model, t(x)), _params(model))
    (grads,) = fn(t(u))
    assert sorted(res) == sorted(["output"] + [f"vjp.{k}" for k in NAMES])
    close(res["output"], out)
    for k in NAMES:
        close(res[f"vjp.{k}"], grads[k])
    assert_no_fallback(run)


@pytest.mark.parametrize("engine", ["auto", "autograd"])
def test_wrt_params_jacrev(mod, workdir, net_input, engine):
    x, px = net_input
    res, _ = run_ok("jacrev", "bmod:make()", "-p", px, "--wrt", "params", "--engine", engine)
    model = mod.make()
    expected = tf.jacrev(_call(model, t(x)))(_params(model))
    assert sorted(res) == sorted(f"jacobian.{k}" for k in NAMES)
    for k in NAMES:
        close(res[f"jacobian.{k}"], expected[k])
    assert res["jacobian.lin.weight"].shape == (2, 4, 3)


@pytest.mark.parametrize("engine", ["func", "autograd"])
def test_wrt_params_hessian_and_hvp(mod, workdir, net_input, engine):
    x, px = net_input
    model = mod.make_scalar()
    params = _params(model)
    names = list(params)
    f = _call(model, t(x))
    res, run = run_ok("hessian", "bmod:make_scalar()", "-p", px, "--wrt", "params", "--engine", engine)
    expected = tf.hessian(f)(params)
    assert sorted(res) == sorted(f"hessian.{a}.{b}" for a in names for b in names)
    for a in names:
        for b in names:
            close(res[f"hessian.{a}.{b}"], expected[a][b])
    g = rng(74)
    tangents = {k: g.standard_normal(tuple(p.shape)) for k, p in params.items()}
    np.savez(workdir / "t.npz", **tangents)
    res, _ = run_ok(
        "hvp",
        "bmod:make_scalar()",
        "-p",
        px,
        "--wrt",
        "params",
        "-t",
        str(workdir / "t.npz"),
        "--engine",
        engine,
    )
    grads = tf.grad(f)(params)
    products = tf.jvp(tf.grad(f), (params,), ({k: t(v) for k, v in tangents.items()},))[1]
    assert sorted(res) == sorted(["output"] + [f"grad.{k}" for k in names] + [f"hvp.{k}" for k in names])
    close(res["output"], f(params))
    for k in names:
        close(res[f"grad.{k}"], grads[k])
        close(res[f"hvp.{k}"], products[k])


@pytest.mark.parametrize("command", ["jacfwd", "jacobian"])
def test_wrt_params_other_jacobians(mod, workdir, net_input, command):
    x, px = net_input
    res, _ = run_ok(command, "bmod:make()", "-p", px, "--wrt", "params")
    model = mod.make()
    expected = tf.jacfwd(_call(model, t(x)))(_params(model))
    for k in NAMES:
        close(res[f"jacobian.{k}"], expected[k])


def test_wrt_params_jvp_with_named_tangents(mod, workdir, net_input):
    x, px = net_input
    model = mod.make()
    params = _params(model)
    g = rng(72)
    tangents = {k: g.standard_normal(tuple(p.shape)) for k, p in params.items()}
    np.savez(workdir / "t.npz", **{k: tangents[k] for k in reversed(NAMES)})  # stored order differs
    res, _ = run_ok("jvp", "bmod:make()", "-p", px, "-t", str(workdir / "t.npz"), "--wrt", "params")
    out, prod = tf.jvp(_call(model, t(x)), (params,), ({k: t(v) for k, v in tangents.items()},))
    close(res["output"], out)
    close(res["jvp"], prod)


def test_wrt_params_jvp_with_generated_tangents(mod, workdir, net_input):
    x, px = net_input
    first, _ = run_ok("jvp", "bmod:make()", "-p", px, "-t", "randn", "--wrt", "params")
    again, _ = run_ok("jvp", "bmod:make()", "-p", px, "-t", "randn", "--wrt", "params")
    other, _ = run_ok("jvp", "bmod:make()", "-p", px, "-t", "randn", "--wrt", "params", "--seed", "1")
    model = mod.make()
    close(first["output"], model(t(x)))
    assert first["jvp"].shape == (2,) and np.isfinite(first["jvp"]).all()
    np.testing.assert_array_equal(first["jvp"], again["jvp"])
    assert not np.allclose(first["jvp"], other["jvp"])


def test_wrt_params_on_a_float32_module_with_dtype(mod, workdir, net_input):
    write_module(
        workdir,
        "f32mod",
        """
        import torch
        from bmod import Net

        def make():
            torch.manual_seed(0)
            return Net()
    """,
    )
    x, px = net_input
    res, _ = run_ok("jacrev", "f32mod:make()", "-p", px, "--wrt", "params", "--dtype", "float64")
    model = mod.make()  # the same weights, in float64
    expected = tf.jacrev(_call(model, t(x)))(_params(model))
    for k in NAMES:
        close(res[f"jacobian.{k}"], expected[k], rtol=1e-6, atol=1e-7)


def _state_file(workdir, model, suffix: str) -> str:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = workdir / f"state{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    return str(path)


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_state_changes_the_parameters(mod, workdir, net_input, suffix):
    x, px = net_input
    other = mod.make_other()
    state = _state_file(workdir, other, suffix)
    u = rng(73).standard_normal(2)
    pu = save(workdir / "u.npy", u)
    plain, _ = run_ok("vjp", "bmod:make()", "-p", px, "-u", pu, "--wrt", "params")
    loaded, run = run_ok("vjp", "bmod:make()", "-p", px, "-u", pu, "--wrt", "params", "--state", state)
    out, fn = tf.vjp(_call(other, t(x)), _params(other))
    (grads,) = fn(t(u))
    close(loaded["output"], out)
    for k in NAMES:
        close(loaded[f"vjp.{k}"], grads[k])
    assert not np.allclose(plain["output"], loaded["output"])
    # the loaded weights also hold for a Jacobian with respect to the parameters...
    res, _ = run_ok("jacrev", "bmod:make()", "-p", px, "--wrt", "params", "--state", state)
    expected = tf.jacrev(_call(other, t(x)))(_params(other))
    for k in NAMES:
        close(res[f"jacobian.{k}"], expected[k])
    # ... and with respect to the inputs
    res, _ = run_ok("jacrev", "bmod:make()", "-p", px, "--state", state)
    close(res["jacobian"], tf.jacrev(other)(t(x)))


def _broken_state(mod, kind: str) -> dict:
    state = {k: v.detach().clone() for k, v in mod.make_other().state_dict().items()}
    if kind == "missing":
        del state["lin.bias"]
    elif kind == "extra":
        state["extra.weight"] = torch.zeros(2)
    else:
        state["lin.weight"] = torch.zeros(5, 3, dtype=torch.float64)
    return state


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
@pytest.mark.parametrize(
    ("kind", "needle"), [("missing", "lin.bias"), ("extra", "extra.weight"), ("shape", "lin.weight")]
)
def test_state_that_does_not_match(mod, workdir, net_input, suffix, kind, needle):
    _, px = net_input
    state = _broken_state(mod, kind)
    path = workdir / f"bad{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    run = jac("vjp", "bmod:make()", "-p", px, "-u", "ones", "--wrt", "params", "--state", str(path))
    assert_clean_error(run, 2, "--state", needle)
    if kind == "shape":
        assert "(5, 3)" in run.stderr and "(4, 3)" in run.stderr


def test_state_with_a_pickled_object_is_refused(mod, workdir, net_input):
    _, px = net_input
    torch.save({"lin.weight": mod.NotATensor()}, workdir / "evil.pt")
    run = jac("jacrev", "bmod:make()", "-p", px, "--wrt", "params", "--state", str(workdir / "evil.pt"))
    assert_clean_error(run, 2, "evil.pt", "weights_only")


def test_wrt_params_on_a_plain_function(mod, workdir):
    run = jac("jacrev", "bmod:narrow", "-p", save(workdir / "x.npy", np.ones(3)), "--wrt", "params")
    assert_clean_error(run, 2, "--wrt params")


def test_state_on_a_plain_function(mod, workdir):
    torch.save(mod.make().state_dict(), workdir / "w.pt")
    run = jac(
        "jacrev", "bmod:narrow", "-p", save(workdir / "x.npy", np.ones(3)), "--state", str(workdir / "w.pt")
    )
    assert_clean_error(run, 2, "--state")


# --- 6. jac info -------------------------------------------------------------------------------


def test_info_text():
    run = jac("info")
    assert run.code == 0, run
    text = run.stdout
    assert platform.python_version() in text
    assert torch.__version__ in text
    assert np.__version__ in text
    lines = text.splitlines()
    assert any(line.split()[:1] == ["python"] for line in lines), text
    assert any(line.split()[:1] == ["torch"] for line in lines), text
    assert any(line.split()[:1] == ["numpy"] for line in lines), text
    start = next(i for i, line in enumerate(lines) if line.strip() == "devices")
    assert "cpu" in [line.split()[0] for line in lines[start + 1 :] if line.strip()], text
    assert "Traceback" not in run.stderr


def test_info_json():
    run = jac("info", "--format", "json")
    assert run.code == 0, run
    facts = json.loads(run.stdout)
    for key in ("torch", "numpy", "python", "devices"):
        assert key in facts, facts
    assert facts["torch"] == torch.__version__
    assert facts["numpy"] == np.__version__
    assert facts["python"] == platform.python_version()
    devices = facts["devices"]
    assert isinstance(devices, list)
    names = [d["device"] if isinstance(d, dict) else d for d in devices]
    assert "cpu" in names
    assert torch.cuda.is_available() == any(str(name).startswith("cuda") for name in names)
