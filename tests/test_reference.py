"""Reference tests: jac's numbers against torch called directly, and against finite differences.

Three layers, all through the CLI (``jac(...)`` in-process):

1. every example of the seed documents (torch.func.jvp, vjp, jacfwd, torch.autograd.functional.jvp
   and the forum question on 2-D inputs), compared with the same torch call made here;
2. central finite differences in float64 for a few non-trivial functions (jvp, vjp, both
   Jacobians);
3. each feature of SPEC.md (FUNC forms, input forms, dtypes, keys, transform options, outputs,
   timing table), each time checking the numbers, not only that the command ran.

Inputs are float64 wherever the comparison should be tight.
"""

from __future__ import annotations

import importlib
import io
import json
import sys

import numpy as np
import pytest
import torch
import torch.autograd.functional as AF
import torch.func as TF
import yaml
from conftest import EXAMPLES, assert_clean_error, jac, write_module

# npz on stdout, nothing on stderr, one timed run: fast, and parseable with Run.npz().
NPZ = ("--format", "npz", "--no-timings", "--repeat", "1", "--warmup", "0")
REQUIRED_PHASES = (
    "load function",
    "read inputs",
    "move to device",
    "first call",
    "steady-state compute",
    "function alone",
    "write",
)


def npz(*args: str, input: bytes | str | None = None) -> dict[str, np.ndarray]:
    """Run jac with NPZ output, insist on success, return the results."""
    run = jac(*args, *NPZ, input=input)
    assert run.code == 0, run
    assert run.stderr == "", run
    return run.npz()


def save(path, array, dtype=np.float64) -> str:
    np.save(path, np.asarray(array, dtype=dtype))
    return str(path)


def t(array) -> torch.Tensor:
    """A float64 tensor (or the array's own dtype when it already is a float array)."""
    array = np.asarray(array)
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    return torch.from_numpy(array.copy())


def n(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def exact(actual: np.ndarray, expected) -> None:
    """Same dtype, same shape, same bits."""
    expected = n(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected)


def close(actual: np.ndarray, expected, rtol: float = 1e-12, atol: float = 1e-14) -> None:
    expected = n(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def load(folder, name: str, source: str):
    """Write a user module and import it here too, to call its functions directly."""
    write_module(folder, name, source)
    importlib.invalidate_caches()
    return importlib.import_module(name)


# --------------------------------------------------------------------------------------------
# 1. The seed documents' examples
# --------------------------------------------------------------------------------------------

SEEDS = """
import torch
import torch.func


def r1_to_rn(x):
    return x * torch.tensor([1., 2., 3])


def mul(x, y):
    return x * y


def sin_sum(x):
    return x.sin().sum()


sin_sum_grad = torch.func.jacrev(sin_sum)


def sin_cos(x):
    return (x.sin(), x.cos())


def sin_cos_dict(x):
    return {'first': x.sin(), 'second': x.cos()}


def matmul(x, y):
    return torch.matmul(x, y)


def scaled(x, scale=4.):
    return x * scale


def g_aux(x):
    result = x.sin()
    return result, result


def x_plus_y2(x, y):
    return x + y ** 2


def exp_reducer(x):
    return x.exp().sum(dim=1)


def adder(x, y):
    return 2 * x + 3 * y


def cube(x):
    return x ** 3


def forum(x):
    return 2 * x.sum(dim=1)
"""


@pytest.fixture
def seeds(workdir):
    return load(workdir, "jt_seeds", SEEDS)


# torch.func.jvp ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tangent", [["-t", "1.0"], ["-t", "ones"], []], ids=["t-literal", "t-ones", "t-omitted"]
)
def test_seed_func_jvp_r1_to_rn(seeds, workdir, tangent):
    x = np.array(-0.7345)  # the seed's torch.randn([]): a 0-d primal
    res = npz("jvp", "jt_seeds:r1_to_rn", "-p", save(workdir / "x.npy", x), *tangent)
    assert sorted(res) == ["jvp", "output"]
    xt = t(x)
    value, grad = TF.jvp(seeds.r1_to_rn, (xt,), (torch.tensor(1.0, dtype=torch.float64),))
    exact(res["output"], value)
    exact(res["jvp"], grad)
    np.testing.assert_array_equal(res["jvp"], [1.0, 2.0, 3.0])  # the seed's documented answer
    close(res["output"], n(xt).astype(np.float32) * np.array([1, 2, 3], np.float32), rtol=1e-6)


def test_seed_func_jvp_two_inputs(seeds, workdir):
    x, y = rng(1).standard_normal(5), rng(2).standard_normal(5)
    res = npz(
        "jvp",
        "jt_seeds:mul",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-t",
        "ones",
        "-t",
        "ones",
    )
    _, direct = TF.jvp(seeds.mul, (t(x), t(y)), (torch.ones(5, dtype=torch.float64),) * 2)
    exact(res["jvp"], direct)
    exact(res["jvp"], x + y)  # the seed's assertion: J.(1, 1) = x + y, exact in floating point
    exact(res["output"], x * y)


# torch.func.vjp ------------------------------------------------------------------------------


@pytest.mark.parametrize("cot", [[], ["-u", "1.0"], ["-u", "ones"]], ids=["u-omitted", "u-literal", "u-ones"])
def test_seed_vjp_is_grad(seeds, workdir, cot):
    x = rng(3).standard_normal(5)
    res = npz("vjp", "jt_seeds:sin_sum", "-p", save(workdir / "x.npy", x), *cot)
    assert sorted(res) == ["output", "vjp.0"]
    grad = TF.grad(seeds.sin_sum)(t(x))
    close(res["vjp.0"], grad, rtol=1e-15, atol=0)
    close(res["vjp.0"], np.cos(x), rtol=1e-14)
    close(res["output"], np.sin(x).sum(), rtol=1e-14)
    assert res["output"].shape == ()


def test_seed_vjp_tuple_output(seeds, workdir):
    x = rng(4).standard_normal(5)
    px = save(workdir / "x.npy", x)
    # the seed: one cotangent per element of the tuple, both ones
    res = npz("vjp", "jt_seeds:sin_cos", "-p", px, "-u", "ones:5", "-u", "ones:5")
    close(res["vjp.0"], np.cos(x) - np.sin(x), rtol=1e-14)
    exact(res["output.0"], np.sin(x))
    exact(res["output.1"], np.cos(x))
    # and with two different cotangents from files, against torch.func.vjp
    u0, u1 = rng(5).standard_normal(5), rng(6).standard_normal(5)
    res = npz(
        "vjp",
        "jt_seeds:sin_cos",
        "-p",
        px,
        "-u",
        save(workdir / "u0.npy", u0),
        "-u",
        save(workdir / "u1.npy", u1),
    )
    _, fn = TF.vjp(seeds.sin_cos, t(x))
    (direct,) = fn((t(u0), t(u1)))
    close(res["vjp.0"], direct, rtol=1e-15, atol=0)
    close(res["vjp.0"], u0 * np.cos(x) - u1 * np.sin(x), rtol=1e-13)
    # one .npz, or a YAML list of arrays, stands for one cotangent per element, in order
    np.savez(workdir / "u.npz", p=u0, q=u1)
    (workdir / "u.yaml").write_text(
        yaml.safe_dump([{"data": u0.tolist(), "dtype": "float64"}, {"data": u1.tolist(), "dtype": "float64"}])
    )
    for source in ("u.npz", "u.yaml"):
        again = npz("vjp", "jt_seeds:sin_cos", "-p", px, "-u", source)
        exact(again["vjp.0"], res["vjp.0"])


@pytest.mark.parametrize("form", ["yaml", "npz", "npz-reversed", "stdin-npz", "stdin-yaml"])
def test_seed_vjp_dict_output(seeds, workdir, form):
    x = rng(7).standard_normal(5)
    first, second = rng(8).standard_normal(5), rng(9).standard_normal(5)
    stdin = None
    if form == "yaml":
        path = workdir / "u.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "first": {"data": first.tolist(), "dtype": "float64"},
                    "second": {"data": second.tolist(), "dtype": "float64"},
                }
            )
        )
        source = str(path)
    elif form == "npz":
        source = str(workdir / "u.npz")
        np.savez(source, first=first, second=second)
    elif form == "npz-reversed":  # matched by key, not by position
        source = str(workdir / "u.npz")
        np.savez(source, second=second, first=first)
    elif form == "stdin-npz":
        buf = io.BytesIO()
        np.savez(buf, first=first, second=second)
        stdin, source = buf.getvalue(), "-"
    else:
        doc = {"second": {"data": second.tolist(), "dtype": "float64"}, "first": first.tolist()}
        stdin, source = yaml.safe_dump(doc, sort_keys=False), "-"
    res = npz("vjp", "jt_seeds:sin_cos_dict", "-p", save(workdir / "x.npy", x), "-u", source, input=stdin)
    assert list(res) == ["output.first", "output.second", "vjp.0"]
    _, fn = TF.vjp(seeds.sin_cos_dict, t(x))
    (direct,) = fn({"first": t(first), "second": t(second)})
    close(res["vjp.0"], direct, rtol=1e-15, atol=0)
    exact(res["output.first"], np.sin(x))
    exact(res["output.second"], np.cos(x))


