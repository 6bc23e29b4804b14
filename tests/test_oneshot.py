"""One-shot means once: default timing never makes a slow command much slower, and --repeat 0
takes the same routes as a run without --repeat."""

import json

import numpy as np
from conftest import jac, write_module

SLOW = """
import time
import torch

CALLS = []

def f(x):
    CALLS.append(1)
    time.sleep(0.2)
    return torch.sin(x) * x
"""


def _timings(path):
    data = json.loads(path.read_text())
    return data, {p["phase"]: p for p in data["phases"]}


def test_a_slow_first_call_is_not_repeated_by_default(workdir):
    write_module(workdir, "slowmod", SLOW)
    run = jac("vjp", "slowmod:f", "-p", "[1.0, 2.0]", "-u", "ones", "--timings", "t.json", "--format", "json")
    assert run.code == 0, run
    x = np.array([1.0, 2.0])
    np.testing.assert_allclose(json.loads(run.stdout)["vjp.0"]["data"], np.sin(x) + x * np.cos(x), rtol=1e-6)
    data, phases = _timings(workdir / "t.json")
    for name in ("steady-state compute", "function alone"):
        assert phases[name]["runs"] == 0
        assert "not repeated" in phases[name]["skipped"]
    assert "not repeated" in run.stderr and "--repeat N" in run.stderr
    import sys

    # evaluated once for the output's structure, once for the first call (which runs f inside)
    assert len(sys.modules["slowmod"].CALLS) <= 2


def test_an_explicit_repeat_still_times_a_slow_function(workdir):
    write_module(workdir, "slowmod", SLOW)
    run = jac(
        "vjp",
        "slowmod:f",
        "-p",
        "[1.0, 2.0]",
        "-u",
        "ones",
        "--timings",
        "t.json",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--no-timings",
    )
    assert run.code == 0, run
    _, phases = _timings(workdir / "t.json")
    assert phases["steady-state compute"]["runs"] == 2
    assert "skipped" not in phases["steady-state compute"]


def test_a_cheap_function_is_still_timed_by_default(workdir, monkeypatch):
    # the rule, not this machine's speed: a first call well inside the one-shot budget is timed
    monkeypatch.setattr("jaccli.report.timing.ONE_SHOT_BASE_S", 1e3)
    write_module(workdir, "cheap", "def f(x):\n    return (x * x).sum()\n")
    run = jac("vjp", "cheap:f", "-p", "[1.0, 2.0]", "--timings", "t.json", "--no-timings")
    assert run.code == 0, run
    _, phases = _timings(workdir / "t.json")
    assert phases["steady-state compute"]["runs"] >= 1


def test_repeat_zero_keeps_the_one_shot_routes(workdir):
    write_module(workdir, "cheap", "import torch\ndef f(x):\n    return torch.sin(x) * x\n")
    engines = []
    for extra in ([], ["--repeat", "0"]):
        run = jac(
            "vjp",
            "cheap:f",
            "-p",
            "[1.0, 2.0, 3.0]",
            "-u",
            "ones",
            "--timings",
            "t.json",
            "--format",
            "json",
            *extra,
        )
        assert run.code == 0, run
        data, _ = _timings(workdir / "t.json")
        engines.append(data["engine"])
        x = np.array([1.0, 2.0, 3.0])
        np.testing.assert_allclose(
            json.loads(run.stdout)["vjp.0"]["data"], np.sin(x) + x * np.cos(x), rtol=1e-6
        )
    assert engines[0] == engines[1], engines
    assert "torch.func" not in engines[1]
