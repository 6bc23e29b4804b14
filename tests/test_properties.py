"""Property-based tests (hypothesis): derivatives of random smooth functions, and format round trips.

Three families, every one reproducible (``derandomize=True``: the same examples on every run,
no example database written):

1. the transforms through the library (``jaccli.autodiff.transforms.compute``), on random compositions
   of smooth torch operations applied to inputs of random shape (0-d included, size-1
   dimensions) and dtype (float32, float64), with one output or a tuple of two:
   jvp = J·v, vjp = uᵀJ, ⟨u, Jv⟩ = ⟨Jᵀu, v⟩, jacfwd = jacrev, the autograd engine = torch.func,
   everything = central finite differences in float64, float32 = float64 to float32's
   precision, and every result in the primal's dtype;
2. the same through the command line for fewer examples: the input written as .npy, .npz,
   .yaml or .json, ``jac jacrev|jacfwd|jacobian|jvp|vjp ... --format npz`` against torch.func
   called directly;
3. round trips: every output format written by ``jaccli.io.outputs.write_results`` reads back
   (with numpy, json, yaml, and ``jaccli.io.inputs.read_source``) to the same values (NaN and
   infinities included), dtype and shape; every input form (.npy, .npz, .yaml, .json, an inline
   literal, standard input) reads to the array written; integer and boolean inputs become the
   floating dtype in use as documented.

The random functions live in a small module (``PROPFUNCS``, below) that the library tests
execute in memory and the CLI tests write to disk, so both run the same code: ``compose(x,
spec)`` applies the operations a spec string names, e.g. ``"sin|sum_1_keep;matmul_3_7"`` is
``(sum(sin(x), dim=1, keepdim=True), x @ W(3, seed 7).T)``.

``JAC_PROPERTY_EXAMPLES=4 python -m pytest tests/test_properties.py`` runs four times as many
examples of each property (the default, about 1,200 examples, runs in about 30 s on 2 cores).
"""

from __future__ import annotations

import io
import json
import math
import os
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.func as tf
import yaml
from conftest import jac

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, assume, example, given, note, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from jaccli.autodiff.transforms import compute as _compute  # noqa: E402
from jaccli.errors import FunctionError  # noqa: E402
from jaccli.io import arguments, outputs  # noqa: E402
from jaccli.io.inputs import Array, Stdin, read_source  # noqa: E402
from jaccli.pipeline import Request, run  # noqa: E402

# ---------------------------------------------------------------------------------------------
# settings: reproducible, no database, no deadline (first calls of torch.func are slow)

_SCALE = float(os.environ.get("JAC_PROPERTY_EXAMPLES", "1"))

BASE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no explain
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def examples(n: int) -> settings:
    return settings(BASE, max_examples=max(1, int(n * _SCALE)))


# ---------------------------------------------------------------------------------------------
# the random functions: one module, executed here and written to disk for the CLI

PROPFUNCS = '''
"""Random smooth functions for jac's property tests: compose(x, spec)."""
import math

import numpy as np
import torch
import torch.nn.functional as F


def _axis(x, k):
    return int(k) % max(x.dim(), 1)


def _keep(flag):
    return flag == "keep"


def _matrix(m, n, seed, like):
    """A fixed matrix (numpy's generator: torch's would be a random op under vmap)."""
    w = np.random.default_rng(int(seed)).standard_normal((int(m), n)) / math.sqrt(n)
    return torch.from_numpy(w).to(like.dtype)


def apply(x, op):
    name, *args = op.split("_")
    if name == "sin":
        return torch.sin(x)
    if name == "cos":
        return torch.cos(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "expt":  # exp of a bounded input
        return torch.exp(torch.tanh(x))
    if name == "sq":
        return x * x
    if name == "xsin":
        return x * torch.sin(x)
    if name == "log1psq":
        return torch.log(1 + x * x)
    if name == "add":
        return x + float(args[0])
    if name == "scale":
        return float(args[0]) * x
    if name == "sum":
        return x.sum(dim=_axis(x, args[0]), keepdim=_keep(args[1]))
    if name == "mean":
        return x.mean(dim=_axis(x, args[0]), keepdim=_keep(args[1]))
    if name == "cumsum":
        return torch.cumsum(x, dim=_axis(x, args[0]))
    if name == "transpose":
        return x.permute(tuple(reversed(range(x.dim()))))
    if name == "flatten":
        return x.reshape(-1)
    if name == "reshape":  # the same elements, the dimensions reversed
        return x.reshape(tuple(reversed(x.shape)))
    if name == "unsqueeze":
        return x.unsqueeze(int(args[0]) % (x.dim() + 1))
    if name == "matmul":  # x (..., n) @ W(m, n).T, W fixed by its seed
        base = x if x.dim() else x.reshape(1)
        w = _matrix(args[0], base.shape[-1], args[1], base)
        return base @ w.T
    raise ValueError(f"unknown op {op!r}")


def chain(x, ops):
    for op in ops:
        x = apply(x, op)
    return x


def compose(x, spec):
    """spec: branches separated by ';' (one: a tensor, two: a tuple), ops within by '|'."""
    outs = tuple(chain(x, [op for op in branch.split("|") if op]) for branch in spec.split(";"))
    return outs[0] if len(outs) == 1 else outs
'''