def test_seed_vjp_dict_output_ones(seeds, workdir):
    x = rng(10).standard_normal(5)
    res = npz("vjp", "jt_seeds:sin_cos_dict", "-p", save(workdir / "x.npy", x), "-u", "ones")
    close(res["vjp.0"], np.cos(x) - np.sin(x), rtol=1e-14)  # the seed's assertion


@pytest.mark.parametrize("func", ["jt_seeds:matmul", "torch:matmul"])
def test_seed_vjp_matmul_two_primals(seeds, workdir, func):
    x, y = rng(11).standard_normal((5, 4)), rng(12).standard_normal((4, 5))
    u = rng(13).standard_normal((5, 5))
    res = npz(
        "vjp",
        func,
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-u",
        save(workdir / "u.npy", u),
    )
    assert list(res) == ["output", "vjp.0", "vjp.1"]
    _, fn = TF.vjp(torch.matmul, t(x), t(y))
    d0, d1 = fn(t(u))
    close(res["vjp.0"], d0, rtol=1e-15, atol=0)
    close(res["vjp.1"], d1, rtol=1e-15, atol=0)
    close(res["vjp.0"], u @ y.T)
    close(res["vjp.1"], x.T @ u)
    close(res["output"], x @ y)


@pytest.mark.parametrize(
    "kwarg, scale", [([], 4.0), (["--kwarg", "scale=2.5"], 2.5)], ids=["default", "kwarg"]
)
def test_seed_vjp_kwargs(seeds, workdir, kwarg, scale):
    x = rng(14).standard_normal(5)
    res = npz("vjp", "jt_seeds:scaled", "-p", save(workdir / "x.npy", x), "-u", "ones", *kwarg)
    assert list(res) == ["output", "vjp.0"]  # a keyword argument is never differentiated
    exact(res["vjp.0"], np.full(5, scale))
    exact(res["output"], x * scale)


# torch.func.jacfwd ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_seed_jacfwd_sin_is_diag_cos(workdir, command):
    x = rng(15).standard_normal(5)
    res = npz(command, "torch:sin", "-p", save(workdir / "x.npy", x))
    assert list(res) == ["jacobian"]
    direct = getattr(TF, command)(torch.sin)(t(x))
    exact(res["jacobian"], direct)
    close(res["jacobian"], np.diag(np.cos(x)), rtol=1e-15)


def test_seed_jacfwd_has_aux(seeds, workdir):
    x = rng(16).standard_normal(5)
    res = npz("jacfwd", "jt_seeds:g_aux", "-p", save(workdir / "x.npy", x), "--has-aux")
    assert list(res) == ["jacobian", "aux"]
    jacobian, aux = TF.jacfwd(seeds.g_aux, has_aux=True)(t(x))
    exact(res["aux"], aux)
    exact(res["aux"], np.sin(x))
    exact(res["jacobian"], jacobian)
    close(res["jacobian"], np.diag(np.cos(x)), rtol=1e-15)


def test_seed_jacfwd_of_jacrev_is_hessian(seeds, workdir):
    # the seed's jacfwd(jacrev(f)): FUNC may itself be a transformed function
    x = rng(17).standard_normal(5)
    res = npz("jacfwd", "jt_seeds:sin_sum_grad", "-p", save(workdir / "x.npy", x))
    direct = TF.jacfwd(TF.jacrev(seeds.sin_sum))(t(x))
    close(res["jacobian"], direct, rtol=1e-15, atol=0)
    close(res["jacobian"], np.diag(-np.sin(x)), rtol=1e-14)


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_seed_jacfwd_argnums(seeds, workdir, command):
    x, y = rng(18).standard_normal(5), rng(19).standard_normal(5)
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    transform = getattr(TF, command)

    one = npz(command, "jt_seeds:x_plus_y2", *prim, "--argnums", "1")
    assert list(one) == ["jacobian"]
    exact(one["jacobian"], transform(seeds.x_plus_y2, argnums=1)(t(x), t(y)))
    close(one["jacobian"], np.diag(2 * y), rtol=1e-15)

    both = npz(command, "jt_seeds:x_plus_y2", *prim, "--argnums", "0,1")
    assert list(both) == ["jacobian.0", "jacobian.1"]
    jx, jy = transform(seeds.x_plus_y2, argnums=(0, 1))(t(x), t(y))
    exact(both["jacobian.0"], jx)
    exact(both["jacobian.1"], jy)
    exact(both["jacobian.0"], np.eye(5))
    close(both["jacobian.1"], np.diag(2 * y), rtol=1e-15)


# torch.autograd.functional.jvp ---------------------------------------------------------------


def test_seed_autograd_jvp_exp_reducer(seeds, workdir):
    x = rng(20).random((4, 4))
    res = npz("jvp", "jt_seeds:exp_reducer", "-p", save(workdir / "x.npy", x), "-t", "ones")
    value, direct = AF.jvp(seeds.exp_reducer, t(x), torch.ones(4, 4, dtype=torch.float64))
    close(res["output"], value, rtol=1e-15, atol=0)
    close(res["jvp"], direct, rtol=1e-14, atol=0)
    close(res["jvp"], res["output"], rtol=1e-14)  # the seed: with v = 1 both are sum(exp(x), 1)
    close(res["output"], np.exp(x).sum(axis=1), rtol=1e-14)


def test_seed_autograd_jvp_adder(seeds, workdir):
    x, y = rng(21).random(2), rng(22).random(2)
    res = npz(
        "jvp",
        "jt_seeds:adder",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-t",
        "ones",
    )
    value, direct = AF.jvp(seeds.adder, (t(x), t(y)), (torch.ones(2, dtype=torch.float64),) * 2)
    exact(res["jvp"], direct)
    exact(res["jvp"], [5.0, 5.0])  # the seed's documented answer
    close(res["output"], value, rtol=1e-15, atol=0)


def test_seed_autograd_jvp_v_omitted_for_one_element(seeds, workdir):
    res = npz("jvp", "jt_seeds:cube", "-p", "0.5")
    value, direct = AF.jvp(seeds.cube, torch.tensor(0.5))  # v=None: a single 1
    exact(res["output"], value)
    exact(res["jvp"], direct)
    exact(res["jvp"], np.float32(0.75))

    # every primal one element (a 1-element array too): all tangents default to one
    res = npz("jvp", "jt_seeds:adder", "-p", "0.5", "-p", "[0.25]")
    primals = (torch.tensor(0.5), torch.tensor([0.25]))
    value, direct = AF.jvp(seeds.adder, primals, tuple(torch.ones_like(p) for p in primals))
    exact(res["jvp"], direct)
    exact(res["jvp"], np.array([5.0], np.float32))
    exact(res["output"], value)


# the forum question: 2-D inputs ---------------------------------------------------------------


@pytest.mark.parametrize("form", ["example-files", "literals", "float64"])
def test_seed_forum_2d_jvp(seeds, workdir, form):
    x = np.ones((3, 2))
    v = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float64)
    if form == "example-files":
        args = ["jvp", f"{EXAMPLES}/quickstart.py:f", "-p", f"{EXAMPLES}/x.npy", "-t", f"{EXAMPLES}/v.npy"]
        dtype = np.float32
    elif form == "literals":
        args = ["jvp", "jt_seeds:forum", "-p", "[[1,1],[1,1],[1,1]]", "-t", "[[1,2],[3,4],[5,6]]"]
        dtype = np.float32
    else:
        args = ["jvp", "jt_seeds:forum", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)]
        dtype = np.float64
    res = npz(*args)
    exact(res["jvp"], np.array([6, 14, 22], dtype))
    exact(res["output"], np.array([4, 4, 4], dtype))
    value, direct = AF.jvp(seeds.forum, torch.from_numpy(x.astype(dtype)), torch.from_numpy(v.astype(dtype)))
    exact(res["jvp"], direct)
    exact(res["output"], value)


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_seed_forum_2d_jacobian_and_flatten(seeds, workdir, command):
    x = np.ones((3, 2))
    px = save(workdir / "x.npy", x)
    full = npz(command, "jt_seeds:forum", "-p", px)["jacobian"]
    assert full.shape == (3, 3, 2)
    exact(full, AF.jacobian(seeds.forum, t(x)))
    expected = np.zeros((3, 3, 2))
    for i in range(3):
        expected[i, i, :] = 2.0
    exact(full, expected)

    flat = npz(command, "jt_seeds:forum", "-p", px, "--flatten")["jacobian"]
    assert flat.shape == (3, 6)
    exact(flat, full.reshape(3, 6))
    # the forum answer: J.v is the 3 x 6 matrix times v viewed as a 6-vector
    v = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float64)
    exact(flat @ v.reshape(-1), np.array([6.0, 14.0, 22.0]))


# --------------------------------------------------------------------------------------------
# 2. Central finite differences (float64)
# --------------------------------------------------------------------------------------------

FD_SOURCE = """
import torch


def make():
    g = torch.Generator().manual_seed(1234)
    w1 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b1 = torch.randn(6, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b2 = torch.randn(3, generator=g, dtype=torch.float64)

    def mlp(x):
        return w2 @ torch.tanh(w1 @ x + b1) + b2

    return mlp


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def mixed(x, y):
    return (x * torch.sin(y.sum()) + x ** 3, torch.tanh(torch.outer(x, y)))


def rowsoft(a):
    return torch.softmax(a, dim=1) * torch.cos(a)
"""

