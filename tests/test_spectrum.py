"""jac spectrum: singular values and eigenvalues from products, against dense numpy."""

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_clean_error, jac, write_module

MAPS = """
import torch

_CACHE = {}

def _matrix(name, n, m=None):
    if (name, n, m) not in _CACHE:  # built once, outside any transform (torch.func.hessian vmaps)
        _CACHE[name, n, m] = _build(name, n, m)
    return _CACHE[name, n, m].clone()

def _build(name, n, m=None):
    m = m or n
    g = torch.Generator().manual_seed(7)
    if name == "random":
        return torch.randn(m, n, generator=g, dtype=torch.float64) / n ** 0.5
    if name == "diagonal":
        return torch.diag(torch.linspace(-3.0, 5.0, n, dtype=torch.float64) + 0.01)
    if name == "orthogonal":
        return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    if name == "deficient":
        left = torch.randn(m, 5, generator=g, dtype=torch.float64)
        return left @ torch.randn(5, n, generator=g, dtype=torch.float64)
    if name == "nonnormal":
        upper = torch.triu(torch.randn(n, n, generator=g, dtype=torch.float64), 1)
        return torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64)) + 0.5 * upper
    raise ValueError(name)

def linear(x, name="random", m=None):
    return _matrix(name, x.numel(), m) @ x

def layer(x, m=None):
    a = _matrix("random", x.numel(), m)
    return torch.tanh(a @ x) + 0.1 * torch.sin(x).sum()

def two(x, y):
    return {"u": torch.tanh(x) * y.sum(), "v": x[:3] * y[:3] ** 2}

def rotation(x):
    n = x.numel()
    a = _matrix("nonnormal", n)
    a[0, 1], a[1, 0] = -4.0 * n, 4.0 * n
    return a @ x

def energy(x):
    a = _matrix("random", x.numel())
    return torch.log(torch.cosh(a @ x)).sum() + 0.5 * (x ** 2).sum() - 0.3 * (x[0] * x[1:]).sum()

def vector(x):
    return x * 2
"""


@pytest.fixture
def maps(workdir):
    write_module(workdir, "maps", MAPS)
    rng = np.random.default_rng(11)
    for n in (5, 30, 40):
        np.save(f"x{n}.npy", rng.standard_normal(n))
    return workdir


def _spectrum(*args):
    run = jac("spectrum", *args, "--format", "npz", "--repeat", "0", "--no-timings")
    assert run.code == 0, run
    return run.npz()


def _dense(fn, x):
    return torch.func.jacrev(fn)(torch.tensor(x)).reshape(-1, x.size).numpy()


def _kw(**kwargs):
    return [a for k, v in kwargs.items() for a in ("--kwarg", f"{k}={v}")]


@pytest.mark.parametrize(
    "name, which, m",
    [
        ("random", "largest", 40),
        ("random", "smallest", 40),
        ("random", "largest", 33),
        ("orthogonal", "largest", None),
        ("diagonal", "smallest", None),
    ],
)
def test_singular_values_equal_numpy_svd(maps, name, which, m):
    import maps as module

    x = np.load("x40.npy")
    kwargs = {"name": name} if m is None else {"name": name, "m": m}
    got = _spectrum("maps:linear", "-p", "x40.npy", "--top", "4", "--which", which, *_kw(**kwargs))
    dense = _dense(lambda t: module.linear(t, **kwargs), x)
    want = np.linalg.svd(dense, compute_uv=False)
    want = want[:4] if which == "largest" else np.sort(want)[:4]
    np.testing.assert_allclose(got["singular_values"], want, rtol=1e-8)
    assert (got["residuals"] < 1e-9).all()
    assert got["products"] > 0
    cond = np.linalg.cond(dense)
    if got["condition_kind"] == "estimate":
        np.testing.assert_allclose(got["condition"], cond, rtol=1e-6)
    else:
        assert got["condition_kind"] == "lower bound" and got["condition"] <= cond * (1 + 1e-9)


