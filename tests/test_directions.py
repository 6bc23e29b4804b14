"""jvp/vjp --directions K: K products in one run equal K single runs, and torch.func's."""

import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, assert_clean_error, jac, write_module

MLP = f"{EXAMPLES / 'mlp.py'}:model()"
F64 = ("--dtype", "float64")
TWO = f"{EXAMPLES / 'two_inputs.py'}:f"

LAYER = """
import torch

def f(x, y):
    w = torch.linspace(-1.0, 1.0, x.numel() * 3, dtype=x.dtype).reshape(3, x.numel())
    return torch.tanh(w @ x) * y.sum() + y[:3] ** 2

def split(x):
    return {"a": torch.sin(x), "b": (x ** 3).sum()}
"""


def _npz(run):
    assert run.code == 0, run
    return run.npz()


def _results(command, func, *args):
    """One run's results (npz on standard output), single direction or many."""
    return _npz(jac(command, func, *args, "--format", "npz", "--repeat", "0", "--no-timings", *_f64(func)))


def _f64(func):
    return ("--dtype", "float64") if func == MLP else ()


def test_jvp_directions_equal_single_runs_with_several_primals(workdir):
    write_module(workdir, "layer", LAYER)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(4), rng.standard_normal(5)
    np.save("x.npy", x)
    np.save("y.npy", y)
    k = 5
    tx, ty = rng.standard_normal((k, 4)), rng.standard_normal((k, 5))
    np.savez("t.npz", tx=tx, ty=ty)
    got = _results("jvp", "layer:f", "-p", "x.npy", "-p", "y.npy", "-t", "t.npz", "--directions", str(k))
    assert got["jvp"].shape == (k, 3)
    for i in range(k):
        np.save("tx.npy", tx[i])
        np.save("ty.npy", ty[i])
        one = _results("jvp", "layer:f", "-p", "x.npy", "-p", "y.npy", "-t", "tx.npy", "-t", "ty.npy")
        np.testing.assert_allclose(got["jvp"][i], one["jvp"], rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(got["output"], one["output"])

    def f(a, b):
        w = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
        return torch.tanh(w @ a) * b.sum() + b[:3] ** 2

    want = torch.func.vmap(lambda u, v: torch.func.jvp(f, (torch.tensor(x), torch.tensor(y)), (u, v))[1])(
        torch.tensor(tx), torch.tensor(ty)
    )
    np.testing.assert_allclose(got["jvp"], want.numpy(), rtol=1e-13, atol=1e-15)


def test_vjp_directions_equal_single_runs_with_a_dict_output(workdir):
    rng = np.random.default_rng(4)
    k = 3
    product, energy = rng.standard_normal((k, 3)), rng.standard_normal(k)
    np.savez("u.npz", product=product, energy=energy)
    xy = str(EXAMPLES / "xy.npz")
    got = _results("vjp", TWO, "-p", xy, "-u", "u.npz", "--directions", str(k), "--dtype", "float64")
    assert got["vjp.0"].shape == (k, 3) and got["vjp.1"].shape == (k, 3)
    for i in range(k):
        np.savez("ui.npz", product=product[i], energy=energy[i])
        one = _results("vjp", TWO, "-p", xy, "-u", "ui.npz", "--dtype", "float64")
        for key in ("vjp.0", "vjp.1"):
            np.testing.assert_allclose(got[key][i], one[key], rtol=1e-13, atol=1e-15)


def test_jvp_of_a_dict_output_leads_every_leaf_with_the_directions(workdir):
    write_module(workdir, "layer", LAYER)
    rng = np.random.default_rng(5)
    np.save("x.npy", rng.standard_normal(6))
    t = rng.standard_normal((4, 6))
    np.save("t.npy", t)
    got = _results("jvp", "layer:split", "-p", "x.npy", "-t", "t.npy", "--directions", "4")
    assert got["jvp.a"].shape == (4, 6) and got["jvp.b"].shape == (4,)
    x = np.load("x.npy")
    np.testing.assert_allclose(got["jvp.a"], np.cos(x) * t, rtol=1e-13)
    np.testing.assert_allclose(got["jvp.b"], t @ (3 * x**2), rtol=1e-13)


def test_batch_dim_directions_lead_then_the_batch(workdir):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4))
    t = rng.standard_normal((3, 5, 4))
    np.save("x.npy", x)
    np.save("t.npy", t)
    got = _results("jvp", MLP, "-p", "x.npy", "-t", "t.npy", "--directions", "3", "--batch-dim", "0")
    assert got["jvp"].shape == (3, 5, 2)
    for i in range(3):
        np.save("ti.npy", t[i])
        one = _results("jvp", MLP, "-p", "x.npy", "-t", "ti.npy", "--batch-dim", "0")
        np.testing.assert_allclose(got["jvp"][i], one["jvp"], rtol=1e-13, atol=1e-15)
    u = rng.standard_normal((3, 5, 2))
    np.save("u.npy", u)
    got = _results("vjp", MLP, "-p", "x.npy", "-u", "u.npy", "--directions", "3", "--batch-dim", "0")
    assert got["vjp.0"].shape == (3, 5, 4)
    for i in range(3):
        np.save("ui.npy", u[i])
        one = _results("vjp", MLP, "-p", "x.npy", "-u", "ui.npy", "--batch-dim", "0")
        np.testing.assert_allclose(got["vjp.0"][i], one["vjp.0"], rtol=1e-13, atol=1e-15)