FD_CASES = [
    pytest.param(("jt_fd:make()", lambda m: m.make(), [(4,)]), id="tanh-mlp-factory"),
    pytest.param(("jt_fd:rosenbrock", lambda m: m.rosenbrock, [(5,)]), id="rosenbrock"),
    pytest.param(("jt_fd:mixed", lambda m: m.mixed, [(3,), (2,)]), id="two-inputs-tuple-output"),
    pytest.param(("jt_fd:rowsoft", lambda m: m.rowsoft, [(3, 4)]), id="2d-input"),
]
EPS = 1e-6


def _out_leaves(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _flat(f, primals) -> np.ndarray:
    return np.concatenate([n(leaf).ravel() for leaf in _out_leaves(f(*[t(p) for p in primals]))])


def fd_jvp(f, primals, tangents) -> np.ndarray:
    plus = [p + EPS * v for p, v in zip(primals, tangents)]
    minus = [p - EPS * v for p, v in zip(primals, tangents)]
    return (_flat(f, plus) - _flat(f, minus)) / (2 * EPS)


def fd_jacobian(f, primals) -> list[np.ndarray]:
    """One (output elements x primal elements) block per primal, column by column."""
    blocks = []
    for i, p in enumerate(primals):
        cols = []
        for j in range(p.size):
            e = np.zeros(p.size)
            e[j] = 1.0
            dirs = [np.zeros_like(q) for q in primals]
            dirs[i] = e.reshape(p.shape)
            cols.append(fd_jvp(f, primals, dirs))
        blocks.append(np.stack(cols, axis=1))
    return blocks


def fd_close(actual: np.ndarray, fd: np.ndarray) -> None:
    """Central differences at eps=1e-6 in float64: truncation ~1e-12, rounding ~1e-10 * |f|."""
    scale = max(1.0, float(np.abs(fd).max()))
    np.testing.assert_allclose(actual, fd, rtol=1e-7, atol=1e-7 * scale)


@pytest.fixture(params=FD_CASES)
def fd_case(request, workdir):
    spec, get, shapes = request.param
    module = load(workdir, "jt_fd", FD_SOURCE)
    f = get(module)
    gen = rng(100)
    primals = [gen.standard_normal(s) for s in shapes]
    args = []
    for i, p in enumerate(primals):
        args += ["-p", save(workdir / f"p{i}.npy", p)]
    outs = _out_leaves(f(*[t(p) for p in primals]))
    return spec, f, primals, args, [tuple(o.shape) for o in outs]


def _leaves(res: dict, prefix: str) -> list[np.ndarray]:
    if prefix in res:
        return [res[prefix]]
    return [res[k] for k in res if k.startswith(prefix + ".")]


def test_fd_jvp(fd_case, workdir):
    spec, f, primals, args, out_shapes = fd_case
    tangents = [rng(200 + i).standard_normal(p.shape) for i, p in enumerate(primals)]
    targs = []
    for i, v in enumerate(tangents):
        targs += ["-t", save(workdir / f"t{i}.npy", v)]
    res = npz("jvp", spec, *args, *targs)
    got = _leaves(res, "jvp")
    assert [g.shape for g in got] == out_shapes
    assert all(g.dtype == np.float64 for g in got)
    fd_close(np.concatenate([g.ravel() for g in got]), fd_jvp(f, primals, tangents))
    close(np.concatenate([g.ravel() for g in _leaves(res, "output")]), _flat(f, primals), rtol=1e-15)


def test_fd_vjp(fd_case, workdir):
    spec, f, primals, args, out_shapes = fd_case
    us = [rng(300 + i).standard_normal(s) for i, s in enumerate(out_shapes)]
    uargs = []
    for i, u in enumerate(us):
        uargs += ["-u", save(workdir / f"u{i}.npy", u)]
    res = npz("vjp", spec, *args, *uargs)
    assert list(res)[-len(primals) :] == [f"vjp.{i}" for i in range(len(primals))]
    u_flat = np.concatenate([u.ravel() for u in us])
    for i, (p, block) in enumerate(zip(primals, fd_jacobian(f, primals))):
        got = res[f"vjp.{i}"]
        assert got.shape == p.shape and got.dtype == np.float64
        fd_close(got.ravel(), u_flat @ block)


def test_fd_jacfwd_jacrev(fd_case):
    spec, f, primals, args, out_shapes = fd_case
    many_args, many_outs = len(primals) > 1, len(out_shapes) > 1
    argnums = ["--argnums", ",".join(str(i) for i in range(len(primals)))] if many_args else []
    fwd = npz("jacfwd", spec, *args, *argnums)
    rev = npz("jacrev", spec, *args, *argnums)
    assert list(fwd) == list(rev)
    blocks = fd_jacobian(f, primals)
    row = 0
    for o, oshape in enumerate(out_shapes):
        rows = int(np.prod(oshape))
        for a, p in enumerate(primals):
            key = "jacobian" + (f".{o}" if many_outs else "") + (f".{a}" if many_args else "")
            assert fwd[key].shape == oshape + p.shape, key
            close(fwd[key], rev[key], rtol=1e-12, atol=1e-13)
            fd_close(fwd[key].reshape(rows, p.size), blocks[a][row : row + rows])
            fd_close(rev[key].reshape(rows, p.size), blocks[a][row : row + rows])
        row += rows
    assert len(fwd) == len(out_shapes) * len(primals)


# --------------------------------------------------------------------------------------------
# 3. Features of SPEC.md
# --------------------------------------------------------------------------------------------

FEAT = """
import torch


def double(x):
    return 2 * x


def lin(x, y):
    return x - 3 * y


def echo(*xs):
    return tuple(x * 1 for x in xs)


def three(a, b, c):
    return a * b + c ** 2 + b.sin()


def two_out(x, y):
    return (x * y, x.sum() + y ** 2)


def sincos(x):
    return (x.sin(), x.cos())


def with_aux(x):
    return x.sin() * x, x.cos()


def partly(x, y):
    return (x * y, x.exp())


def ignores_y(x, y):
    return x.exp() * 2


def noisy_add(x):
    return x + torch.rand(x.shape, dtype=x.dtype)


def noisy_scale(x):
    return x * torch.rand((), dtype=x.dtype)


def spread(x):
    return torch.tanh(torch.outer(x, torch.arange(1.0, 4.0, dtype=x.dtype))).reshape(-1)


def weighted(x, weights=(1.0, 1.0, 1.0), mode="mul"):
    w = torch.tensor(weights, dtype=x.dtype)
    return x * w if mode == "mul" else x + w * x.sin()


def reduce(x, dims=(0,)):
    return (x ** 2).sum(dim=tuple(dims))
"""


@pytest.fixture
def feat(workdir):
    return load(workdir, "jt_feat", FEAT)


# FUNC forms ----------------------------------------------------------------------------------

FORMS = """
import types

import torch
from torch import nn


def f(x):
    return x.sin() * 3


class Obj:
    @staticmethod
    def method(x):
        return x.sin() * 3


class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x.sin() * self.k


scaler = Scaler(3.0)
ns = types.SimpleNamespace(attr=f)


def factory():
    return lambda x: x.sin() * 3


class Model(nn.Module):
    def forward(self, x):
        return x.sin() * 3


model = Model()
"""


@pytest.mark.parametrize(
    "func",
    [
        "jt_forms:f",
        "jt_pkg.inner:f",
        "lib/jt_formfile.py:f",
        "ABSOLUTE/lib/jt_formfile.py:f",
        "jt_forms:Obj.method",
        "jt_forms:scaler.apply",
        "jt_forms:ns.attr",
        "jt_forms:factory()",
        "jt_forms:model",
        "jt_forms:Model()",
    ],
)
def test_func_forms(workdir, monkeypatch, func):
    write_module(workdir, "jt_forms", FORMS)
    pkg = workdir / "jt_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "inner.py").write_text(FORMS)
    for name in ("jt_pkg", "jt_pkg.inner"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (workdir / "lib").mkdir()
    (workdir / "lib" / "jt_formfile.py").write_text(FORMS)
    importlib.invalidate_caches()
    func = func.replace("ABSOLUTE", str(workdir))

    x = rng(30).standard_normal(4)
    v = rng(31).standard_normal(4)
    px = save(workdir / "x.npy", x)
    res = npz("jvp", func, "-p", px, "-t", save(workdir / "v.npy", v))
    close(res["output"], 3 * np.sin(x), rtol=1e-15)
    close(res["jvp"], 3 * np.cos(x) * v, rtol=1e-14)
    jacobian = npz("jacrev", func, "-p", px)["jacobian"]
    exact(jacobian, TF.jacrev(lambda z: z.sin() * 3)(t(x)))


NETS = """
import torch
from torch import nn

net = nn.Linear(3, 2).double()
with torch.no_grad():
    net.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.5]], dtype=torch.float64))
    net.bias.copy_(torch.tensor([0.1, -0.2], dtype=torch.float64))


class Holder:
    pass


holder = Holder()
holder.net = net
"""


@pytest.mark.parametrize("func", ["jt_nets:net", "jt_nets:holder.net"])
def test_func_module_instance_parameters_are_constants(workdir, func):
    nets = load(workdir, "jt_nets", NETS)
    x = rng(32).standard_normal(3)
    u = rng(33).standard_normal(2)
    px = save(workdir / "x.npy", x)
    weight = n(nets.net.weight)

    jacobian = npz("jacfwd", func, "-p", px)
    assert list(jacobian) == ["jacobian"]
    exact(jacobian["jacobian"], weight)

    res = npz("vjp", func, "-p", px, "-u", save(workdir / "u.npy", u))
    assert list(res) == ["output", "vjp.0"]  # no key for the parameters
    close(res["output"], nets.net(t(x)), rtol=1e-15, atol=0)
    close(res["vjp.0"], u @ weight, rtol=1e-15)


def test_func_example_factory_module(workdir):
    sys.path.insert(0, str(EXAMPLES))
    try:
        mlp = importlib.import_module("mlp").model()
    finally:
        sys.path.remove(str(EXAMPLES))
    x = np.load(EXAMPLES / "mlp_x.npy")
    res = npz("jacrev", f"{EXAMPLES}/mlp.py:model()", "-p", f"{EXAMPLES}/mlp_x.npy")
    close(res["jacobian"], TF.jacrev(mlp)(t(x)), rtol=1e-14)
    res = npz("vjp", f"{EXAMPLES}/mlp.py:model()", "-p", f"{EXAMPLES}/mlp_x.npy", "-u", "ones")
    _, fn = TF.vjp(mlp, t(x))
    close(res["vjp.0"], fn(torch.ones(2, dtype=torch.float64))[0], rtol=1e-14)


def test_kwarg_yaml_values(feat, workdir):
    x, v = rng(34).standard_normal(3), rng(35).standard_normal(3)
    args = ["-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v)]

    res = npz("jvp", "jt_feat:weighted", *args, "--kwarg", "weights=[2, -1.0, 0.5]")
    w = np.array([2.0, -1.0, 0.5])
    exact(res["jvp"], v * w)
    exact(res["output"], x * w)

    res = npz("jvp", "jt_feat:weighted", *args, "--kwarg", "weights=[2, -1.0, 0.5]", "--kwarg", "mode=add")
    value, direct = TF.jvp(lambda z: feat.weighted(z, weights=[2, -1.0, 0.5], mode="add"), (t(x),), (t(v),))
    close(res["output"], value, rtol=1e-15, atol=0)
    close(res["jvp"], direct, rtol=1e-15, atol=0)

    m = rng(36).standard_normal((3, 2))
    pm = save(workdir / "m.npy", m)
    scalar = npz("jacrev", "jt_feat:reduce", "-p", pm, "--kwarg", "dims=[0,1]")["jacobian"]
    exact(scalar, 2 * m)
    rows = npz("jacrev", "jt_feat:reduce", "-p", pm, "--kwarg", "dims=[1]")["jacobian"]
    exact(rows, TF.jacrev(lambda z: feat.reduce(z, dims=[1]))(t(m)))
    assert rows.shape == (3, 3, 2)


# input forms ---------------------------------------------------------------------------------


def seen(*sources: str, extra: tuple = (), input: bytes | str | None = None) -> list[np.ndarray]:
    """The primals jac made of ``-p`` sources: the identity gives them back as outputs."""
    args = []
    for source in sources:
        args += ["-p", source]
    res = npz("jvp", "jt_feat:echo", *args, "-t", "zeros", *extra, input=input)
    outs = [res[k] for k in res if k.startswith("output.")]
    for i, o in enumerate(outs):
        exact(res[f"jvp.{i}"], np.zeros_like(o))
    return outs


def test_input_npy_keeps_dtype(feat, workdir):
    x64 = rng(40).standard_normal((2, 3))
    x32 = rng(41).standard_normal(4).astype(np.float32)
    (got,) = seen(save(workdir / "a.npy", x64))
    exact(got, x64)
    (got,) = seen(save(workdir / "b.npy", x32, np.float32))
    exact(got, x32)


def test_input_npz_gives_primals_in_stored_order(feat, workdir):
    a, b = rng(42).standard_normal(3), rng(43).standard_normal((2, 2))
    path = str(workdir / "ba.npz")
    np.savez(path, b=b, a=a)
    got = seen(path)
    assert len(got) == 2
    exact(got[0], b)
    exact(got[1], a)
    # order matters: lin(x, y) = x - 3y with the example's x, y
    z = np.load(EXAMPLES / "xy.npz")
    res = npz("jvp", "jt_feat:lin", "-p", f"{EXAMPLES}/xy.npz", "-t", "ones")
    exact(res["output"], z["x"] - 3 * z["y"])
    exact(res["jvp"], np.full(3, -2.0))


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_input_yaml_json_files(feat, workdir, suffix):
    data = [[1.5, -2.0], [0.1, 3.0]]
    path = workdir / f"x{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    (got,) = seen(str(path))
    exact(got, np.array(data, np.float32))  # YAML and JSON without a dtype: float32

    path.write_text((json.dumps if suffix == ".json" else yaml.safe_dump)({"data": data, "dtype": "float64"}))
    (got,) = seen(str(path))
    exact(got, np.array(data, np.float64))  # 0.1 exactly as float64

    several = {"first": {"data": [1.0, 2.0], "dtype": "float64"}, "second": [[3.0], [4.0]]}
    path.write_text(json.dumps(several) if suffix == ".json" else yaml.safe_dump(several, sort_keys=False))
    first, second = seen(str(path))
    exact(first, np.array([1.0, 2.0]))
    exact(second, np.array([[3.0], [4.0]], np.float32))

    listed = [{"data": 0.25, "dtype": "float64"}, {"data": [1, 2, 3]}]
    path.write_text(json.dumps(listed) if suffix == ".json" else yaml.safe_dump(listed))
    first, second = seen(str(path))
    exact(first, np.array(0.25))
    exact(second, np.array([1, 2, 3], np.float64))  # ints take the floating dtype in use


def test_input_example_yaml(feat):
    (got,) = seen(f"{EXAMPLES}/x.yaml")
    exact(got, np.ones((3, 2), np.float32))


def test_input_stdin(feat, workdir):
    x = rng(44).standard_normal((2, 3))
    buf = io.BytesIO()
    np.save(buf, x)
    (got,) = seen("-", input=buf.getvalue())
    exact(got, x)

    a, b = rng(45).standard_normal(2), rng(46).standard_normal(3).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, a=a, b=b)
    got = seen("-", input=buf.getvalue())
    assert len(got) == 2
    exact(got[0], a)
    exact(got[1], b)  # each array of an .npz keeps its dtype, as .npy does


def test_input_stdin_yaml_and_other_sources(feat, workdir):
    (got,) = seen("-", input="[[1.0, 2.0], [3.0, 4.5]]\n")
    exact(got, np.array([[1.0, 2.0], [3.0, 4.5]], np.float32))
    # stdin for one option, a file for another
    x = rng(47).standard_normal(3)
    got = seen(save(workdir / "x.npy", x), "-", input="{data: [0.1, 0.2, 0.3], dtype: float64}")
    exact(got[0], x)
    exact(got[1], np.array([0.1, 0.2, 0.3]))


def test_input_npz_dtypes_kept(feat, workdir):
    a, b = rng(48).standard_normal(2), rng(49).standard_normal(3).astype(np.float32)
    path = str(workdir / "ab.npz")
    np.savez(path, a=a, b=b)
    first, second = seen(path)
    exact(first, a)
    exact(second, b)


@pytest.mark.parametrize(
    "literal, expected",
    [
        ("[1.0, 2.0]", np.array([1.0, 2.0], np.float32)),
        ("0.5", np.array(0.5, np.float32)),
        ("[[1, 2], [3, 4]]", np.array([[1, 2], [3, 4]], np.float32)),
        ("-2.5e-1", np.array(-0.25, np.float32)),
    ],
)
def test_input_inline_literals(feat, literal, expected):
    (got,) = seen(literal)
    exact(got, expected)


@pytest.mark.parametrize(
    "gen, expected",
    [
        ("ones:3,2", np.ones((3, 2), np.float32)),
        ("zeros:4", np.zeros(4, np.float32)),
        ("ones:", np.ones((), np.float32)),
    ],
)
def test_input_generators(feat, gen, expected):
    (got,) = seen(gen)
    exact(got, expected)


def test_input_randn_seed(feat):
    a = seen("randn:3,2", extra=("--seed", "7"))[0]
    b = seen("randn:3,2", extra=("--seed", "7"))[0]
    c = seen("randn:3,2", extra=("--seed", "8"))[0]
    d = seen("randn:3,2")[0]  # the default seed, twice
    e = seen("randn:3,2")[0]
    assert a.shape == (3, 2) and a.dtype == np.float32
    exact(a, b)
    exact(d, e)
    assert not np.array_equal(a, c)
    assert np.unique(a).size == 6  # six draws, not one repeated
    f64 = seen("randn:3,2", extra=("--seed", "7", "--dtype", "float64"))[0]
    close(f64.astype(np.float32), a, rtol=1e-7)  # the same draws, kept in float64
    # two generated primals are different draws
    x, y = seen("randn:4", "randn:4", extra=("--seed", "7"))
    assert not np.array_equal(x, y)


# dtype rules ---------------------------------------------------------------------------------


def test_dtype_flag_casts(feat, workdir):
    (got,) = seen("0.1", extra=("--dtype", "float64"))
    exact(got, np.array(0.1))  # parsed straight to float64, not through float32
    x = rng(50).standard_normal(3)
    (got,) = seen(save(workdir / "x.npy", x), extra=("--dtype", "float32"))
    exact(got, x.astype(np.float32))
    (got,) = seen(save(workdir / "x.npy", x), extra=("--dtype", "float16"))
    exact(got, x.astype(np.float16))
    (got,) = seen(save(workdir / "x.npy", x), extra=("--dtype", "bfloat16"))
    exact(got, n(torch.from_numpy(x).to(torch.bfloat16).float()))  # written as float32


def test_dtype_integer_arrays_promoted(feat, workdir):
    ints = np.array([1, -2, 3], np.int64)
    (got,) = seen(save(workdir / "i.npy", ints, np.int64))
    exact(got, np.array([1, -2, 3], np.float32))
    (got,) = seen(save(workdir / "b.npy", [True, False], np.bool_))
    exact(got, np.array([1.0, 0.0], np.float32))
    x = rng(51).standard_normal(3)
    # with a float64 primal, integers take float64
    got = seen(save(workdir / "i.npy", ints, np.int64), save(workdir / "x.npy", x))
    exact(got[0], ints.astype(np.float64))
    exact(got[1], x)
    (got,) = seen(save(workdir / "i.npy", ints, np.int64), extra=("--dtype", "float64"))
    exact(got, ints.astype(np.float64))
    # and the derivative is computed in that dtype
    res = npz(
        "jvp",
        "jt_feat:lin",
        "-p",
        save(workdir / "i.npy", ints, np.int64),
        "-p",
        save(workdir / "x.npy", x),
        "-t",
        "ones",
    )
    exact(res["output"], ints - 3 * x)
    exact(res["jvp"], np.full(3, -2.0))


def test_dtype_tangents_follow_primals(feat, workdir):
    x = rng(52).standard_normal(3).astype(np.float32)
    v = rng(53).standard_normal(3)
    res = npz(
        "jvp",
        "jt_feat:double",
        "-p",
        save(workdir / "x.npy", x, np.float32),
        "-t",
        save(workdir / "v.npy", v),
    )
    exact(res["jvp"], 2 * v.astype(np.float32))
    exact(res["output"], 2 * x)


# repeated options, generators for tangents and cotangents ------------------------------------


def test_repeated_primals_and_tangents(feat, workdir):
    gen = rng(54)
    a, b, c = (gen.standard_normal(4) for _ in range(3))
    ta, tb, tc = (gen.standard_normal(4) for _ in range(3))
    p = []
    for name, arr in zip("abc", (a, b, c)):
        p += ["-p", save(workdir / f"{name}.npy", arr)]
    for name, arr in zip("abc", (ta, tb, tc)):
        p += ["-t", save(workdir / f"t{name}.npy", arr)]
    res = npz("jvp", "jt_feat:three", *p)
    value, direct = TF.jvp(feat.three, (t(a), t(b), t(c)), (t(ta), t(tb), t(tc)))
    exact(res["output"], value)
    close(res["jvp"], direct, rtol=1e-15, atol=0)
    close(res["jvp"], ta * b + a * tb + 2 * c * tc + np.cos(b) * tb, rtol=1e-13)


def test_repeated_cotangents(feat, workdir):
    x, y = rng(55).standard_normal(3), rng(56).standard_normal(3)
    u0, u1 = rng(57).standard_normal(3), rng(58).standard_normal(3)
    res = npz(
        "vjp",
        "jt_feat:two_out",
        "-p",
        save(workdir / "x.npy", x),
        "-p",
        save(workdir / "y.npy", y),
        "-u",
        save(workdir / "u0.npy", u0),
        "-u",
        save(workdir / "u1.npy", u1),
    )
    assert list(res) == ["output.0", "output.1", "vjp.0", "vjp.1"]
    _, fn = TF.vjp(feat.two_out, t(x), t(y))
    d0, d1 = fn((t(u0), t(u1)))
    close(res["vjp.0"], d0, rtol=1e-15, atol=0)
    close(res["vjp.1"], d1, rtol=1e-15, atol=0)
    close(res["vjp.0"], u0 * y + u1.sum(), rtol=1e-13)
    close(res["vjp.1"], u0 * x + 2 * y * u1, rtol=1e-13)


def test_lone_randn_tangent_stands_for_all(feat, workdir):
    x, y = rng(59).standard_normal(3), rng(60).standard_normal((2, 2))
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    res = npz("jvp", "jt_feat:echo", *prim, "-t", "randn", "--seed", "3")
    again = npz("jvp", "jt_feat:echo", *prim, "-t", "randn", "--seed", "3")
    other = npz("jvp", "jt_feat:echo", *prim, "-t", "randn", "--seed", "4")
    tx, ty = res["jvp.0"], res["jvp.1"]  # the identity's jvp is the tangent itself
    assert tx.shape == (3,) and ty.shape == (2, 2)
    assert tx.dtype == ty.dtype == np.float64
    assert np.unique(np.concatenate([tx, ty.ravel()])).size == 7
    exact(again["jvp.0"], tx)
    exact(again["jvp.1"], ty)
    assert not np.array_equal(other["jvp.0"], tx)
    # a linear function: J.v is made of the same draws (same seed, same shapes)
    a, b = rng(160).standard_normal(3), rng(161).standard_normal(3)
    prim = ["-p", save(workdir / "a.npy", a), "-p", save(workdir / "b.npy", b)]
    drawn = npz("jvp", "jt_feat:echo", *prim, "-t", "randn", "--seed", "3")
    lin = npz("jvp", "jt_feat:lin", *prim, "-t", "randn", "--seed", "3")
    close(lin["jvp"], drawn["jvp.0"] - 3 * drawn["jvp.1"], rtol=1e-15)


def test_lone_generator_cotangent_stands_for_all(feat, workdir):
    x, y = rng(61).standard_normal(3), rng(62).standard_normal(3)
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    res = npz("vjp", "jt_feat:two_out", *prim, "-u", "ones")
    _, fn = TF.vjp(feat.two_out, t(x), t(y))
    d0, d1 = fn((torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)))
    close(res["vjp.0"], d0, rtol=1e-15, atol=0)
    close(res["vjp.1"], d1, rtol=1e-15, atol=0)
    r1 = npz("vjp", "jt_feat:two_out", *prim, "-u", "randn", "--seed", "5")
    r2 = npz("vjp", "jt_feat:two_out", *prim, "-u", "randn", "--seed", "5")
    exact(r1["vjp.0"], r2["vjp.0"])
    assert not np.allclose(r1["vjp.0"], res["vjp.0"])


# tuple and dict outputs ----------------------------------------------------------------------


def test_tuple_output_keys(feat, workdir):
    x, v = rng(63).standard_normal(4), rng(64).standard_normal(4)
    res = npz("jvp", "jt_feat:sincos", "-p", save(workdir / "x.npy", x), "-t", save(workdir / "v.npy", v))
    assert list(res) == ["output.0", "output.1", "jvp.0", "jvp.1"]
    (o0, o1), (j0, j1) = TF.jvp(feat.sincos, (t(x),), (t(v),))
    exact(res["output.0"], o0)
    exact(res["output.1"], o1)
    close(res["jvp.0"], j0, rtol=1e-15, atol=0)
    close(res["jvp.1"], j1, rtol=1e-15, atol=0)
    close(res["jvp.1"], -np.sin(x) * v, rtol=1e-14)


def _two_inputs():
    sys.path.insert(0, str(EXAMPLES))
    sys.modules.pop("two_inputs", None)
    try:
        return importlib.import_module("two_inputs").f
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop("two_inputs", None)


def test_dict_output_keys_jvp_and_vjp(workdir):
    f = _two_inputs()
    z = np.load(EXAMPLES / "xy.npz")
    x, y = t(z["x"]), t(z["y"])
    func = f"{EXAMPLES}/two_inputs.py:f"

    res = npz("jvp", func, "-p", f"{EXAMPLES}/xy.npz", "-t", "ones", "--kwarg", "scale=2.0")
    assert list(res) == ["output.product", "output.energy", "jvp.product", "jvp.energy"]
    out, jv = TF.jvp(lambda a, b: f(a, b, scale=2.0), (x, y), (torch.ones(3, dtype=torch.float64),) * 2)
    exact(res["output.product"], out["product"])
    exact(res["output.energy"], out["energy"])
    close(res["jvp.product"], jv["product"], rtol=1e-15, atol=0)
    close(res["jvp.energy"], jv["energy"], rtol=1e-15, atol=0)

    res = npz("vjp", func, "-p", f"{EXAMPLES}/xy.npz", "-u", f"{EXAMPLES}/u.yaml")
    assert list(res) == ["output.product", "output.energy", "vjp.0", "vjp.1"]
    _, fn = TF.vjp(f, x, y)
    d0, d1 = fn(
        {"product": torch.ones(3, dtype=torch.float64), "energy": torch.tensor(1.0, dtype=torch.float64)}
    )
    close(res["vjp.0"], d0, rtol=1e-15, atol=0)
    close(res["vjp.1"], d1, rtol=1e-15, atol=0)
    close(res["vjp.0"], z["y"] + 2 * z["x"], rtol=1e-14)
    close(res["vjp.1"], z["x"] + 3 * z["y"] ** 2, rtol=1e-14)


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_dict_output_several_argnums(workdir, command):
    f = _two_inputs()
    z = np.load(EXAMPLES / "xy.npz")
    res = npz(
        command,
        f"{EXAMPLES}/two_inputs.py:f",
        "-p",
        f"{EXAMPLES}/xy.npz",
        "--argnums",
        "0,1",
        "--kwarg",
        "scale=2.0",
    )
    assert list(res) == ["jacobian.product.0", "jacobian.product.1", "jacobian.energy.0", "jacobian.energy.1"]
    direct = getattr(TF, command)(lambda a, b: f(a, b, scale=2.0), argnums=(0, 1))(t(z["x"]), t(z["y"]))
    for out in ("product", "energy"):
        for a in (0, 1):
            close(res[f"jacobian.{out}.{a}"], direct[out][a], rtol=1e-15, atol=0)
    close(res["jacobian.product.0"], np.diag(2 * z["y"]), rtol=1e-15)
    close(res["jacobian.energy.1"], 3 * z["y"] ** 2, rtol=1e-14)


# transform options ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["jvp", "vjp", "jacfwd", "jacrev"])
def test_has_aux(feat, workdir, command):
    x = rng(65).standard_normal(4)
    v = rng(66).standard_normal(4)
    px = save(workdir / "x.npy", x)
    xt = t(x)
    if command == "jvp":
        res = npz("jvp", "jt_feat:with_aux", "-p", px, "-t", save(workdir / "v.npy", v), "--has-aux")
        assert list(res) == ["output", "jvp", "aux"]
        out, jv, aux = TF.jvp(feat.with_aux, (xt,), (t(v),), has_aux=True)
        exact(res["output"], out)
        close(res["jvp"], jv, rtol=1e-15, atol=0)
    elif command == "vjp":
        res = npz("vjp", "jt_feat:with_aux", "-p", px, "-u", save(workdir / "v.npy", v), "--has-aux")
        assert list(res) == ["output", "vjp.0", "aux"]
        out, fn, aux = TF.vjp(feat.with_aux, xt, has_aux=True)
        exact(res["output"], out)
        close(res["vjp.0"], fn(t(v))[0], rtol=1e-15, atol=0)
    else:
        res = npz(command, "jt_feat:with_aux", "-p", px, "--has-aux")
        assert list(res) == ["jacobian", "aux"]
        jacobian, aux = getattr(TF, command)(feat.with_aux, has_aux=True)(xt)
        close(res["jacobian"], jacobian, rtol=1e-15, atol=0)
        close(res["jacobian"], np.diag(np.cos(x) * x + np.sin(x)), rtol=1e-14)
    exact(res["aux"], aux)
    exact(res["aux"], np.cos(x))


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_argnums_skipping_a_primal(feat, workdir, command):
    gen = rng(67)
    a, b, c = gen.standard_normal(3), gen.standard_normal(3), gen.standard_normal(3)
    p = []
    for name, arr in zip("abc", (a, b, c)):
        p += ["-p", save(workdir / f"{name}.npy", arr)]
    res = npz(command, "jt_feat:three", *p, "--argnums", "0,2")
    assert list(res) == ["jacobian.0", "jacobian.1"]
    ja, jc = getattr(TF, command)(feat.three, argnums=(0, 2))(t(a), t(b), t(c))
    exact(res["jacobian.0"], ja)
    exact(res["jacobian.1"], jc)
    exact(res["jacobian.0"], np.diag(b))  # wrt primal 0
    exact(res["jacobian.1"], np.diag(2 * c))  # wrt primal 2
    # negative indices count from the end, as in Python
    neg = npz(command, "jt_feat:three", *p, "--argnums", "-1")
    exact(neg["jacobian"], np.diag(2 * c))


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_several_outputs_several_argnums(feat, workdir, command):
    x, y = rng(68).standard_normal(3), rng(69).standard_normal(3)
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    res = npz(command, "jt_feat:two_out", *prim, "--argnums", "0,1")
    assert list(res) == ["jacobian.0.0", "jacobian.0.1", "jacobian.1.0", "jacobian.1.1"]
    direct = getattr(TF, command)(feat.two_out, argnums=(0, 1))(t(x), t(y))
    for o in (0, 1):
        for a in (0, 1):
            exact(res[f"jacobian.{o}.{a}"], direct[o][a])
    exact(res["jacobian.0.1"], np.diag(x))
    exact(res["jacobian.1.0"], np.ones((3, 3)))
    # several outputs, one argnum: jacobian.<out>
    one = npz(command, "jt_feat:two_out", *prim, "--argnums", "1")
    assert list(one) == ["jacobian.0", "jacobian.1"]
    exact(one["jacobian.0"], direct[0][1])
    exact(one["jacobian.1"], direct[1][1])
    # several outputs, --flatten: each block a matrix
    flat = npz(command, "jt_feat:two_out", *prim, "--argnums", "0,1", "--flatten")
    for key in res:
        exact(flat[key], res[key].reshape(3, 3))


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_argnums_trailing_comma_is_a_tuple(feat, workdir, command):
    x = rng(87).standard_normal(3)
    res = npz(command, "jt_feat:double", "-p", save(workdir / "x.npy", x), "--argnums", "0,")
    assert list(res) == ["jacobian.0"]  # argnums=(0,) in torch.func: a tuple of one
    exact(res["jacobian.0"], 2 * np.eye(3))


@pytest.mark.parametrize("command", ["jacfwd", "jacrev"])
def test_flatten_scalar_output_and_scalar_input(seeds, feat, workdir, command):
    x = rng(88).standard_normal(5)
    full = npz(command, "jt_seeds:sin_sum", "-p", save(workdir / "x.npy", x))["jacobian"]
    flat = npz(command, "jt_seeds:sin_sum", "-p", save(workdir / "x.npy", x), "--flatten")["jacobian"]
    assert full.shape == (5,) and flat.shape == (1, 5)
    exact(flat, full.reshape(1, 5))
    close(full, np.cos(x), rtol=1e-15)
    # a 0-d input: (3,) as it is, (3, 1) flattened
    s = save(workdir / "s.npy", np.array(0.3))
    full = npz(command, "jt_seeds:r1_to_rn", "-p", s)["jacobian"]
    flat = npz(command, "jt_seeds:r1_to_rn", "-p", s, "--flatten")["jacobian"]
    exact(full, getattr(TF, command)(seeds.r1_to_rn)(torch.tensor(0.3, dtype=torch.float64)))
    np.testing.assert_array_equal(full, [1, 2, 3])  # (jacrev's dtype is the input's, jacfwd's the output's)
    exact(flat, full.reshape(3, 1))
    # --flatten with --select: only the chosen block, as a matrix
    y = rng(89).standard_normal(3)
    prim = ["-p", save(workdir / "a.npy", x[:3]), "-p", save(workdir / "b.npy", y)]
    one = npz(command, "jt_feat:two_out", *prim, "--argnums", "0,1", "--flatten", "--select", "jacobian.0.1")
    assert list(one) == ["jacobian.0.1"]
    exact(one["jacobian.0.1"], np.diag(x[:3]))


@pytest.mark.parametrize("chunk", ["1", "5", "12", "100"])
def test_chunk_size(feat, workdir, chunk):
    x = rng(70).standard_normal(4)
    px = save(workdir / "x.npy", x)
    plain = npz("jacrev", "jt_feat:spread", "-p", px)["jacobian"]
    chunked = npz("jacrev", "jt_feat:spread", "-p", px, "--chunk-size", chunk)["jacobian"]
    assert plain.shape == (12, 4)
    close(chunked, plain, rtol=1e-15, atol=0)
    close(plain, TF.jacrev(feat.spread)(t(x)), rtol=1e-15, atol=0)
    close(chunked, TF.jacrev(feat.spread, chunk_size=int(chunk))(t(x)), rtol=1e-15, atol=0)


def test_randomness(feat, workdir):
    x = rng(71).standard_normal(5)
    px = save(workdir / "x.npy", x)
    # --randomness error (torch.func's default) refuses random operations under vmap (exit 3)
    run = jac("jacfwd", "jt_feat:noisy_add", "-p", px, "--randomness", "error", *NPZ)
    assert_clean_error(run, 3, "--randomness")
    # jac's default is 'same': every evaluation runs on one stream seeded by --seed
    default = npz("jacfwd", "jt_feat:noisy_scale", "-p", px)["jacobian"]
    exact(default, npz("jacfwd", "jt_feat:noisy_scale", "-p", px, "--randomness", "same")["jacobian"])
    # the Jacobian of x + noise is the identity whatever the noise
    for mode in ("same", "different"):
        res = npz("jacfwd", "jt_feat:noisy_add", "-p", px, "--randomness", mode)
        exact(res["jacobian"], np.eye(5))
    # x * r: 'same' draws one r for every column, so the diagonal is constant
    same = npz("jacfwd", "jt_feat:noisy_scale", "-p", px, "--randomness", "same")["jacobian"]
    diag = np.diag(same)
    exact(same, np.diag(diag))
    assert np.all(diag == diag[0]) and 0.0 <= diag[0] < 1.0
    different = npz("jacfwd", "jt_feat:noisy_scale", "-p", px, "--randomness", "different")["jacobian"]
    assert np.unique(np.diag(different)).size == 5
    exact(different, np.diag(np.diag(different)))


def test_strict(feat, workdir):
    x, y = rng(72).standard_normal(3), rng(73).standard_normal(3)
    v, w = rng(74).standard_normal(3), rng(75).standard_normal(3)
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    tang = ["-t", save(workdir / "v.npy", v), "-t", save(workdir / "w.npy", w)]
    # every output depends on every input: --strict changes nothing
    loose = npz("jvp", "jt_feat:lin", *prim, *tang)
    strict = npz("jvp", "jt_feat:lin", *prim, *tang, "--strict")
    exact(strict["jvp"], loose["jvp"])
    exact(strict["jvp"], v - 3 * w)
    # output.1 = exp(x) ignores y: zeros without --strict ...
    res = npz("jvp", "jt_feat:partly", *prim, *tang)
    close(res["jvp.1"], np.exp(x) * v, rtol=1e-15)
    res = npz("jacrev", "jt_feat:partly", *prim, "--argnums", "0,1")
    exact(res["jacobian.1.1"], np.zeros((3, 3)))
    # ... and an error naming the output and the primal with it
    for command, extra in (
        ("jvp", tang),
        ("vjp", ["-u", "ones"]),
        ("jacfwd", ["--argnums", "1"]),
        ("jacrev", ["--argnums", "0,1"]),
    ):
        run = jac(command, "jt_feat:partly", *prim, *extra, "--strict", *NPZ)
        assert_clean_error(run, 3, "output.1", "primal 1")
    run = jac("jvp", "jt_feat:ignores_y", *prim, *tang, "--strict", *NPZ)
    assert_clean_error(run, 3, "output", "primal 1")
    # differentiating only x, every output depends on it
    res = npz("jacrev", "jt_feat:partly", *prim, "--argnums", "0", "--strict")
    exact(res["jacobian.1"], np.diag(np.exp(x)))
    exact(res["jacobian.0"], np.diag(y))


def test_select(feat, workdir):
    x, y = rng(76).standard_normal(3), rng(77).standard_normal(3)
    prim = ["-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    res = npz("jvp", "jt_feat:lin", *prim, "-t", "ones", "--select", "jvp")
    assert list(res) == ["jvp"]
    exact(res["jvp"], np.full(3, -2.0))
    res = npz("vjp", "jt_feat:lin", *prim, "-u", "ones", "--select", "vjp.1")
    assert list(res) == ["vjp.1"]
    exact(res["vjp.1"], np.full(3, -3.0))
    run = jac("vjp", "jt_feat:lin", *prim, "-u", "ones", "--select", "vjp.1", "-o", "g.npy", "--no-timings")
    assert run.code == 0, run
    exact(np.load(workdir / "g.npy"), np.full(3, -3.0))
    run = jac("vjp", "jt_feat:lin", *prim, "-u", "ones", "--select", "vjp.7", *NPZ)
    assert_clean_error(run, 2, "vjp.7")


# outputs -------------------------------------------------------------------------------------


def _document_arrays(doc: dict) -> dict[str, np.ndarray]:
    out = {}
    assert list(doc)[-1] == "__jac__", list(doc)  # the results, then their reproducibility record
    for key, entry in list(doc.items())[:-1]:
        assert set(entry) == {"dtype", "shape", "data"}, entry
        array = np.array(entry["data"], dtype=entry["dtype"])
        assert list(array.shape) == entry["shape"]
        out[key] = array
    return out


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".yaml", ".yml", ".json"])
def test_out_file_formats(feat, workdir, suffix):
    x, v = rng(78).standard_normal((2, 2)), rng(79).standard_normal((2, 2))
    prim = ["-p", save(workdir / "x.npy", x)]
    path = workdir / f"result{suffix}"
    if suffix == ".npy":  # one result only
        run = jac(
            "jacrev",
            "jt_feat:sincos",
            *prim,
            "--argnums",
            "0",
            "--select",
            "jacobian.1",
            "-o",
            str(path),
            "--no-timings",
        )
        expected = {"jacobian.1": TF.jacrev(feat.sincos)(t(x))[1]}
    else:
        run = jac(
            "jvp", "jt_feat:sincos", *prim, "-t", save(workdir / "v.npy", v), "-o", str(path), "--no-timings"
        )
        (o0, o1), (j0, j1) = TF.jvp(feat.sincos, (t(x),), (t(v),))
        expected = {"output.0": o0, "output.1": o1, "jvp.0": j0, "jvp.1": j1}
    assert run.code == 0, run
    assert run.stdout_bytes == b""  # results went to the file
    if suffix == ".npz":
        with np.load(path) as z:
            assert z.files[-1] == "__jac__"  # the results, then their reproducibility record
            got = {k: z[k] for k in z.files[:-1]}
    elif suffix == ".npy":
        got = {"jacobian.1": np.load(path)}
    elif suffix == ".json":
        got = _document_arrays(json.loads(path.read_text()))
    else:
        got = _document_arrays(yaml.safe_load(path.read_text()))
    assert list(got) == list(expected)
    for key in expected:
        close(got[key], expected[key], rtol=1e-15, atol=0)
        assert got[key].dtype == np.float64