propfuncs = types.ModuleType("propfuncs_inline")
exec(compile(PROPFUNCS, "<propfuncs>", "exec"), propfuncs.__dict__)


# ---------------------------------------------------------------------------------------------
# strategies

_unit = st.integers(-8, 8).map(lambda i: i / 4)  # -2 .. 2 in quarters: exact, readable
_axis = st.integers(0, 3).map(str)
_keep = st.sampled_from(["keep", "drop"])

OP = st.one_of(
    st.sampled_from(
        ["sin", "cos", "tanh", "sigmoid", "softplus", "expt", "sq", "xsin", "log1psq"]
        + ["transpose", "flatten", "reshape"]
    ),
    _unit.map(lambda c: f"add_{c / 2}"),
    _unit.map(lambda a: f"scale_{a}"),
    st.tuples(st.sampled_from(["sum", "mean"]), _axis, _keep).map("_".join),
    _axis.map(lambda k: f"cumsum_{k}"),
    _axis.map(lambda k: f"unsqueeze_{k}"),
    st.tuples(st.integers(1, 4), st.integers(0, 99)).map(lambda ms: f"matmul_{ms[0]}_{ms[1]}"),
)
BRANCH = st.lists(OP, min_size=1, max_size=4).map("|".join)
SPEC = st.one_of(BRANCH, st.tuples(BRANCH, BRANCH).map(";".join))
SHAPE = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
DTYPE = st.sampled_from([torch.float32, torch.float64])


def bounded(shape) -> st.SearchStrategy:
    """Finite values in [-2, 2], exact in float32, so float32 and float64 see the same numbers."""
    elements = st.floats(-2, 2, width=32, allow_subnormal=False)
    return hnp.arrays(np.float32, shape, elements=elements).map(lambda a: a.astype(np.float64))


@dataclass
class Problem:
    spec: str
    x: np.ndarray  # float64 holding float32-exact values
    dtype: torch.dtype

    def tensor(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.from_numpy(np.array(self.x, dtype=np.float64)).to(dtype or self.dtype)

    def f(self, x: torch.Tensor):
        return propfuncs.compose(x, self.spec)


@st.composite
def problems(draw, dtypes=DTYPE) -> Problem:
    shape = draw(SHAPE)
    return Problem(draw(SPEC), draw(bounded(shape)), draw(dtypes))


# ---------------------------------------------------------------------------------------------
# helpers


def compute(command, func, primals, **options):
    """jaccli.autodiff.transforms.compute, minus one known torch bug that test_results_have_the_primal_dtype
    reports: in forward mode a 0-d float32 tensor plus or times a Python number (``x.sum() + 1.0``)
    carries a float64 tangent (pytorch#90065), which a later matmul with a float32 matrix refuses."""
    try:
        return _compute(command, func, primals, **options)
    except FunctionError as exc:
        if upstream_dtype_bug(exc):
            reject()
        raise


def upstream_dtype_bug(exc: BaseException) -> bool:
    return "to have the same dtype, but got: double != float" in str(exc)


def leaves(tree) -> tuple:
    return tuple(tree) if isinstance(tree, (tuple, list)) else (tree,)


def flat(tree) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in leaves(tree)])


def jacobian_matrix(jacobian, outputs, x: torch.Tensor) -> torch.Tensor:
    """torch.func's Jacobian (one block per output) as the (out elements x in elements) matrix."""
    blocks = leaves(jacobian)
    assert len(blocks) == len(outputs)
    for block, out in zip(blocks, outputs):
        assert block.shape == out.shape + x.shape, (block.shape, out.shape, x.shape)
    return torch.cat([b.reshape(o.numel(), x.numel()) for b, o in zip(blocks, outputs)])


def draw_like(data, tensors, label: str) -> tuple[torch.Tensor, ...]:
    """One bounded random array per tensor, same shape and dtype."""
    drawn = []
    for i, t in enumerate(tensors):
        a = data.draw(bounded(tuple(t.shape)), label=f"{label}{i}")
        drawn.append(torch.from_numpy(a).to(t.dtype))
    return tuple(drawn)


