"""Numbers jac can stand behind (issue 10): in-place functions, randomness, NaN from a trick route,
ZeroTensors and zero-size results, numpy inside the function, the jacobian mode fallback.

Every answer is compared with torch.func called directly on a fresh copy of the input (float64),
or with the closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.func as tf
from conftest import assert_clean_error, jac, write_module

from jaccli.autodiff import calls
from jaccli.pipeline import Request, run

X = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
V = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
U = torch.tensor([1.5, 0.5, -2.0], dtype=torch.float64)


def results(command, fn, primals, engine="auto", repeat=0, **options):
    request = Request(command, fn, primals=primals, engine=engine, repeat=repeat, warmup=0, **options)
    return run(request)


def doubling(x):  # changes its input in place
    x.mul_(2)
    return x.sin()


def doubling_sum(x):
    x.mul_(2)
    return x.sin().sum()


def fresh(f):
    return lambda x: f(x.clone())


def expected(command):
    """torch.func's answer on a fresh copy of the input, and the key jac gives it."""
    f, s = fresh(doubling), fresh(doubling_sum)
    x = X.clone()
    if command == "jvp":
        return {"output": f(x), "jvp": tf.jvp(f, (x,), (V,))[1]}
    if command == "vjp":
        out, pull = tf.vjp(f, x)
        return {"output": out, "vjp.0": pull(U)[0]}
    if command in ("jacfwd", "jacrev", "jacobian"):
        return {"jacobian": tf.jacrev(f)(x)}
    if command == "hessian":
        return {"hessian": tf.hessian(s)(x)}
    return {"output": s(x), "grad": tf.grad(s)(x), "hvp": tf.jvp(tf.grad(s), (x,), (V,))[1]}


@pytest.mark.parametrize("repeat", [0, 2], ids=["one-shot", "trial"])
@pytest.mark.parametrize("engine", ["auto", "func", "autograd"])
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacfwd", "jacrev", "jacobian", "hessian", "hvp"])
def test_in_place_function_gets_torch_func_numbers_on_a_fresh_input(command, engine, repeat):
    fn = doubling_sum if command in ("hessian", "hvp") else doubling
    x = X.clone()
    options = {}
    if command in ("jvp", "hvp"):
        options["tangents"] = [V]
    if command == "vjp":
        options["cotangents"] = [U]
    outcome = results(command, fn, [x], engine=engine, repeat=repeat, **options)
    want = expected(command)
    assert set(want) <= set(outcome.results), outcome.results
    for key, value in want.items():
        np.testing.assert_allclose(outcome.results[key], value.numpy(), rtol=1e-12, atol=1e-12, err_msg=key)
    assert torch.equal(x, X)  # the caller's tensor is untouched
    assert "in place" in outcome.timings.footer["function"]


def test_in_place_cli_jacfwd_and_jvp_engine_func(workdir):
    write_module(workdir, "inplace", "def f(x):\n    x.mul_(2)\n    return x.sin()\n")
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    run_ = jac("jacfwd", "inplace:f", "-p", "[1.0, 2.0]", "--dtype", "float64", "--format", "npz")
    assert run_.code == 0, run_
    np.testing.assert_allclose(run_.npz()["jacobian"], tf.jacfwd(fresh(doubling))(x).numpy(), rtol=1e-12)
    run_ = jac(
        "jvp",
        "inplace:f",
        "-p",
        "[1.0, 2.0]",
        "-t",
        "ones",
        "--engine",
        "func",
        "--dtype",
        "float64",
        "--format",
        "npz",
        "--repeat",
        "3",
    )
    assert run_.code == 0, run_
    np.testing.assert_allclose(run_.npz()["output"], torch.sin(2 * x).numpy(), rtol=1e-12)
    np.testing.assert_allclose(run_.npz()["jvp"], (2 * torch.cos(2 * x)).numpy(), rtol=1e-12)