def test_out_npy_needs_one_result(feat, workdir):
    run = jac("jvp", "jt_feat:double", "-p", "[1.0, 2.0]", "-t", "ones", "-o", "r.npy", "--no-timings")
    assert_clean_error(run, 2, "--select")
    assert not (workdir / "r.npy").exists()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_out_document_read_back_as_input(feat, workdir, suffix):
    x, v = rng(80).standard_normal(3), rng(81).standard_normal(3)
    run = jac(
        "jvp",
        "jt_feat:double",
        "-p",
        save(workdir / "x.npy", x),
        "-t",
        save(workdir / "v.npy", v),
        "-o",
        f"r{suffix}",
        "--no-timings",
    )
    assert run.code == 0, run
    # one primal per key: output, then jvp
    res = npz("jvp", "jt_feat:lin", "-p", f"r{suffix}", "-t", "zeros")
    exact(res["output"], 2 * x - 3 * (2 * v))
    # the jvp alone, by --select
    run = jac(
        "jvp",
        "jt_feat:double",
        "-p",
        save(workdir / "x.npy", x),
        "-t",
        save(workdir / "v.npy", v),
        "--select",
        "jvp",
        "-o",
        f"j{suffix}",
        "--no-timings",
    )
    assert run.code == 0, run
    (got,) = seen(f"j{suffix}")
    exact(got, 2 * v)
    # a 0-d result survives the round trip too
    run = jac("vjp", "torch:sum", "-p", save(workdir / "x.npy", x), "-o", f"s{suffix}", "--no-timings")
    assert run.code == 0, run
    total, grad = seen(f"s{suffix}")
    exact(total, np.array(x.sum()))
    exact(grad, np.ones(3))