def tree_like(values: tuple, output):
    return values if isinstance(output, tuple) else values[0]


def assert_close(actual, expected, *, rtol: float, atol: float, what: str = "") -> None:
    """|actual - expected| <= atol + rtol*|expected|, elementwise, with shapes checked."""
    a = actual.detach().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, float)
    e = (
        expected.detach().double().numpy()
        if isinstance(expected, torch.Tensor)
        else np.asarray(expected, float)
    )
    assert a.shape == e.shape, (what, a.shape, e.shape)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


# rounding per dtype: relative tolerance, and absolute tolerance per unit of the problem's scale
TOL = {torch.float64: (1e-9, 1e-11), torch.float32: (2e-4, 2e-5)}


def magnitude(*tensors: torch.Tensor) -> float:
    return max([1.0] + [float(t.detach().abs().max()) for t in tensors if t.numel()])


@dataclass
class Derivatives:
    """Everything torch.func gives for one problem, one dtype, random v and u."""

    x: torch.Tensor
    out: tuple
    J: torch.Tensor  # from jacrev, as a matrix
    v: torch.Tensor
    u: tuple
    jvp: torch.Tensor  # flattened over the output leaves
    vjp: torch.Tensor  # flattened
    scale_jv: float  # max of |J| |v|: the size of the terms J·v sums
    scale_ujv: float  # |u|ᵀ |J| |v|


def derivatives(problem: Problem, data, dtype: torch.dtype | None = None) -> Derivatives:
    x = problem.tensor(dtype=dtype)
    out = leaves(problem.f(x))
    note(f"spec={problem.spec!r} shape={tuple(x.shape)} dtype={x.dtype} out={[tuple(o.shape) for o in out]}")
    J = jacobian_matrix(compute("jacrev", problem.f, [x])["jacobian"], out, x)
    (v,) = draw_like(data, [x], "v")
    u = draw_like(data, out, "u")
    got = compute("jvp", problem.f, [x], tangents=[v])
    for o, g in zip(out, leaves(got["output"])):
        assert g.shape == o.shape and g.dtype == o.dtype
        torch.testing.assert_close(g, o, rtol=0, atol=0)
    jvp = flat(got["jvp"])
    (vjp,) = compute("vjp", problem.f, [x], cotangents=tree_like(u, problem.f(x)))["vjp"]
    assert vjp.shape == x.shape
    absJ = J.abs().double()
    jv_terms = absJ @ v.abs().double().reshape(-1)
    return Derivatives(
        x,
        out,
        J,
        v,
        u,
        jvp,
        vjp.reshape(-1),
        scale_jv=magnitude(jv_terms),
        scale_ujv=max(1.0, float(flat(u).abs().double() @ jv_terms)),
    )


# ---------------------------------------------------------------------------------------------
# 1. the transforms, through the library


@examples(80)
@given(problem=problems(), data=st.data())
def test_jvp_is_jacobian_times_v(problem, data):
    d = derivatives(problem, data)
    rtol, atol = TOL[d.x.dtype]
    assert_close(d.jvp, d.J @ d.v.reshape(-1), rtol=rtol, atol=atol * d.scale_jv, what="jvp vs J v")


@examples(80)
@given(problem=problems(), data=st.data())
def test_vjp_is_u_transpose_jacobian(problem, data):
    d = derivatives(problem, data)
    rtol, atol = TOL[d.x.dtype]
    uJ = flat(d.u) @ d.J
    scale = magnitude(flat(d.u).abs().double() @ d.J.abs().double())
    assert_close(d.vjp, uJ, rtol=rtol, atol=atol * scale, what="vjp vs u^T J")


@examples(80)
@given(problem=problems(), data=st.data())
def test_adjoint_identity(problem, data):
    """⟨u, Jv⟩ by forward mode equals ⟨Jᵀu, v⟩ by reverse mode, without forming J."""
    d = derivatives(problem, data)
    rtol, atol = TOL[d.x.dtype]
    left = (flat(d.u).double() @ d.jvp.double()).item()
    right = (d.vjp.double() @ d.v.double().reshape(-1)).item()
    assert math.isclose(left, right, rel_tol=rtol, abs_tol=atol * d.scale_ujv), (left, right)