def test_chunked_and_streamed_runs_see_fresh_inputs(tmp_path):
    x = torch.linspace(0.1, 1.0, 6, dtype=torch.float64)
    want = tf.jacrev(fresh(doubling))(x).numpy()
    chunked = results("jacrev", doubling, [x], max_memory=700)
    assert "memory" in chunked.timings.footer, chunked.timings.footer
    np.testing.assert_allclose(chunked.results["jacobian"], want, rtol=1e-12)
    out = tmp_path / "J.npy"
    run(Request("jacrev", doubling, primals=[x], out=str(out), max_memory=100, repeat=0, warmup=0))
    np.testing.assert_allclose(np.load(out), want, rtol=1e-12)


class Counter(torch.nn.Module):
    """Changes a buffer (and its input) on every call: each call must see the state the user gave."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2).double()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls.add_(1)
        x.mul_(2)
        return self.lin(x) * self.calls


@pytest.mark.parametrize("engine", ["auto", "autograd"])
def test_module_state_and_inputs_put_back_under_wrt_params(engine):
    torch.manual_seed(0)
    module = Counter()
    w, b = module.lin.weight.detach().clone(), module.lin.bias.detach().clone()
    outcome = results("jacrev", module, [X.clone()], engine=engine, repeat=2, wrt="params")
    # one fresh call: calls becomes 1, x becomes 2x: out = W (2x) + b, so d out / d W[i, j] = 2 x_j
    jw = outcome.results["jacobian.lin.weight"]
    want = np.zeros((2, 2, 3))
    for i in range(2):
        want[i, i] = 2 * X.numpy()
    np.testing.assert_allclose(jw, want, rtol=1e-12)
    np.testing.assert_allclose(outcome.results["jacobian.lin.bias"], np.eye(2), rtol=1e-12)
    assert float(module.calls) == 0.0  # the user's module is left as given
    assert torch.equal(module.lin.weight.detach(), w) and torch.equal(module.lin.bias.detach(), b)


def dropped(x):
    return torch.nn.functional.dropout(x, p=0.5, training=True) * x


def seeded(f, seed=0):
    def g(x):
        with calls.seeded(seed):
            return f(x)

    return g


@pytest.mark.parametrize("engine", ["auto", "func", "autograd"])
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacfwd", "jacrev", "jacobian"])
def test_dropout_matches_torch_func_on_the_seeded_function(command, engine):
    x = torch.linspace(0.5, 2.0, 32, dtype=torch.float64)  # 32: a mask all kept or all dropped is 2^-31
    v, u = torch.ones_like(x), torch.full_like(x, 0.5)
    options = {"tangents": [v]} if command == "jvp" else {"cotangents": [u]} if command == "vjp" else {}
    outcome = results(command, dropped, [x], engine=engine, repeat=2, seed=7, **options)
    g = seeded(dropped, 7)
    if command == "jvp":
        out, want = tf.jvp(g, (x,), (v,))
        key = "jvp"
    elif command == "vjp":
        out, pull = tf.vjp(g, x)
        want, key = pull(u)[0], "vjp.0"
    else:
        out, want, key = g(x), tf.jacrev(g)(x), "jacobian"
        np.testing.assert_allclose(want.numpy(), tf.jacfwd(g, randomness="same")(x).numpy(), rtol=1e-12)
    np.testing.assert_allclose(outcome.results[key], want.numpy(), rtol=1e-12)
    if "output" in outcome.results:
        np.testing.assert_allclose(outcome.results["output"], out.numpy(), rtol=1e-12)
    # the same mask in the function and its derivative: d(m x^2 / (1-p)) = 2 m x / (1-p) = 2 out / x
    mask_derivative = 2 * out / x
    if command == "jvp":
        np.testing.assert_allclose(outcome.results["jvp"], mask_derivative.numpy(), rtol=1e-12)
    if key == "jacobian":
        np.testing.assert_allclose(np.diag(outcome.results["jacobian"]), mask_derivative.numpy(), rtol=1e-12)
    kept = int((out != 0).sum())
    assert 0 < kept < x.numel()  # a real mask, neither all kept nor all dropped


@pytest.mark.parametrize("engine", ["auto", "func", "autograd"])
@pytest.mark.parametrize("command", ["vjp", "jacrev", "jacobian"])
def test_dropout_per_sample_under_batch_dim(command, engine):
    """--batch-dim with a random function: every sample sees the seeded stream's one mask, as a
    seeded single-sample call does (vmap's randomness 'same'), instead of vmap's refusal."""
    x = torch.linspace(0.5, 2.0, 96, dtype=torch.float64).reshape(3, 32)
    u = torch.full_like(x, 0.5)
    options = {"cotangents": [u]} if command == "vjp" else {}
    outcome = results(command, dropped, [x], engine=engine, seed=7, batch_dim=0, **options)
    g = seeded(dropped, 7)
    for b in range(3):
        if command == "vjp":
            out, pull = tf.vjp(g, x[b])
            want, key = pull(u[b])[0], "vjp.0"
            np.testing.assert_allclose(outcome.results["output"][b], out.numpy(), rtol=1e-12)
        else:
            want, key = tf.jacrev(g)(x[b]), "jacobian"
        np.testing.assert_allclose(outcome.results[key][b], want.numpy(), rtol=1e-12)
    kept = int((g(x[0]) != 0).sum())
    assert 0 < kept < 32  # a real mask, neither all kept nor all dropped


def test_dropout_module_in_train_mode_cli(workdir):
    write_module(
        workdir,
        "drop",
        """
        import torch
        def model():
            torch.manual_seed(0)
            layers = torch.nn.Linear(4, 6), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)
            return torch.nn.Sequential(*layers).double()
        """,
    )
    args = ["-p", "[0.1, 0.2, -0.3, 0.4]", "--dtype", "float64", "--format", "npz", "--seed", "3"]
    import drop

    m = drop.model()
    x = torch.tensor([0.1, 0.2, -0.3, 0.4], dtype=torch.float64)
    g = seeded(m, 3)
    for engine in ("func", "auto"):
        run_ = jac("jacobian", "drop:model()", *args, "--engine", engine)
        assert run_.code == 0, run_
        np.testing.assert_allclose(run_.npz()["jacobian"], tf.jacrev(g)(x).detach().numpy(), rtol=1e-12)
    run_ = jac("jacfwd", "drop:model()", *args)
    assert run_.code == 0, run_
    np.testing.assert_allclose(
        run_.npz()["jacobian"], tf.jacfwd(g, randomness="same")(x).detach().numpy(), rtol=1e-12
    )
    assert "jac: note" not in run_.stderr and "warning" not in run_.stderr  # nothing to warn about


def normal_noise(x):  # jacfwd under --randomness different refuses in-place noise on an unbatched tensor
    return x.repeat(2500) * torch.empty(5000, dtype=x.dtype).normal_()


@pytest.mark.parametrize("repeat", [0, 2])
def test_jacobian_falls_back_to_the_other_mode(repeat):
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    outcome = results("jacobian", normal_noise, [x], engine="func", repeat=repeat, randomness="different")
    want = tf.jacrev(seeded(normal_noise))(x)
    np.testing.assert_allclose(outcome.results["jacobian"], want.numpy(), rtol=1e-12)
    notes = " ".join(outcome.timings.notes)
    assert "torch.func.jacfwd" in notes and "randomness" in notes, notes
    assert "jacrev" in outcome.timings.footer["engine"], outcome.timings.footer


def lcse(x):
    return torch.logcumsumexp(x, dim=0)


@pytest.mark.parametrize("engine", ["auto", "autograd"])
@pytest.mark.parametrize("repeat", [None, 2], ids=["one-shot", "trial"])
def test_logcumsumexp_jvp_is_finite_and_torch_funcs(engine, repeat):
    x = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=torch.float64)
    v = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    outcome = results("jvp", lcse, [x], engine=engine, repeat=repeat, tangents=[v])
    want = tf.jvp(lcse, (x,), (v,))[1]
    assert np.isfinite(outcome.results["jvp"]).all()
    np.testing.assert_allclose(outcome.results["jvp"], want.numpy(), rtol=1e-12)
    notes = " ".join(outcome.timings.notes)
    if repeat is None:  # one-shot runs try the double-backward trick first: the NaN is noted
        assert "double-backward trick" in notes and "NaN" in notes, notes


def test_nan_every_route_agrees_on_is_kept_and_said():
    x = torch.tensor([0.0, 4.0], dtype=torch.float64)
    outcome = results("jvp", torch.sqrt, [x], engine="func", tangents=[torch.ones_like(x)])
    want = tf.jvp(torch.sqrt, (x,), (torch.ones_like(x),))[1]
    np.testing.assert_array_equal(outcome.results["jvp"], want.numpy())  # [inf, 0.25]
    assert any("every route tried" in r for r in outcome.timings.remarks), outcome.timings.remarks


def slogdet_of_outer(x):
    return torch.linalg.slogdet(x.reshape(1, 3) * x.reshape(3, 1) + torch.eye(3, dtype=x.dtype))


def l1(x):
    return torch.nn.functional.l1_loss(x, torch.zeros_like(x))


@pytest.mark.parametrize(
    "command,fn,options,key,want",
    [
        ("vjp", torch.sgn, {"cotangents": [U]}, "vjp.0", lambda: tf.vjp(torch.sgn, X)[1](U)[0]),
        ("hvp", lambda x: x.abs().sum(), {"tangents": [V]}, "hvp", lambda: torch.zeros(3).double()),
        ("hessian", l1, {}, "hessian", lambda: torch.zeros(3, 3, dtype=torch.float64)),
        ("jacfwd", slogdet_of_outer, {}, "jacobian.0", lambda: torch.zeros(3, dtype=torch.float64)),
    ],
    ids=["vjp-sgn", "hvp-abs-sum", "hessian-l1-loss", "jacfwd-slogdet-sign"],
)
@pytest.mark.parametrize("engine", ["auto", "func"])
def test_zero_tensor_results_are_zeros(command, fn, options, key, want, engine):
    outcome = results(command, fn, [X.clone()], engine=engine, **options)
    got = outcome.results[key]
    expected_ = want()
    expected_ = torch.zeros(expected_.shape, dtype=expected_.dtype) + expected_  # a ZeroTensor, materialized
    assert got.shape == tuple(expected_.shape) and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected_.numpy())


def test_zero_tensor_via_cli(workdir):
    write_module(workdir, "sg", "import torch\ndef f(x):\n    return torch.sgn(x)\n")
    run_ = jac("vjp", "sg:f", "-p", "[1.0, -2.0]", "-u", "ones", "--engine", "func", "--format", "npz")
    assert run_.code == 0, run_
    np.testing.assert_array_equal(run_.npz()["vjp.0"], np.zeros(2, dtype=np.float32))
    run_ = jac("jacobian", "sg:f", "-p", "[1.0, -2.0]", "--engine", "func", "--format", "npz")
    assert run_.code == 0, run_
    np.testing.assert_array_equal(run_.npz()["jacobian"], np.zeros((2, 2), dtype=np.float32))
    assert "exactly zero" not in run_.stderr  # sgn is on the graph: its derivative is zero, no hint


@pytest.mark.parametrize("engine", ["auto", "func", "autograd"])
@pytest.mark.parametrize(
    "command,fn,shape",
    [
        ("jacfwd", lambda x: x[:0] * 2, (0, 3)),
        ("jacrev", lambda x: x[:0] * 2, (0, 3)),
        ("jvp", lambda x: x[:0] * 2, (0,)),
        ("hessian", lambda x: (x * x).sum(), (0, 0)),
        ("jacobian", lambda x: x.sum().reshape(1), (1, 0)),
    ],
    ids=[
        "jacfwd-empty-output",
        "jacrev-empty-output",
        "jvp-empty-output",
        "hessian-empty-input",
        "jacobian-empty-input",
    ],
)
def test_zero_size_results_have_the_right_shape(command, fn, shape, engine):
    x = X.clone() if command in ("jacfwd", "jacrev", "jvp") else torch.zeros(0, dtype=torch.float64)
    options = {"tangents": [torch.ones_like(x)]} if command == "jvp" else {}
    outcome = results(command, fn, [x], engine=engine, **options)
    key = {"jvp": "jvp", "hessian": "hessian"}.get(command, "jacobian")
    assert outcome.results[key].shape == shape
    assert outcome.results[key].dtype == np.float64


NUMPY_ROUND_TRIP = """
import numpy as np
import torch
def f(x):
    return torch.from_numpy(np.sin(x.numpy()))