@pytest.mark.parametrize("fmt", ["npz", "json", "yaml", "npy"])
def test_out_dash_writes_stdout_in_format(feat, workdir, fmt):
    x, v = rng(82).standard_normal(3), rng(83).standard_normal(3)
    args = [
        "jvp",
        "jt_feat:sincos",
        "-p",
        save(workdir / "x.npy", x),
        "-t",
        save(workdir / "v.npy", v),
        "-o",
        "-",
        "--format",
        fmt,
        "--no-timings",
    ]
    if fmt == "npy":
        args += ["--select", "jvp.0"]
    run = jac(*args)
    assert run.code == 0, run
    assert run.stderr == ""
    if fmt == "npz":
        got = run.npz()
    elif fmt == "npy":
        got = {"jvp.0": np.load(io.BytesIO(run.stdout_bytes))}
    elif fmt == "json":
        got = _document_arrays(json.loads(run.stdout))
    else:
        got = _document_arrays(yaml.safe_load(run.stdout))
    (o0, o1), (j0, j1) = TF.jvp(feat.sincos, (t(x),), (t(v),))
    expected = {"output.0": o0, "output.1": o1, "jvp.0": j0, "jvp.1": j1}
    if fmt == "npy":
        expected = {"jvp.0": j0}
    assert list(got) == list(expected)
    for key in expected:
        close(got[key], expected[key], rtol=1e-15, atol=0)