@examples(80)
@given(problem=problems())
def test_jacfwd_equals_jacrev(problem):
    x = problem.tensor()
    out = leaves(problem.f(x))
    note(f"spec={problem.spec!r} shape={tuple(x.shape)} dtype={x.dtype}")
    fwd = compute("jacfwd", problem.f, [x])["jacobian"]
    rev = compute("jacrev", problem.f, [x])["jacobian"]
    assert type(fwd) is type(rev)
    Jf, Jr = jacobian_matrix(fwd, out, x), jacobian_matrix(rev, out, x)
    rtol, atol = TOL[x.dtype]
    assert_close(Jf, Jr, rtol=rtol, atol=atol * magnitude(Jr), what="jacfwd vs jacrev")


@examples(60)
@given(problem=problems(), data=st.data())
def test_autograd_engine_agrees_with_torch_func(problem, data):
    d = derivatives(problem, data)
    x, f = d.x, problem.f
    rtol, atol = TOL[x.dtype]
    for command in ("jacfwd", "jacrev"):
        got = compute(command, f, [x], engine="autograd")["jacobian"]
        assert_close(jacobian_matrix(got, d.out, x), d.J, rtol=rtol, atol=atol * magnitude(d.J), what=command)
    got = compute("jvp", f, [x], tangents=[d.v], engine="autograd")
    assert_close(flat(got["output"]), flat(d.out), rtol=0, atol=0, what="autograd output")
    assert_close(flat(got["jvp"]), d.jvp, rtol=rtol, atol=atol * d.scale_jv, what="autograd jvp")
    got = compute("vjp", f, [x], cotangents=tree_like(d.u, f(x)), engine="autograd")
    (vjp,) = got["vjp"]
    assert vjp.shape == x.shape
    scale = magnitude(flat(d.u).abs().double() @ d.J.abs().double())
    assert_close(vjp.reshape(-1), d.vjp, rtol=rtol, atol=atol * scale, what="autograd vjp")


def _routed(command, func, primals, engine, **options):
    """One command as the CLI runs it: torch.func with its fallbacks under engine 'auto'."""
    from jaccli.autodiff.routing import Router

    defaults = {
        "tangents": None,
        "cotangents": None,
        "argnums": 0,
        "has_aux": False,
        "chunk_size": None,
        "randomness": "error",
    }
    return Router(command, engine, func, list(primals), {**defaults, **options})()


@examples(80)
@given(problem=problems(), engine=st.sampled_from(["auto", "autograd"]))
@example(Problem("add_0.5", np.array(0.5), torch.float32), "auto")
@example(Problem("scale_2.0|matmul_2_0", np.array(0.5), torch.float32), "auto")
@example(Problem("sq|sum_0_drop|add_1.0", np.array([1.0, 2.0]), torch.float32), "auto")
def test_results_have_the_primal_dtype(problem, engine):
    """Every derivative of a function computed in float32 (float64) is float32 (float64).

    torch.func's forward mode breaks this for a 0-d tensor plus or times a Python number
    (``x.sum() + 1.0``, ``2.0 * x`` for a 0-d x: the tangent of the number is a float64 zero,
    pytorch#90065). jac casts such results back, and when a float32 matrix follows (forward
    mode then fails: "expected m1 and m2 to have the same dtype") --engine auto falls back.
    """
    x = problem.tensor()
    note(f"spec={problem.spec!r} shape={tuple(x.shape)} dtype={x.dtype}")
    out = problem.f(x)
    for o in leaves(out):
        assert o.dtype == x.dtype
    ones = tree_like(tuple(torch.ones_like(o) for o in leaves(out)), out)
    results = {
        "jvp": _routed("jvp", problem.f, [x], engine, tangents=(torch.ones_like(x),)),
        "vjp": _routed("vjp", problem.f, [x], engine, cotangents=ones),
        "jacfwd": _routed("jacfwd", problem.f, [x], engine),
        "jacrev": _routed("jacrev", problem.f, [x], engine),
    }
    dtypes = {
        f"{command}: {name}": t.dtype
        for command, tree in results.items()
        for name, value in tree.items()
        for t in leaves(value)
    }
    assert dtypes == dict.fromkeys(dtypes, x.dtype)


def test_engine_func_reports_the_forward_mode_dtype_bug():
    """--engine func never falls back: torch's own forward-mode failure is reported (exit 3)."""
    problem = Problem("scale_2.0|matmul_2_0", np.array(0.5), torch.float32)
    with pytest.raises(FunctionError, match="same dtype"):
        _compute("jvp", problem.f, [problem.tensor()], tangents=[torch.ones(())], engine="func")


EPS = 1e-6


