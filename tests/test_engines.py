"""Which engine runs, and that every route gives torch.func's numbers.

`--engine auto` picks its route for speed: one-shot runs avoid routes whose first use imports
about a second of torch (torch.func imports torch._dynamo; grad_outputs checks import sympy),
runs with --repeat time every route and keep the fastest. Whatever runs, the numbers must be
torch.func's: float64 to 1e-12 relative, on an elementwise function, an MLP and a scalar one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.func as tf

from jaccli import Request, run
from jaccli.autodiff.routing import ROUTES, Router

torch.manual_seed(0)
_W1, _W2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)


def elementwise(x):
    return torch.sin(x) * x + torch.exp(-(x**2))


def mlp(x):
    return torch.tanh(torch.tanh(x @ _W1.T) @ _W2.T)


def scalar(x):
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()


FUNCTIONS = {
    "elementwise": (elementwise, (7,)),
    "mlp": (mlp, (4, 5)),
    "scalar": (scalar, (6,)),
}


def close(actual, expected) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-12, atol=1e-14)


def reference(command: str, f, x, v, u) -> dict[str, torch.Tensor]:
    if command == "jvp":
        out, jv = tf.jvp(f, (x,), (v,))
        return {"output": out, "jvp": jv}
    if command == "vjp":
        out, pull = tf.vjp(f, x)
        return {"output": out, "vjp.0": pull(u)[0]}
    return {"jacobian": tf.jacrev(f)(x)}


def inputs(shape, f):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    u = torch.randn(f(x).shape, generator=g, dtype=torch.float64)
    return x, v, u


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev"])
def test_every_route_gives_torch_func_numbers(name, command):
    f, shape = FUNCTIONS[name]
    x, v, u = inputs(shape, f)
    expected = reference(command, f, x, v, u)
    options = {"tangents": (v,), "cotangents": u, "argnums": 0, "has_aux": False}
    for route in ROUTES[command]:
        router = Router(command, "auto", f, [x], options, chosen=(route, False))
        tree = router()
        flat = {"output": tree.get("output"), "jvp": tree.get("jvp"), "jacobian": tree.get("jacobian")}
        if "vjp" in tree:
            flat["vjp.0"] = tree["vjp"][0]
        for key, value in expected.items():
            assert flat[key].dtype == value.dtype, (route.label, key)
            close(flat[key], value)


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev", "jacobian"])
@pytest.mark.parametrize("repeat", [None, 2])
def test_auto_engine_gives_torch_func_numbers(name, command, repeat):
    """One-shot (the untaxed route) and --repeat (the fastest of a trial) alike."""
    f, shape = FUNCTIONS[name]
    x, v, u = inputs(shape, f)
    kwargs = {"tangents": [v]} if command == "jvp" else {"cotangents": [u]} if command == "vjp" else {}
    outcome = run(Request(command, f, primals=[x], repeat=repeat, warmup=0, **kwargs))
    expected = reference("jacrev" if command == "jacobian" else command, f, x, v, u)
    for key, value in expected.items():
        close(outcome.results[key], value)
        assert outcome.dtypes[key] == "float64"
    engine = outcome.timings.footer["engine"]
    if repeat:  # the trial says what it timed, and kept the fastest of it
        choice = outcome.timings.footer.get("choice")
        if choice:
            assert engine in choice


ONE_SHOT = """
import sys
from jaccli.cli.commands import main
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch._dynamo", "sympy", "torch._decomp.decompositions_for_jvp") if m in sys.modules]
print("RESULT", {{"code": code, "heavy": heavy}}, file=sys.stderr)
"""


def _one_shot(args: list[str], tmp_path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", ONE_SHOT.format(args=args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    line = [s for s in proc.stderr.splitlines() if s.startswith("RESULT ")]
    assert line, proc.stderr
    result = eval(line[0][len("RESULT ") :])  # a dict literal we printed ourselves
    result["stderr"] = proc.stderr
    return result


MODULE = """
import torch
from torch import nn

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def mlp(x):
    return net(x)


def elementwise(x):
    return torch.sin(x) * x