def test_default_text_format(workdir):
    run = jac("jacrev", f"{EXAMPLES}/quickstart.py:f", "-p", f"{EXAMPLES}/x.npy", "--no-timings")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["jacobian", "shape", "(3,", "3,", "2)", "float32"]
    from jaccli.autodiff.transforms import JacobianInfo
    from jaccli.report.render import jacobian_note

    note = jacobian_note(JacobianInfo("output", (3,), 0, (3, 2)), False)
    assert "[i..., j...]" in note  # the wording that explains the shape
    assert lines[1] == note
    assert "2. 2." in run.stdout and "0. 0." in run.stdout

    run = jac("jacrev", f"{EXAMPLES}/quickstart.py:f", "-p", f"{EXAMPLES}/x.npy", "--flatten", "--no-timings")
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["jacobian", "shape", "(3,", "6)", "float32"]
    assert lines[1] == jacobian_note(JacobianInfo("output", (3,), 0, (3, 2)), True)
    assert "[[2. 2. 0. 0. 0. 0.]" in run.stdout


def test_default_text_format_values(workdir):
    run = jac(
        "jvp",
        f"{EXAMPLES}/quickstart.py:f",
        "-p",
        f"{EXAMPLES}/x.npy",
        "-t",
        f"{EXAMPLES}/v.npy",
        "--no-timings",
    )
    assert run.code == 0, run
    assert run.stdout.splitlines() == [
        "output  shape (3,)  float32",
        "[4. 4. 4.]",
        "",
        "jvp  shape (3,)  float32",
        "[ 6. 14. 22.]",
    ]
    x = rng(84).standard_normal(2)
    run = jac("vjp", "torch:sin", "-p", save(workdir / "x.npy", x), "-u", "ones", "--no-timings")
    assert run.code == 0, run
    text = run.stdout
    assert "output  shape (2,)  float64" in text and "vjp.0  shape (2,)  float64" in text
    assert np.array2string(np.cos(x)) in text