def central(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(f(x + εv) - f(x - εv)) / 2ε, flattened over the output leaves."""
    return (flat(f(x + EPS * v)) - flat(f(x - EPS * v))) / (2 * EPS)


@examples(100)
@given(problem=problems(dtypes=st.just(torch.float64)), data=st.data())
def test_float64_matches_central_finite_differences(problem, data):
    """In float64 the whole Jacobian (column by column), J·v and uᵀJ·v match central differences.

    Error of a central difference: truncation ε²/6·|f'''| (at most 4 operations on [-2, 2] with
    bounded constants keep |f'''| below ~1e6) plus rounding ~1e-16·|f|/ε; both are covered by
    atol = 1e-7 times the size of the values and derivatives involved.
    """
    d = derivatives(problem, data)
    f, x = problem.f, d.x
    scale = magnitude(flat(d.out), d.J)
    eye = torch.eye(x.numel(), dtype=x.dtype)
    columns = [central(f, x, eye[j].reshape(x.shape)) for j in range(x.numel())]
    fd_J = torch.stack(columns, dim=1)
    assert_close(d.J, fd_J, rtol=1e-5, atol=1e-7 * scale, what="jacrev vs finite differences")
    assert_close(d.jvp, central(f, x, d.v), rtol=1e-5, atol=1e-7 * scale * magnitude(d.v), what="jvp vs fd")
    fd_ujv = float(flat(d.u) @ central(f, x, d.v))
    ujv = float(d.vjp @ d.v.reshape(-1))
    assert math.isclose(ujv, fd_ujv, rel_tol=1e-5, abs_tol=1e-7 * d.scale_ujv * scale), (ujv, fd_ujv)


@examples(60)
@given(problem=problems(dtypes=st.just(torch.float32)), data=st.data())
def test_float32_matches_float64(problem, data):
    """The same problem in float32 and float64 (the same input numbers): float32's precision."""
    d64 = derivatives(problem, data, torch.float64)
    x32 = d64.x.float()
    out32 = leaves(problem.f(x32))
    J32 = jacobian_matrix(compute("jacfwd", problem.f, [x32])["jacobian"], out32, x32)
    got = compute("jvp", problem.f, [x32], tangents=[d64.v.float()])
    (vjp32,) = compute(
        "vjp", problem.f, [x32], cotangents=tree_like(tuple(u.float() for u in d64.u), problem.f(x32))
    )["vjp"]
    # the same input numbers: the difference is float32 rounding (6e-8) amplified by the
    # function's sensitivity, at most ~1e3 on these compositions (sin of arguments up to ~1e3);
    # a wrong derivative is off by far more
    rel = 1e-3
    J_scale = magnitude(d64.J, flat(d64.out))
    vjp_scale = magnitude(flat(d64.u).abs() @ d64.J.abs())
    assert_close(flat(out32), flat(d64.out), rtol=rel, atol=rel * magnitude(flat(d64.out)), what="f")
    assert_close(J32, d64.J, rtol=rel, atol=rel * J_scale, what="jacfwd")
    assert_close(flat(got["jvp"]), d64.jvp, rtol=rel, atol=rel * d64.scale_jv, what="jvp")
    assert_close(vjp32.reshape(-1), d64.vjp, rtol=rel, atol=rel * vjp_scale, what="vjp")


# ---------------------------------------------------------------------------------------------
# 2. the same through the command line

NPZ = ("--format", "npz", "--no-timings", "--repeat", "1", "--warmup", "0")


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A folder holding propfuncs.py (the FUNC) and the input files of each example."""
    folder = tmp_path_factory.mktemp("properties")
    (folder / "propfuncs.py").write_text(PROPFUNCS)
    return folder


def write_input(
    folder, stem: str, array: np.ndarray, dtype: torch.dtype, fmt: str
) -> tuple[str, torch.dtype]:
    """Write ``array`` in ``fmt``; returns the option value and the dtype jac should read it as."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    a = array.astype(np_dtype)
    path = folder / f"{stem}.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, a)
    elif fmt == "npz":
        np.savez(path, **{stem: a})
    elif fmt in ("yaml", "json"):  # {data, dtype}: the dtype is kept
        doc = {"data": a.tolist(), "dtype": str(a.dtype)}
        path.write_text(yaml.safe_dump(doc) if fmt == "yaml" else json.dumps(doc))
    elif fmt == "yaml-plain":  # a bare nested list: float32, as documented
        path.write_text(yaml.safe_dump(a.tolist()))
        return str(path), torch.float32
    else:
        raise AssertionError(fmt)
    return str(path), dtype


INPUT_FORMATS = st.sampled_from(["npy", "npz", "yaml", "json", "yaml-plain"])
CLI_COMMANDS = st.sampled_from(["jacrev", "jacfwd", "jacobian", "jvp", "vjp"])