def scalar(x):
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()
"""


@pytest.mark.parametrize(
    "command",
    [
        ["jvp", "m:mlp", "-p", "randn:5", "-t", "randn"],
        ["vjp", "m:mlp", "-p", "randn:5", "-u", "randn"],
        ["jacrev", "m:mlp", "-p", "randn:5"],
        ["jacobian", "m:mlp", "-p", "randn:5"],
        ["jvp", "m:elementwise", "-p", "randn:5", "-t", "randn"],
        ["vjp", "m:elementwise", "-p", "randn:5", "-u", "randn"],
        ["jacrev", "m:elementwise", "-p", "randn:5"],
        ["jvp", "m:scalar", "-p", "randn:5", "-t", "randn"],
        ["vjp", "m:scalar", "-p", "randn:5"],
        ["jacrev", "m:scalar", "-p", "randn:5"],
        ["hvp", "m:scalar", "-p", "randn:5", "-t", "randn"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_one_shot_imports_nothing_heavy(tmp_path, command):
    """A one-shot run of a small problem takes the route that loads no more of torch: that is
    what makes it about as fast as `import torch` (benchmarks/run.py oneshot)."""
    (tmp_path / "m.py").write_text(MODULE)
    result = _one_shot([*command, "--format", "json"], tmp_path)
    assert result["code"] in (0, None), result["stderr"]
    assert result["heavy"] == [], result["stderr"]
    footer = [line for line in result["stderr"].splitlines() if "derivative/function" in line]
    assert len(footer) == 1 and " via torch.func" not in footer[0], result["stderr"]


def test_engine_func_stays_torch_func_one_shot(tmp_path):
    """--engine func is never rerouted: it pays torch.func's first-use cost and says so."""
    (tmp_path / "m.py").write_text(MODULE)
    result = _one_shot(["jvp", "m:mlp", "-p", "randn:5", "-t", "randn", "--engine", "func"], tmp_path)
    assert result["code"] in (0, None), result["stderr"]
    assert "jvp via torch.func.jvp" in result["stderr"]


def test_trial_times_every_route_and_keeps_the_fastest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(MODULE)
    x = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    timings = tmp_path / "t.json"
    outcome = run(
        Request("jvp", "m:mlp", primals=["x.npy"], tangents=["ones"], repeat=3, timings_path=str(timings))
    )
    choice = outcome.timings.footer["choice"]
    labels = [r.label for r in ROUTES["jvp"]]
    timed = {label for label in labels if label in choice}
    assert {"torch.func.jvp", "forward-mode AD (torch.autograd.forward_ad)"} <= timed, choice
    assert outcome.timings.footer["engine"] in timed
    from jaccli.pipeline import deliver

    deliver(
        outcome, Request("jvp", "m:mlp", timings_path=str(timings), out=str(tmp_path / "r.npz")), None, None
    )
    assert json.loads(timings.read_text())["choice"] == choice


@pytest.mark.parametrize("grad_outputs", [True, False], ids=["grad-outputs", "sum-trick"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("command", ["jvp", "vjp", "jacrev", "jacfwd"])
def test_steady_state_kernels_repeat_their_route(name, command, grad_outputs, monkeypatch):
    """The stripped kernels the steady state runs give their route's tree, dtypes included,
    whether cotangents go in as grad_outputs (once sympy is loaded) or as a scalar product."""
    import torch.fx.experimental.symbolic_shapes  # noqa: F401

    from jaccli import trees
    from jaccli.autodiff import engines, kernels

    if not grad_outputs:
        monkeypatch.setattr(engines, "_SYMBOLIC", "jaccli.a_module_never_loaded")

    f, shape = FUNCTIONS[name]
    x, v, u = inputs(shape, f)
    options = {"tangents": (v,), "cotangents": u, "argnums": 0, "has_aux": False}
    expected = reference("jacrev" if command == "jacfwd" else command, f, x, v, u)
    prepared = 0
    for route in ROUTES[command]:
        tree = Router(command, "auto", f, [x], options, chosen=(route, False))()
        kernel = kernels.prepare(route, f, [x], options, tree)
        if kernel is None:
            continue
        prepared += 1
        again = dict(trees.leaves(kernel()))
        for key, value in trees.leaves(tree):
            assert again[key].dtype == value.dtype, (route.label, key)
            close(again[key], value)
        for key, value in expected.items():
            close(again[key], value)
    assert prepared >= 1