# timing table --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "npz"])
def test_timing_table_on_stderr(workdir, fmt):
    run = jac(
        "jvp",
        f"{EXAMPLES}/quickstart.py:f",
        "-p",
        f"{EXAMPLES}/x.npy",
        "-t",
        f"{EXAMPLES}/v.npy",
        "--format",
        fmt,
        "--repeat",
        "2",
        "--warmup",
        "0",
    )
    assert run.code == 0, run
    for phase in REQUIRED_PHASES:
        assert phase in run.stderr, phase
    for word in (
        "derivative/function",
        "median",
        "device cpu",
        "dtype float32",
        f"torch {torch.__version__}",
    ):
        assert word in run.stderr, word
    if fmt == "npz":
        res = run.npz()  # stdout holds the npz and nothing else
        exact(res["jvp"], np.array([6, 14, 22], np.float32))
    else:
        for phase in REQUIRED_PHASES:
            assert phase not in run.stdout
        assert run.stdout.splitlines()[-1] == "[ 6. 14. 22.]"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_timings_file(feat, workdir, suffix):
    x = rng(85).standard_normal(3)
    run = jac(
        "jacrev",
        "jt_feat:spread",
        "-p",
        save(workdir / "x.npy", x),
        "--format",
        "npz",
        "--timings",
        f"t{suffix}",
        "--repeat",
        "3",
        "--warmup",
        "0",
    )
    assert run.code == 0, run
    close(run.npz()["jacobian"], TF.jacrev(load(workdir, "jt_feat", FEAT).spread)(t(x)), rtol=1e-15, atol=0)
    text = (workdir / f"t{suffix}").read_text()
    doc = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    phases = {p["phase"]: p for p in doc["phases"]}
    for phase in REQUIRED_PHASES:
        assert phase in phases, phase
    for series in ("steady-state compute", "function alone"):
        assert phases[series]["runs"] == 3
        assert 0 <= phases[series]["min"] <= phases[series]["median"] <= phases[series]["max"]
    assert phases["load function"]["seconds"] >= 0
    assert doc["device"] == "cpu"
    assert doc["dtype"] == "float64"
    assert doc["torch"] == torch.__version__
    assert doc["cost_ratio"] > 0  # the derivative-to-function cost ratio of the footer
    assert "steady-state compute" in run.stderr  # the table is still printed