@examples(100)
@given(problem=problems(), fmt=INPUT_FORMATS, command=CLI_COMMANDS, data=st.data())
def test_cli_matches_torch_func(cli_dir, problem, fmt, command, data):
    """``jac COMMAND propfuncs.py:compose -p X [-t V | -u U...] --kwarg spec=...`` against torch.func.

    The default engine (auto): a fallback would say so on stderr, which must stay empty."""
    func = f"{cli_dir / 'propfuncs.py'}:compose"
    x_arg, dtype = write_input(cli_dir, "x", problem.x, problem.dtype, fmt)
    x = problem.tensor(dtype=dtype)
    f = problem.f
    out = f(x)
    note(f"spec={problem.spec!r} shape={tuple(x.shape)} dtype={dtype} fmt={fmt}")
    args = [command, func, "-p", x_arg, "--kwarg", f"spec={json.dumps(problem.spec)}"]
    suffixes = [""] if not isinstance(out, tuple) else [".0", ".1"]
    if command == "jvp":
        (v,) = draw_like(data, [x], "v")
        v_arg, _ = write_input(cli_dir, "v", v.double().numpy(), dtype, fmt.replace("-plain", ""))
        args += ["-t", v_arg]
    elif command == "vjp":
        us = draw_like(data, leaves(out), "u")
        for i, u in enumerate(us):
            u_arg, _ = write_input(cli_dir, f"u{i}", u.double().numpy(), dtype, fmt.replace("-plain", ""))
            args += ["-u", u_arg]
    try:  # torch.func, called directly
        if command in ("jacrev", "jacfwd", "jacobian"):  # jacobian: either mode, same numbers
            want = getattr(tf, command.replace("jacobian", "jacrev"))(f)(x)
            expected = {f"jacobian{s}": w for s, w in zip(suffixes, leaves(want))}
        elif command == "jvp":
            got_out, got_jvp = tf.jvp(f, (x,), (v,))
            expected = {f"output{s}": w for s, w in zip(suffixes, leaves(got_out))}
            expected.update({f"jvp{s}": w for s, w in zip(suffixes, leaves(got_jvp))})
        else:
            got_out, pullback = tf.vjp(f, x)
            expected = {f"output{s}": w for s, w in zip(suffixes, leaves(got_out))}
            expected["vjp.0"] = pullback(tree_like(us, out))[0]
    except RuntimeError as exc:  # pytorch#90065, see compute() above
        if upstream_dtype_bug(exc):
            reject()
        raise
    result = jac(*args, *NPZ)
    assert result.code == 0, result
    assert result.stderr == "", result
    got = result.npz()
    assert list(got) == list(expected)
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-6)
    for key, want in expected.items():
        # the primal's dtype: torch.func's forward mode may promote to float64 (pytorch#90065);
        # jac settles results on what reverse mode gives
        assert got[key].dtype == x.numpy().dtype, key
        assert got[key].shape == tuple(want.shape), key
        assert_close(got[key], want, rtol=rtol, atol=atol * magnitude(want), what=key)


# ---------------------------------------------------------------------------------------------
# 3. round trips of every output and input format

ANY_SHAPE = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
FLOAT_DTYPES = st.sampled_from([np.float32, np.float64])


def float_arrays(dtype, shape) -> st.SearchStrategy:
    """Any floats of ``dtype``: NaN, ±infinity, -0.0, subnormals, extremes."""
    return hnp.arrays(
        dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True)
    )


@st.composite
def result_arrays(draw) -> np.ndarray:
    return draw(float_arrays(draw(FLOAT_DTYPES), draw(ANY_SHAPE)))