def test_a_generator_draws_k_directions_and_ones_repeats_the_single_product():
    got = _results("jvp", MLP, "-p", "randn:4", "-t", "randn", "--directions", "6")
    assert got["jvp"].shape == (6, 2)
    assert len({tuple(row) for row in got["jvp"].round(12)}) == 6  # six different directions
    ones = _results("jvp", MLP, "-p", "randn:4", "-t", "ones", "--directions", "3")
    one = _results("jvp", MLP, "-p", "randn:4", "-t", "ones")
    for row in ones["jvp"]:
        np.testing.assert_allclose(row, one["jvp"], rtol=1e-13)


def test_vjp_directions_with_respect_to_parameters(workdir):
    rng = np.random.default_rng(7)
    u = rng.standard_normal((2, 2))  # two cotangents of the MLP's 2 outputs
    np.save("u.npy", u)
    x = str(EXAMPLES / "mlp_x.npy")
    got = _results("vjp", MLP, "-p", x, "-u", "u.npy", "--directions", "2", "--wrt", "params")
    assert {k for k in got if k.startswith("vjp.")} == {
        "vjp.0.weight",
        "vjp.0.bias",
        "vjp.2.weight",
        "vjp.2.bias",
    }
    assert got["vjp.0.weight"].shape == (2, 8, 4)
    for i in range(2):
        np.save("ui.npy", u[i])
        one = _results("vjp", MLP, "-p", x, "-u", "ui.npy", "--wrt", "params")
        for key in ("vjp.0.weight", "vjp.0.bias", "vjp.2.weight", "vjp.2.bias"):
            np.testing.assert_allclose(got[key][i], one[key], rtol=1e-13, atol=1e-15)


def test_trial_chunks_and_linearize_agree_with_vmap(workdir):
    rng = np.random.default_rng(8)
    np.save("x.npy", rng.standard_normal(4))
    np.save("t.npy", rng.standard_normal((16, 4)))
    base = _results("jvp", MLP, "-p", "x.npy", "-t", "t.npy", "--directions", "16")
    f64 = ("--dtype", "float64")
    run = jac(
        "jvp",
        MLP,
        "-p",
        "x.npy",
        "-t",
        "t.npy",
        "--directions",
        "16",
        "--repeat",
        "2",
        "--format",
        "npz",
        *f64,
    )
    assert run.code == 0, run
    assert "fastest on the first chunk of vmap" in run.stderr and "linearize" in run.stderr
    np.testing.assert_allclose(run.npz()["jvp"], base["jvp"], rtol=1e-12)
    run = jac(
        "jvp",
        MLP,
        "-p",
        "x.npy",
        "-t",
        "t.npy",
        "--directions",
        "16",
        "--max-memory",
        "700",
        "--format",
        "npz",
        *f64,
    )
    assert run.code == 0, run
    assert "computed in chunks of" in run.stderr
    np.testing.assert_allclose(run.npz()["jvp"], base["jvp"], rtol=1e-12)