def test_a_nonlinear_map_and_its_vectors_into_an_npz(maps):
    import maps as module

    x = np.load("x40.npy")
    run = jac("spectrum", "maps:layer", "-p", "x40.npy", "--top", "3", "-o", "s.npz", "--no-timings")
    assert run.code == 0, run
    with np.load("s.npz", allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    dense = _dense(module.layer, x)
    u, s, vh = np.linalg.svd(dense)
    np.testing.assert_allclose(got["singular_values"], s[:3], rtol=1e-8)
    assert got["left_vectors"].shape == (3, 40) and got["right_vectors"].shape == (3, 40)
    for i in range(3):
        v, left = got["right_vectors"][i], got["left_vectors"][i]
        np.testing.assert_allclose(dense @ v, s[i] * left, atol=1e-9)
        np.testing.assert_allclose(abs(v @ vh[i]), 1, rtol=1e-8)


def test_rank_deficient_map_has_its_rank(maps):
    got = _spectrum(
        "maps:linear", "-p", "x40.npy", "--top", "8", "--rank-tol", "1e-6", *_kw(name="deficient")
    )
    assert int(got["rank"]) == 5 and str(got["rank_kind"]) == "exact"
    assert (got["singular_values"][5:] < 1e-6 * got["singular_values"][0]).all()
    full = _spectrum("maps:linear", "-p", "x5.npy", "--top", "2", *_kw(name="deficient"))
    assert int(full["rank"]) == 5 and str(full["condition_kind"]) == "exact"  # dense: exact


@pytest.mark.parametrize(
    "name, by", [("nonnormal", "magnitude"), ("diagonal", "real"), ("diagonal", "magnitude")]
)
def test_eigenvalues_equal_numpy_eigvals(maps, name, by):
    import maps as module

    x = np.load("x30.npy")
    got = _spectrum("maps:linear", "-p", "x30.npy", "--eig", "--top", "4", "--by", by, *_kw(name=name))
    values = np.linalg.eigvals(_dense(lambda t: module.linear(t, name=name), x))
    key = np.real(values) if by == "real" else np.abs(values)
    want = values[np.argsort(-key)][:4]
    np.testing.assert_allclose(got["eigenvalues.real"], np.real(want), rtol=1e-8)
    np.testing.assert_allclose(got["eigenvalues.imag"], np.imag(want), atol=1e-8)
    assert (got["residuals"] < 1e-8).all()


def test_complex_eigenvalues_come_in_pairs(maps):
    import maps as module

    x = np.load("x30.npy")
    got = _spectrum("maps:rotation", "-p", "x30.npy", "--eig", "--top", "2")
    values = np.linalg.eigvals(_dense(module.rotation, x))
    want = values[np.argsort(-np.abs(values))][:2]
    got_values = got["eigenvalues.real"] + 1j * got["eigenvalues.imag"]
    np.testing.assert_allclose(np.sort_complex(got_values), np.sort_complex(want), rtol=1e-8)
    assert got["eigenvalues.imag"][0] > 0  # of a conjugate pair, the positive imaginary part first


def test_hessian_eigenvalues_equal_eigvalsh_of_torch_func_hessian(maps):
    import maps as module

    x = np.load("x30.npy")
    module.energy(torch.tensor(x))
    hessian = torch.func.hessian(module.energy)(torch.tensor(x)).numpy()
    want = np.linalg.eigvalsh(hessian)
    top = _spectrum("maps:energy", "-p", "x30.npy", "--hessian", "--by", "real", "--top", "3")
    np.testing.assert_allclose(top["eigenvalues"], want[::-1][:3], rtol=1e-8)
    bottom = _spectrum(
        "maps:energy", "-p", "x30.npy", "--hessian", "--by", "real", "--which", "smallest", "--top", "3"
    )
    np.testing.assert_allclose(bottom["eigenvalues"], want[:3], rtol=1e-8)
    assert (bottom["residuals"] < 1e-9).all()


def test_hessian_of_the_mlp_loss_with_respect_to_its_parameters():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlp_example", EXAMPLES / "mlp.py")
    mlp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mlp)
    loss = mlp.loss().double()
    x = torch.tensor(np.load(EXAMPLES / "mlp_x.npy"), dtype=torch.float64)
    params = {k: v.detach() for k, v in loss.named_parameters()}

    def flat_loss(vector):
        parts, start = {}, 0
        for key, value in params.items():
            parts[key] = vector[start : start + value.numel()].reshape(value.shape)
            start += value.numel()
        return torch.func.functional_call(loss, parts, (x,))

    vector = torch.cat([v.reshape(-1) for v in params.values()])
    want = np.linalg.eigvalsh(torch.func.hessian(flat_loss)(vector).numpy())
    func = f"{EXAMPLES / 'mlp.py'}:loss()"
    got = _spectrum(
        func, "-p", str(EXAMPLES / "mlp_x.npy"), "--wrt", "params", "--hessian", "--by", "real", "--top", "2"
    )
    np.testing.assert_allclose(got["eigenvalues"], want[::-1][:2], rtol=1e-8)


def test_tiny_maps_are_formed_from_products(maps):
    import maps as module

    x = np.load("x5.npy")
    run = jac("spectrum", "maps:layer", "-p", "x5.npy", "--top", "2", "--no-timings")
    assert run.code == 0, run
    assert "formed from 5 products" in run.stdout and "singular value" in run.stdout
    got = _spectrum("maps:layer", "-p", "x5.npy", "--top", "4", "--which", "smallest")
    want = np.sort(np.linalg.svd(_dense(module.layer, x), compute_uv=False))[:4]
    np.testing.assert_allclose(got["singular_values"], want, rtol=1e-10)
    eig = _spectrum("maps:layer", "-p", "x5.npy", "--top", "4", "--eig")
    values = np.linalg.eigvals(_dense(module.layer, x))
    want = values[np.argsort(-np.abs(values))][:4]
    np.testing.assert_allclose(
        np.abs(eig["eigenvalues.real"] + 1j * eig["eigenvalues.imag"]), np.abs(want), rtol=1e-10
    )