def same_array(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Same dtype, shape and values (NaN equal to NaN, -0.0 distinct from 0.0)."""
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected, err_msg=what)
    if actual.dtype.kind == "f":  # -0.0 stays -0.0 (a NaN's sign bit carries no meaning)
        numbers = ~np.isnan(expected)
        np.testing.assert_array_equal(
            np.signbit(actual[numbers]), np.signbit(expected[numbers]), err_msg=what
        )


def _from_document_data(data, dtype: str, shape: list) -> np.ndarray:
    """A {dtype, shape, data} entry as numpy would hold it ("NaN", "Infinity" strings in JSON)."""
    return np.array(np.asarray(data, dtype=np.float64), dtype=dtype).reshape(shape)


def identity(x):
    return x * 1


@examples(150)
@given(
    fmt=st.sampled_from(["npz", "npy", "json", "yaml"]),
    arrays=st.lists(result_arrays(), min_size=1, max_size=3),
    data=st.data(),
)
def test_output_formats_round_trip(tmp_path_factory, fmt, arrays, data):
    """write_results → numpy/json/yaml and read_source give back the same dtype, shape and values."""
    if fmt == "npy":
        arrays = arrays[:1]
    keys = data.draw(
        st.lists(
            st.sampled_from(["output", "jvp", "jvp.0", "vjp.1", "jacobian", "jacobian.0.1", "aux.k"]),
            min_size=len(arrays),
            max_size=len(arrays),
            unique=True,
        ),
        label="keys",
    )
    results = dict(zip(keys, arrays))
    folder = tmp_path_factory.mktemp("out")
    path = str(folder / f"results.{fmt}")
    outputs.write_results(path, fmt, results)
    assert sorted(os.listdir(folder)) == [f"results.{fmt}"]  # no temporary file left behind

    # read with the format's own reader
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            assert z.files == keys
            for key in keys:
                same_array(z[key], results[key], f"npz {key}")
    elif fmt == "npy":
        same_array(np.load(path, allow_pickle=False), arrays[0], "npy")
    else:
        text = open(path, encoding="utf-8").read()
        doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert list(doc) == keys
        for key, array in results.items():
            entry = doc[key]
            assert set(entry) == {"dtype", "shape", "data"}
            assert entry["dtype"] == str(array.dtype) and entry["shape"] == list(array.shape)
            same_array(
                _from_document_data(entry["data"], entry["dtype"], entry["shape"]), array, f"{fmt} {key}"
            )
        if fmt == "json":  # strict JSON: no NaN or Infinity tokens (they are strings)
            json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    # read back by jac as inputs: one array per key, its name, its dtype, its values
    read = read_source(path, "-p")
    assert [a.name for a in read] == ([None] if fmt == "npy" else keys)
    for got, (key, array) in zip(read, results.items()):
        assert got.dtype == str(array.dtype), (key, got.dtype)
        same_array(got.data.astype(array.dtype), array, f"read_source {fmt} {key}")
    tensors = arguments.primal_tensors([read], None, np.random.default_rng(0))
    for tensor, array in zip(tensors, arrays):
        assert tensor.dtype == getattr(torch, str(array.dtype))
        same_array(tensor.numpy(), array, f"primal from {fmt}")


@examples(40)
@given(fmt=st.sampled_from(["npz", "npy", "json", "yaml"]), array=result_arrays())
def test_output_file_is_a_primal_again(tmp_path_factory, fmt, array):
    """jac's own output, given back to jac as -p, is the same primal: jvp of x*1 returns it."""
    folder = tmp_path_factory.mktemp("again")
    path = str(folder / f"x.{fmt}")
    outputs.write_results(path, fmt, {"output": array})
    outcome = run(Request("jvp", identity, primals=[path], tangents=["ones"], repeat=0, engine="func"))
    same_array(outcome.results["output"], array, f"output of jvp on {fmt}")
    assert outcome.dtypes["output"] == str(array.dtype)
    back = str(folder / f"back.{fmt}")
    outputs.write_results(back, fmt, {"output": outcome.results["output"]})
    assert open(back, "rb").read() == open(path, "rb").read() or fmt == "npz"  # npz: zip timestamps


INPUT_DTYPES = st.sampled_from(["float32", "float64", "int32", "int64", "uint8", "bool"])


@st.composite
def input_arrays(draw, dtype=None, finite: bool = False) -> np.ndarray:
    dtype = np.dtype(draw(INPUT_DTYPES) if dtype is None else dtype)
    shape = draw(ANY_SHAPE)
    if dtype.kind == "f":
        elements = hnp.from_dtype(dtype, allow_nan=not finite, allow_infinity=not finite)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -(2**40)), min(info.max, 2**40))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, list):
        return [_json_safe(o) for o in obj]
    return obj


def _literal(array: np.ndarray) -> str:
    """An inline YAML literal: a number or nested list (nan, inf spelled as jac reads them)."""
    return json.dumps(_json_safe(array.tolist()))


INPUT_FORMS = st.sampled_from(
    ["npy", "npz", "yaml", "yml", "json", "literal", "stdin-npy", "stdin-npz", "stdin-yaml", "noext-npy"]
)