def test_a_function_vmap_cannot_batch_falls_back_to_a_loop(workdir):
    write_module(
        workdir,
        "itemy",
        """
        import torch

        def f(x):
            return x * float(x.sum().item() > 0) + torch.sin(x)
        """,
    )
    np.save("x.npy", np.abs(np.random.default_rng(9).standard_normal(3)))
    np.save("t.npy", np.eye(3))
    run = jac("jvp", "itemy:f", "-p", "x.npy", "-t", "t.npy", "--directions", "3", "--format", "npz")
    assert run.code == 0, run
    x = np.load("x.npy")
    np.testing.assert_allclose(run.npz()["jvp"], np.diag(1 + np.cos(x)), rtol=1e-13)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-t", "randn", "--directions", "0"], "--directions"),
        (["-t", "v.npy", "--directions", "4"], "needs a leading axis of 4 directions"),
        (["--directions", "4"], "needs --tangents"),
        (["-t", "randn:3,2", "--directions", "4"], "takes its shape from the primals"),
    ],
)
def test_bad_directions_are_one_line_and_exit_2(args, needle, workdir):
    np.save("x.npy", np.ones((3, 2)))
    np.save("v.npy", np.ones((3, 3, 2)))
    run = jac("jvp", f"{EXAMPLES / 'quickstart.py'}:f", "-p", "x.npy", *args)
    assert_clean_error(run, 2, needle)


def test_directions_on_another_command_is_refused():
    from jaccli import Request, run
    from jaccli.errors import InputError

    with pytest.raises(InputError, match="--directions is for jvp and vjp"):
        run(Request("jacrev", MLP, primals=["randn:4"], n_directions=3))


STREAM = """
import os
import torch

FAILURE = [None]  # raised by the second call once the streamed file's temporary twin exists
CALLS = [0]

def f(x, y):  # R^3 x R^2 -> R^(3, 2), elementwise: chunks of any size give the same bits
    if FAILURE[0] is not None and any(n.endswith(".tmp") for n in os.listdir(".")):
        CALLS[0] += 1  # one call per chunk of directions (vmap)
        if CALLS[0] == 2:
            raise FAILURE[0]("broken while streaming")
    return torch.tanh(x)[:, None] * torch.sin(y)[None, :] + x[:, None] ** 2
"""


@pytest.fixture
def streamdirs(workdir):
    write_module(workdir, "streamdirs", STREAM)
    import importlib

    return importlib.import_module("streamdirs")


def _to_npy(command, *args, memory=None):
    """The one result of ``args`` (with --select) written to R.npy; streamed when ``memory`` is small."""
    limit = ("--max-memory", memory) if memory else ()
    run = jac(command, "streamdirs:f", *args, "-o", "R.npy", "--dtype", "float64", "--repeat", "0", *limit)
    assert run.code == 0, run
    chunks = re.search(r"memory: streamed to R.npy in chunks of (\d+) directions", run.stderr)
    assert bool(chunks) == bool(memory), run
    result = np.load("R.npy", allow_pickle=False)
    assert not chunks or 1 < int(chunks[1]) < len(result), run  # several chunks, of several directions
    return result


def test_streamed_jvp_directions_equal_the_in_memory_result_and_single_runs(streamdirs):
    rng = np.random.default_rng(10)
    np.save("x.npy", rng.standard_normal(3))
    np.save("y.npy", rng.standard_normal(2))
    k = 40
    tx, ty = rng.standard_normal((k, 3)), rng.standard_normal((k, 2))
    np.savez("t.npz", tx=tx, ty=ty)
    args = ("-p", "x.npy", "-p", "y.npy", "-t", "t.npz", "--directions", str(k), "--select", "jvp")
    streamed = _to_npy("jvp", *args, memory="2300")  # 1,920 bytes of results, in chunks
    assert streamed.shape == (k, 3, 2)
    np.testing.assert_array_equal(streamed, _to_npy("jvp", *args))
    for i in range(k):
        np.save("tx.npy", tx[i])
        np.save("ty.npy", ty[i])
        one = _results("jvp", "streamdirs:f", "-p", "x.npy", "-p", "y.npy", "-t", "tx.npy", "-t", "ty.npy")
        np.testing.assert_allclose(streamed[i], one["jvp"], rtol=1e-13, atol=1e-15)