def test_several_primals_argnums_and_a_dict_output(maps):
    import maps as module

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(20), rng.standard_normal(20)
    np.save("x.npy", x)
    np.save("y.npy", y)

    def flat(a, b):
        out = module.two(a, b)
        return torch.cat([out["u"].reshape(-1), out["v"].reshape(-1)])

    tx, ty = torch.tensor(x), torch.tensor(y)
    both = torch.cat(torch.func.jacrev(flat, argnums=(0, 1))(tx, ty), dim=1).numpy()
    got = _spectrum("maps:two", "-p", "x.npy", "-p", "y.npy", "--argnums", "0,1", "--top", "3")
    np.testing.assert_allclose(got["singular_values"], np.linalg.svd(both, compute_uv=False)[:3], rtol=1e-8)
    second = torch.func.jacrev(flat, argnums=1)(tx, ty).numpy()
    got = _spectrum("maps:two", "-p", "x.npy", "-p", "y.npy", "--argnums", "1", "--top", "3")
    np.testing.assert_allclose(got["singular_values"], np.linalg.svd(second, compute_uv=False)[:3], rtol=1e-8)


def test_batch_dim_gives_one_spectrum_per_sample(maps):
    import maps as module

    rng = np.random.default_rng(3)
    xs = rng.standard_normal((3, 30))
    np.save("xs.npy", xs)
    got = _spectrum("maps:layer", "-p", "xs.npy", "--batch-dim", "0", "--top", "2")
    assert got["singular_values"].shape == (3, 2) and got["condition"].shape == (3,)
    for b in range(3):
        want = np.linalg.svd(_dense(module.layer, xs[b]), compute_uv=False)[:2]
        np.testing.assert_allclose(got["singular_values"][b], want, rtol=1e-8)
    text = jac("spectrum", "maps:layer", "-p", "xs.npy", "--batch-dim", "0", "--top", "2", "--no-timings")
    assert text.stdout.count("sample ") == 3


def test_text_table_and_json(maps):
    run = jac("spectrum", "maps:linear", "-p", "x30.npy", "--top", "3", *_kw(name="diagonal"))
    assert run.code == 0, run
    assert "singular values of J (30 x 30): the 3 largest" in run.stdout
    assert "5.01" in run.stdout and "condition number (2-norm)" in run.stdout and "products:" in run.stdout
    assert "function alone" in run.stderr and "spectrum via ARPACK svds" in run.stderr
    import json

    doc = json.loads(
        jac("spectrum", "maps:linear", "-p", "x30.npy", "--top", "3", "--format", "json", "-q").stdout
    )
    assert doc["singular_values"]["shape"] == [3] and "right_vectors" not in doc


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-p", "x30.npy", "--top", "0"], "--top 0: ask for 1 or more"),
        (["-p", "x30.npy", "--top", "30"], "--top 30: J is 30 x 30, so it has 30 singular values"),
        (["-p", "x5.npy", "--top", "7", "--eig"], "--top 7"),
        (["-p", "x30.npy", "--eig", "--kwarg", "m=20"], "--eig needs a square Jacobian; this one is 20 x 30"),
        (["-p", "x30.npy", "--hessian"], "needs a function with a one-element output"),
        (["-p", "x30.npy", "--by", "real"], "--by real is for eigenvalues"),
        (["-p", "x30.npy", "--eig", "--hessian"], "choose one"),
        (["-p", "x30.npy", "--format", "npy"], ".npy holds one array but there are 8 results"),
        (["-p", "x30.npy", "--select", "eigenvalues"], "--select 'eigenvalues': no such result"),
    ],
)
def test_bad_requests_are_one_line_and_exit_2(maps, args, needle):
    run = jac("spectrum", "maps:linear", *args)
    assert_clean_error(run, 2, needle)


def test_without_scipy_it_says_which_extra_to_install(maps, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.sparse.linalg", None)
    run = jac("spectrum", "maps:linear", "-p", "x30.npy")
    assert_clean_error(run, 2, "pip install 'jaccli[spectrum]'")


def test_select_one_key_into_npy(maps):
    run = jac(
        "spectrum", "maps:linear", "-p", "x30.npy", "--top", "2", "--select", "right_vectors", "-o", "v.npy"
    )
    assert run.code == 0, run
    assert np.load("v.npy").shape == (2, 30)