@examples(150)
@given(form=INPUT_FORMS, array=input_arrays())
def test_input_forms_round_trip(tmp_path_factory, form, array):
    """An array written in any input form reads back (read_source) with its values, shape and dtype."""
    folder = tmp_path_factory.mktemp("in")
    doc_dtype = str(array.dtype) if array.dtype.kind != "b" else "bool"
    stdin = None
    if form in ("npy", "stdin-npy", "noext-npy"):
        buffer = io.BytesIO()
        np.save(buffer, array)
        content = buffer.getvalue()
    elif form in ("npz", "stdin-npz"):
        buffer = io.BytesIO()
        np.savez(buffer, first=array, second=np.zeros(2))
        content = buffer.getvalue()
    elif form in ("yaml", "yml", "stdin-yaml"):
        doc = {"data": _json_safe(array.tolist()), "dtype": doc_dtype, "shape": list(array.shape)}
        content = yaml.safe_dump(doc).encode()
    elif form == "json":
        doc = {"data": _json_safe(array.tolist()), "dtype": doc_dtype, "shape": list(array.shape)}
        content = json.dumps(doc, allow_nan=False).encode()
    else:
        content = None
    if form in ("yaml", "yml", "stdin-yaml", "json", "literal"):
        # a nested list cannot hold dimensions after a 0 ([] is (0,), [[]] is (1, 0)): the
        # output round trip covers those, where the document's shape must be honoured
        assume(0 not in array.shape[:-1])
    if form == "literal":
        text = _literal(array)
    elif form.startswith("stdin"):
        text, stdin = "-", Stdin(io.BytesIO(content))
    else:
        name = "x" if form == "noext-npy" else f"x.{form}"
        (folder / name).write_bytes(content)
        text = str(folder / name)
    read = read_source(text, "-p", stdin)
    assert isinstance(read, list)
    got = read[0]
    assert isinstance(got, Array)
    if form.endswith("npz"):
        assert [a.name for a in read] == ["first", "second"]
    assert got.data.shape == array.shape
    if form.endswith("npy") or form.endswith("npz"):
        assert got.data.dtype == array.dtype and got.dtype == doc_dtype
        same_array(got.data, array, form)
    else:  # text forms hold numbers: the declared dtype travels beside them
        assert got.dtype == (None if form == "literal" else doc_dtype)
        same_array(got.data.astype(array.dtype), array, form)
        if form == "literal" and array.size:
            kind = array.dtype.kind
            assert got.data.dtype == {"b": np.bool_, "f": np.float64}.get(kind, np.int64)


def is_float(array: np.ndarray, form: str) -> bool:
    """Floating as jac reads it: an empty literal ``[]`` holds no integers, so it is floating."""
    return array.dtype.kind == "f" or (form == "literal" and array.size == 0)


@examples(100)
@given(
    inputs=st.lists(
        st.tuples(input_arrays(finite=True), st.sampled_from(["npy", "yaml", "literal"])),
        min_size=1,
        max_size=4,
    ),
    flag=st.sampled_from([None, "float32", "float64"]),
)
def test_input_dtype_promotion(tmp_path_factory, inputs, flag):
    """-p inputs become tensors as documented: .npy and YAML with ``dtype:`` keep a floating dtype,
    a literal's floats are float32, --dtype casts every one; integer and boolean arrays become the
    floating dtype in use: --dtype, else the promotion of the floating primals, else float32."""
    folder = tmp_path_factory.mktemp("dtypes")
    sources, floating = [], []
    for i, (array, form) in enumerate(inputs):
        assume(0 not in array.shape[:-1] or form == "npy")  # see test_input_forms_round_trip
        if form == "npy":
            np.save(folder / f"p{i}.npy", array)
            text = str(folder / f"p{i}.npy")
        elif form == "yaml":
            dtype = "bool" if array.dtype.kind == "b" else array.dtype.name
            (folder / f"p{i}.yaml").write_text(yaml.safe_dump({"data": array.tolist(), "dtype": dtype}))
            text = str(folder / f"p{i}.yaml")
        else:
            text = _literal(array)
        sources.append(read_source(text, "-p"))
        if is_float(array, form):
            floating.append(np.dtype(np.float32) if form == "literal" else array.dtype)
    tensors = arguments.primal_tensors(sources, flag, np.random.default_rng(0))
    in_use = np.dtype(flag) if flag else (np.result_type(*floating) if floating else np.dtype(np.float32))
    for tensor, (array, form) in zip(tensors, inputs):
        if flag:
            want = np.dtype(flag)
        elif is_float(array, form):
            want = np.dtype(np.float32) if form == "literal" else array.dtype
        else:
            want = in_use
        assert tensor.dtype == getattr(torch, want.name), (array.dtype, form, flag, tensor.dtype)
        assert tuple(tensor.shape) == array.shape
        np.testing.assert_array_equal(tensor.numpy(), array.astype(want))