def detached(x):
    return torch.from_numpy(np.sin(x.detach().numpy()))
"""


@pytest.mark.parametrize("engine", ["auto", "func", "autograd"])
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacobian"])
def test_numpy_inside_the_function_exit_3_with_a_hint(workdir, command, engine):
    write_module(workdir, "np_trip", NUMPY_ROUND_TRIP)
    extra = ["-t", "ones"] if command == "jvp" else ["-u", "ones"] if command == "vjp" else []
    run_ = jac(command, "np_trip:f", "-p", "[0.5, 1.0]", *extra, "--engine", engine)
    assert_clean_error(run_, 3, "numpy", "derivatives cannot flow")


def test_detached_numpy_round_trip_gives_zeros_and_the_left_the_graph_note(workdir):
    write_module(workdir, "np_trip", NUMPY_ROUND_TRIP)
    run_ = jac("jacobian", "np_trip:detached", "-p", "[0.5, 1.0]", "--format", "npz")
    assert run_.code == 0, run_
    np.testing.assert_array_equal(run_.npz()["jacobian"], np.zeros((2, 2), dtype=np.float32))
    for words in ("off the autograd graph", "jac check", "--strict"):
        assert words in run_.stderr, run_


def test_plain_function_is_not_wrapped():
    """A function that neither mutates nor draws runs as it is: no per-call cost."""
    out, how = calls.profile(torch.sin, (X,), 0)
    assert how.plain and calls.disciplined(torch.sin, how, 0) is torch.sin
    outcome = results("jvp", torch.sin, [X.clone()], tangents=[V], repeat=2)
    assert outcome.timings.remarks == []


def test_module_changing_its_buffer_under_engine_func_says_why(workdir):
    torch.manual_seed(0)
    module = Counter()
    with pytest.raises(Exception) as caught:
        results("jacrev", module, [X.clone()], engine="func", wrt="params")
    assert getattr(caught.value, "exit_code", None) == 3
    assert "captured" in str(caught.value) and "--engine auto" in str(caught.value)
    assert float(module.calls) == 0.0


def test_jacobian_mode_auto_in_chunks_names_its_mode(workdir):
    """--mode auto computed in chunks has no single chosen route: no internal error (fuzz test)."""
    write_module(workdir, "chunky", "import torch\ndef f(x):\n    return torch.sin(x) * x\n")
    run_ = jac(
        "jacobian",
        "chunky:f",
        "-p",
        "[0.5, 1.0, 2.0]",
        "--max-memory",
        "100",
        "--repeat",
        "0",
        "--format",
        "npz",
    )
    assert run_.code == 0, run_
    x = torch.tensor([0.5, 1.0, 2.0])
    want = tf.jacrev(lambda t: torch.sin(t) * t)(x)
    np.testing.assert_allclose(run_.npz()["jacobian"], want.numpy(), rtol=1e-6)
    assert "mode: reverse" in run_.stderr or "mode: forward" in run_.stderr, run_