def test_streamed_vjp_directions_under_batch_dim_equal_in_memory_and_single_runs(streamdirs):
    rng = np.random.default_rng(11)
    # two elements each: every vjp entry sums two terms, exact in any order (chunks of directions
    # may reduce in another order on another CPU)
    np.save("x.npy", rng.standard_normal((5, 2)))
    np.save("y.npy", rng.standard_normal((5, 2)))
    k = 30
    u = rng.standard_normal((k, 5, 2, 2))
    np.save("u.npy", u)
    args = ("-p", "x.npy", "-p", "y.npy", "-u", "u.npy", "--directions", str(k), "--batch-dim", "0")
    streamed = {}
    for key, width in (("vjp.0", 2), ("vjp.1", 2)):
        streamed[key] = _to_npy("vjp", *args, "--select", key, memory="5500")  # 4,800 bytes of results
        assert streamed[key].shape == (k, 5, width)
        np.testing.assert_array_equal(streamed[key], _to_npy("vjp", *args, "--select", key))
    for i in range(k):
        np.save("ui.npy", u[i])
        one = _results(
            "vjp", "streamdirs:f", "-p", "x.npy", "-p", "y.npy", "-u", "ui.npy", "--batch-dim", "0"
        )
        for key in streamed:
            np.testing.assert_allclose(streamed[key][i], one[key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "failure, code, needle",
    [(RuntimeError, 3, "broken while streaming"), (KeyboardInterrupt, 130, "interrupted")],
)
def test_a_failure_mid_stream_leaves_no_file_and_keeps_the_old_one(streamdirs, failure, code, needle):
    streamdirs.FAILURE[0] = failure
    np.save("R.npy", np.arange(3.0))
    run = jac(
        "jvp",
        "streamdirs:f",
        "-p",
        "randn:3",
        "-p",
        "randn:2",
        "-t",
        "randn",
        "--directions",
        "9",
        "--select",
        "jvp",
        "-o",
        "R.npy",
        "--max-memory",
        "700",
        "--dtype",
        "float64",
    )
    assert_clean_error(run, code, needle)
    assert streamdirs.CALLS[0] == 2  # it failed on the second chunk, after the first was written
    np.testing.assert_array_equal(np.load("R.npy"), np.arange(3.0))
    assert not [n for n in os.listdir(".") if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "out", [["-o", "R.npz"], ["-o", "R.json"], ["--format", "npz"], ["-o", "R.npy", "--select", "output"]]
)
def test_a_directions_result_larger_than_memory_elsewhere_is_refused(streamdirs, out):
    args = ("-p", "randn:3", "-p", "randn:2", "-t", "randn", "--directions", "9", "--max-memory", "400", *F64)
    run = jac("jvp", "streamdirs:f", *args, *out)
    assert_clean_error(run, 2, "--directions 9", "more than --max-memory", "-o R.npy --select KEY (KEY: jvp)")
    assert not [n for n in os.listdir(".") if n.startswith(("R", ".R"))]


def test_a_disk_too_small_for_the_streamed_directions_is_an_input_error(streamdirs, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 300, 300))
    args = ("-p", "randn:3", "-p", "randn:2", "-t", "randn", "--directions", "40", "--select", "jvp")
    run = jac("jvp", "streamdirs:f", *args, "-o", "R.npy", "--max-memory", "2300", *F64)
    assert_clean_error(run, 2, "-o R.npy", "has 300 bytes free")
    assert not [n for n in os.listdir(".") if n.startswith(("R", ".R"))]


@pytest.mark.parametrize("command, limit", [("vjp", 500_000), ("jvp", 900_000)])
def test_chunks_of_directions_keep_every_tensor_alive_within_the_limit(workdir, command, limit):
    """J.v and u^T.J of sin(x).outer(x): each direction's pass holds two output-sized products,
    more than the count of 2 x (inputs + outputs); the measured pass sizes the chunks (the old
    count overran both limits: 506 kB and 1.3 MB alive)."""
    from jaccli import Request, run
    from jaccli.scale import memory

    write_module(workdir, "outermod", "import torch\n\ndef f(x):\n    return torch.sin(x).outer(x)\n")
    rng = np.random.default_rng(12)
    np.save("x.npy", rng.standard_normal(30))
    shape = (64, 30, 30) if command == "vjp" else (64, 30)
    np.save("d.npy", rng.standard_normal(shape))
    given = {"cotangents" if command == "vjp" else "tangents": ["d.npy"]}
    request = Request(command, "outermod:f", primals=["x.npy"], n_directions=64, repeat=0, **given)
    with memory._Watch() as watch:
        chunked = run(replace(request, max_memory=limit))
    note = chunked.timings.footer["memory"]
    assert "computed in chunks of" in note and "(measured)" in note, note
    assert watch.peak <= limit, (watch.peak, note)
    key = "vjp.0" if command == "vjp" else "jvp"
    whole = run(request)
    assert "memory" not in whole.timings.footer
    np.testing.assert_allclose(chunked.results[key], whole.results[key], rtol=1e-14, atol=1e-15)
    x, d = torch.tensor(np.load("x.npy")), torch.tensor(np.load("d.npy"))

    def f(x):
        return torch.sin(x).outer(x)

    if command == "vjp":
        want = torch.func.vmap(torch.func.vjp(f, x)[1])(d)[0]
    else:
        want = torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,))[1])(d)
    np.testing.assert_allclose(chunked.results[key], want.numpy(), rtol=1e-13, atol=1e-15)
