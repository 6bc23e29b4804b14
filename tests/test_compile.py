"""``--compile``: the compiled transform gives torch.func's numbers, shows its phase, and falls
back cleanly when it cannot compile.

Compiling costs seconds per function, so the compiled cases are few and tiny (float64, so the
comparisons can be tight: rtol 1e-10).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.func as TF
from conftest import EXAMPLES, jac, write_module

from jaccli import Request, run

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def wave(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * y + x * x.sum()


def energy(x: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(x) * x.roll(1) + 0.5 * x**4).sum()


X = torch.linspace(-1.0, 1.5, 5, dtype=torch.float64)
Y = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
V = torch.linspace(2.0, -1.0, 5, dtype=torch.float64)
W = torch.linspace(-0.5, 0.7, 5, dtype=torch.float64)


def _references() -> dict[str, tuple[dict, dict]]:
    """Each case: the Request's arguments, and torch.func's results called directly here."""
    out, jvp_out = TF.jvp(wave, (X, Y), (V, W))
    value, pullback = TF.vjp(wave, X, Y)
    vjp_x, vjp_y = pullback(V)
    return {
        "jvp": (
            dict(func=wave, primals=[X, Y], tangents=[V, W]),
            {"output": out, "jvp": jvp_out},
        ),
        "vjp": (
            dict(func=wave, primals=[X, Y], cotangents=[V]),
            {"output": value, "vjp.0": vjp_x, "vjp.1": vjp_y},
        ),
        "jacrev": (dict(func=energy, primals=[X]), {"jacobian": TF.jacrev(energy)(X)}),
        "hessian": (dict(func=energy, primals=[X]), {"hessian": TF.hessian(energy)(X)}),
    }


@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev", "hessian"])
def test_compiled_equals_uncompiled_equals_torch_func(command):
    kwargs, expected = _references()[command]
    compiled = run(Request(command, compile=True, repeat=2, **kwargs))
    plain = run(Request(command, repeat=1, **kwargs))
    assert compiled.timings.notes == []  # it did compile: no fallback
    assert compiled.timings.footer["engine"].endswith(", compiled by TorchInductor")
    assert list(compiled.results) == list(expected) == list(plain.results)
    for key, want in expected.items():
        np.testing.assert_allclose(compiled.results[key], want.numpy(), **TIGHT)
        np.testing.assert_allclose(compiled.results[key], plain.results[key], **TIGHT)
    names = [p.name for p in compiled.timings.phases]
    assert names.index("first call") < names.index("compile") < names.index("steady-state compute")
    assert "compile" not in [p.name for p in plain.timings.phases]


def test_cli_compile_of_a_module_shows_its_phase_in_the_table_and_the_timings_file(tmp_path):
    # An nn.Module: its parameters enter the compiled graph as constants that require grad.
    x = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    result = jac(
        "jvp", f"{EXAMPLES}/mlp.py:model()", "-p", str(tmp_path / "x.npy"), "-t", "ones", "--dtype",
        "float64", "--compile", "--repeat", "3", "-o", str(tmp_path / "out.npz"), "--timings",
        str(tmp_path / "t.json"),
    )  # fmt: skip
    assert result.code == 0, result
    lines = result.stderr.splitlines()
    assert any(line.split()[:1] == ["compile"] for line in lines), result
    assert "via torch.func.jvp, compiled by TorchInductor" in lines[-1]
    assert "note" not in result.stderr
    doc = json.loads((tmp_path / "t.json").read_text())
    phases = {p["phase"]: p for p in doc["phases"]}
    assert phases["compile"]["seconds"] > 0 and phases["steady-state compute"]["runs"] == 3
    assert doc["engine"] == "torch.func.jvp, compiled by TorchInductor"
    spec = importlib.util.spec_from_file_location("mlp_for_compile", EXAMPLES / "mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.model().double()
    tx = torch.from_numpy(x)
    want = TF.jvp(model, (tx,), (torch.ones_like(tx),))
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_allclose(z["output"], want[0].detach().numpy(), **TIGHT)
        np.testing.assert_allclose(z["jvp"], want[1].detach().numpy(), **TIGHT)


def test_a_function_that_cannot_be_traced_falls_back_with_a_note(workdir):
    # Python control flow on a tensor's value cannot be traced into one graph.
    write_module(
        workdir,
        "branchy",
        """
        import torch

        def f(x):
            return torch.sin(x) * 2 if float(x.detach().sum()) > 0 else torch.cos(x)
        """,
    )
    result = jac(
        "vjp", "branchy:f", "-p", "[0.5, 1.0, -0.25]", "-u", "[1.0, 2.0, 3.0]", "--dtype", "float64",
        "--compile", "--repeat", "1", "--format", "json",
    )  # fmt: skip
    assert result.code == 0, result
    notes = [line for line in result.stderr.splitlines() if line.startswith("jac: note:")]
    assert len(notes) == 1 and "vjp could not be compiled (" in notes[0], result
    assert notes[0].endswith("; ran uncompiled")
    assert "via torch.func.vjp (fallback)" in result.stderr.splitlines()[-1]
    x = torch.tensor([0.5, 1.0, -0.25], dtype=torch.float64)
    u = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    want = TF.vjp(lambda t: torch.sin(t) * 2, x)[1](u)[0]
    got = json.loads(result.stdout)["vjp.0"]
    np.testing.assert_allclose(got["data"], want.numpy(), **TIGHT)


def test_no_cxx_compiler_falls_back_with_the_same_numbers(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("jac-test-no-such-compiler",))
    outcome = run(Request("jacrev", energy, primals=[X], compile=True, repeat=1))
    assert len(outcome.timings.notes) == 1
    assert outcome.timings.notes[0].startswith("could not be compiled (")
    assert outcome.timings.footer["engine"] == "torch.func.jacrev"
    assert outcome.timings.get("compile") is not None  # the attempt is timed all the same
    np.testing.assert_allclose(outcome.results["jacobian"], TF.jacrev(energy)(X).numpy(), **TIGHT)


def test_a_function_drawing_random_numbers_falls_back_to_its_uncompiled_results():
    # Inductor cannot lower a random draw traced this way (and would draw other numbers).
    def noisy(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rand_like(x)

    outcome = run(Request("jvp", noisy, primals=[X], tangents=[V], compile=True, repeat=1))
    assert len(outcome.timings.notes) == 1
    assert outcome.timings.notes[0].startswith("could not be compiled (")
    assert outcome.timings.footer["engine"] == "torch.func.jvp"
    # the uncompiled first call's numbers, consistent with one draw r: output = x r, jvp = v r
    np.testing.assert_allclose(
        outcome.results["jvp"] / V.numpy(), outcome.results["output"] / X.numpy(), **TIGHT
    )


def test_rebuilder_puts_leaves_back_as_unflatten_does():
    from collections import namedtuple

    from jaccli import trees

    Pair = namedtuple("Pair", "a b")
    tree = {"output": (torch.zeros(1), [torch.ones(2), Pair(torch.ones(3), torch.zeros(4))]), "jvp": X}
    values = [torch.full((i + 1,), float(i)) for i in range(5)]
    rebuilt = trees.rebuilder(tree)(values)
    assert rebuilt.keys() == tree.keys() and isinstance(rebuilt["output"][1][1], Pair)
    assert isinstance(rebuilt["output"][1], list) and isinstance(rebuilt["output"], tuple)
    assert [leaf for _, leaf in trees.leaves(rebuilt)] == values
    assert [k for k, _ in trees.leaves(rebuilt)] == [
        k for k, _ in trees.leaves(trees.unflatten(tree, values))
    ]