def test_no_timings_and_quiet(feat, workdir):
    x = rng(86).standard_normal(3)
    px = save(workdir / "x.npy", x)
    run = jac("jvp", "jt_feat:double", "-p", px, "-t", "ones", "--format", "npz", "--no-timings")
    assert run.code == 0 and run.stderr == "", run
    exact(run.npz()["jvp"], np.full(3, 2.0))
    run = jac("jvp", "jt_feat:double", "-p", px, "-t", "ones", "--format", "npz", "--quiet")
    assert run.code == 0 and run.stderr == "", run
    exact(run.npz()["output"], 2 * x)
    run = jac("jvp", "jt_feat:double", "-p", px, "-t", "ones", "-o", "r.npz", "-q")
    assert run.code == 0 and run.stderr == "" and run.stdout_bytes == b"", run
    with np.load(workdir / "r.npz") as z:
        exact(z["output"], 2 * x)


# errors named in the input rules -------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["jvp", "jt_feat:double", "-p", "[1.0, 2.0, 3.0]", "-t", "[1.0, 2.0]"],
            ["tangent 0", "(2,)", "(3,)"],
        ),
        (["jvp", "jt_feat:lin", "-p", "[1.0]", "-p", "[2.0, 3.0]", "-t", "[1.0]"], ["--tangents"]),
        (["jvp", "jt_feat:double", "-p", "[1.0, 2.0]"], ["--tangents"]),
        (
            ["vjp", "jt_feat:sincos", "-p", "[1.0, 2.0]", "-u", "[1.0, 2.0]", "-u", "[1.0]"],
            ["output.1", "(1,)", "(2,)"],
        ),
        (["vjp", "jt_feat:double", "-p", "[1.0, 2.0]"], ["--cotangents"]),
        (["jacrev", "jt_feat:lin", "-p", "[1.0]", "-p", "[2.0]", "--argnums", "0,2"], ["--argnums"]),
    ],
)
def test_input_rule_errors(feat, args, needles):
    assert_clean_error(jac(*args, *NPZ), 2, *needles)


# --------------------------------------------------------------------------------------------
# 4. CUDA (skipped without a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacfwd", "jacrev"])
def test_cuda_matches_cpu(feat, workdir, command):
    x, y = rng(90).standard_normal(3), rng(91).standard_normal(3)
    args = [command, "jt_feat:two_out", "-p", save(workdir / "x.npy", x), "-p", save(workdir / "y.npy", y)]
    if command == "jvp":
        args += ["-t", "randn", "--seed", "2"]
    elif command == "vjp":
        args += ["-u", "randn", "--seed", "2"]
    else:
        args += ["--argnums", "0,1"]
    cpu = npz(*args, "--device", "cpu")
    gpu = npz(*args, "--device", "cuda")
    assert list(gpu) == list(cpu)
    for key in cpu:
        assert gpu[key].dtype == np.float64
        close(gpu[key], cpu[key], rtol=1e-12, atol=1e-14)


@pytest.mark.cuda
def test_cuda_auto_picks_gpu(feat, workdir):
    x = rng(93).standard_normal(4)
    px = save(workdir / "x.npy", x)
    run = jac(
        "jacrev",
        "jt_feat:spread",
        "-p",
        px,
        "--format",
        "npz",
        "--device",
        "auto",
        "--timings",
        "t.json",
        "--repeat",
        "1",
        "--warmup",
        "0",
    )
    assert run.code == 0, run
    doc = json.loads((workdir / "t.json").read_text())
    assert doc["device"].startswith("cuda")
    assert "device cuda" in run.stderr
    cpu = npz("jacrev", "jt_feat:spread", "-p", px)
    close(run.npz()["jacobian"], cpu["jacobian"], rtol=1e-12, atol=1e-14)
    close(cpu["jacobian"], TF.jacrev(feat.spread)(t(x)), rtol=1e-15, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("command", ["vjp", "jacrev"])
def test_cuda_module_parameters_follow_the_device(command):
    # an nn.Module's parameters are constants of the function: on --device cuda they must be
    # there too, or the README's own example (examples/mlp.py:model()) cannot run on a GPU
    args = [command, f"{EXAMPLES}/mlp.py:model()", "-p", f"{EXAMPLES}/mlp_x.npy"]
    args += ["-u", "ones"] if command == "vjp" else []
    cpu = npz(*args)
    gpu = npz(*args, "--device", "cuda")
    assert list(gpu) == list(cpu)
    for key in cpu:
        close(gpu[key], cpu[key], rtol=1e-12, atol=1e-14)


@pytest.mark.cuda
def test_cuda_seed_forum_and_kwargs(seeds, workdir):
    res = npz(
        "jvp", "jt_seeds:forum", "-p", "[[1,1],[1,1],[1,1]]", "-t", "[[1,2],[3,4],[5,6]]", "--device", "cuda"
    )
    exact(res["jvp"], np.array([6, 14, 22], np.float32))
    x = rng(92).standard_normal(5)
    res = npz(
        "vjp",
        "jt_seeds:scaled",
        "-p",
        save(workdir / "x.npy", x),
        "-u",
        "ones",
        "--kwarg",
        "scale=2.5",
        "--device",
        "cuda:0",
    )
    exact(res["vjp.0"], np.full(5, 2.5))
