"""The reproducibility record: every machine-readable output says how it was made and how to
make it again (docs/reproducibility.md), and result files still feed the next command."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import RECORD, ROOT, jac, write_module

from jaccli.report.record import environment, read

FIELDS = {
    "record",
    "command",
    "argv",
    "cwd",
    "reproduce",
    "function",
    "inputs",
    "seed",
    "dtype",
    "device",
    "device_name",
    "route",
    "trial",
    "beat",
    "chosen_by",
    "fallbacks",
    "environment",
}
ENVIRONMENT = {"jac", "python", "platform", "cpu", "threads", "torch", "torch_cuda", "torch_git", "numpy"}

SOURCE = """
import torch

def f(x, y):
    return torch.sin(x) * y.sum() + x ** 2

def loss(x):
    return (torch.sin(x) ** 2).sum()

def smooth(x):
    return x + 0.5 * (torch.roll(x, 1) + torch.roll(x, -1))
"""


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def scene(workdir):
    """A function file and two input files in a fresh folder."""
    write_module(workdir, "recmod", SOURCE)
    rng = np.random.default_rng(5)
    np.save("x.npy", rng.standard_normal(4))
    np.save("y.npy", rng.standard_normal(3))
    return workdir


def assert_complete(record: dict, *args: str, command: str | None = None) -> None:
    """Every field, the command line as given, and the hashes of the files it names."""
    assert FIELDS <= set(record), sorted(FIELDS - set(record))
    assert ENVIRONMENT <= set(record["environment"])
    assert record["environment"]["torch"] == str(torch.__version__)
    assert record["environment"]["torch_cuda"] == torch.version.cuda
    assert record["argv"] == ["jac", *args]
    assert record["command"] == (command or args[0])
    assert record["cwd"] == os.getcwd()
    assert record["reproduce"] == f"cd {shlex.quote(os.getcwd())} && {shlex.join(['jac', *args])}"
    assert record["seed"] == 0
    assert record["device"] == "cpu" and record["device_name"]
    function = record["function"]
    assert function["file"] == str(Path("recmod.py").resolve())
    assert function["sha256"] == sha("recmod.py")
    for entry in record["inputs"]:
        if entry["kind"] == "file":
            assert entry["sha256"] == sha(entry["value"]), entry
            assert entry["file"] == str(Path(entry["value"]).resolve())
    assert record["route"]


# --- each output kind ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml", "npz"])
def test_results_on_stdout_carry_the_record(scene, fmt):
    args = ("jvp", "recmod:f", "-p", "x.npy", "-p", "y.npy", "-t", "ones", "--format", fmt, "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    record = run.record()
    assert_complete(record, *args)
    kinds = [(e["option"], e["kind"]) for e in record["inputs"]]
    assert kinds == [("--primals", "file"), ("--primals", "file"), ("--tangents", "generator")]
    assert record["dtype"] == "float64"  # .npy keeps its dtype


@pytest.mark.parametrize("suffix", ["npz", "json", "yaml"])
def test_result_files_and_timings_carry_the_same_record(scene, suffix):
    args = ("vjp", "recmod:loss", "-p", "x.npy", "-o", f"r.{suffix}", "--timings", "t.yaml", "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    record = read(f"r.{suffix}")
    assert_complete(record, *args)
    timings = yaml.safe_load(Path("t.yaml").read_text())
    assert timings["record"] == record
    assert timings["engine"] == record["route"] and timings["dtype"] == record["dtype"]
    if suffix == "npz":  # no pickle: a 0-d string, the record as JSON text, after the results
        with np.load("r.npz", allow_pickle=False) as z:
            assert z.files == ["output", "vjp.0", RECORD]
            assert z[RECORD].shape == () and z[RECORD].dtype.kind == "U"


def test_an_npy_has_no_room_for_it_and_timings_carries_it(scene):
    args = ("jacrev", "recmod:smooth", "-p", "x.npy", "-o", "J.npy", "--timings", "t.json", "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    assert np.load("J.npy", allow_pickle=False).shape == (4, 4)
    assert_complete(json.loads(Path("t.json").read_text())["record"], *args)


def test_check_reports_carry_it(scene):
    args = ("check", "recmod:f", "-p", "x.npy", "-p", "y.npy", "--format", "json", "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    doc = json.loads(run.stdout)
    assert doc["verdict"] == "PASS"
    assert_complete(doc["record"], *args)
    assert doc["record"]["dtype"] == "float64" == doc["dtype"]


def test_directions_carry_it(scene):
    args = ("jvp", "recmod:loss", "-p", "x.npy", "-t", "randn", "--directions", "3", "--format", "json")
    run = jac(*args, "--no-timings")
    assert run.code == 0, run
    record = run.record()
    assert_complete(record, *args, "--no-timings")
    assert record["inputs"][1] == {
        "option": "--tangents",
        "value": "randn",
        "kind": "generator",
        "seeded_by": "--seed",
    }


def test_spectrum_carries_it(scene):
    pytest.importorskip("scipy")
    args = ("spectrum", "recmod:smooth", "-p", "x.npy", "--top", "2", "-o", "s.npz", "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    assert_complete(read("s.npz"), *args)


def test_sparse_results_and_patterns_carry_it_and_scipy_still_reads_them(scene):
    sparse = pytest.importorskip("scipy.sparse")
    pattern = ("sparsity", "recmod:smooth", "-p", "x.npy", "-o", "P.npz", "--format", "json", "-q")
    run = jac(*pattern)
    assert run.code == 0, run
    assert_complete(read("P.npz"), *pattern)
    assert read("P.npz")["route"] == "traced (make_fx)"
    args = ("jacobian", "recmod:smooth", "-p", "x.npy", "--sparsity", "P.npz", "-o", "J.npz", "--no-timings")
    run = jac(*args)
    assert run.code == 0, run
    record = read("J.npz")
    assert_complete(record, *args)
    assert [e["option"] for e in record["inputs"]] == ["--primals", "--sparsity"]
    x = torch.from_numpy(np.load("x.npy"))
    want = torch.func.jacrev(lambda t: t + 0.5 * (torch.roll(t, 1) + torch.roll(t, -1)))(x)
    np.testing.assert_allclose(sparse.load_npz("J.npz").toarray(), want.numpy(), rtol=1e-15)
    assert sparse.load_npz("P.npz").nnz == 12
    run = jac("jacobian", "recmod:smooth", "-p", "x.npy", "--sparse", "--format", "yaml", "--no-timings")
    assert run.code == 0, run
    assert run.record()["route"].startswith("sparse")


def test_sparsity_writes_its_timings_and_json_summary_with_the_record(scene):
    args = (
        "sparsity",
        "recmod:smooth",
        "-p",
        "x.npy",
        "--format",
        "json",
        "--timings",
        "t.json",
        "--no-timings",
    )
    run = jac(*args)
    assert run.code == 0, run
    summary = json.loads(run.stdout)
    assert summary["nnz"] == 12
    assert_complete(summary["record"], *args)
    assert json.loads(Path("t.json").read_text())["record"] == summary["record"]


# --- what it says -----------------------------------------------------------------------------


def test_the_trial_lists_the_routes_it_timed(scene):
    args = ("vjp", "recmod:loss", "-p", "x.npy", "--repeat", "2", "--format", "json", "--timings", "t.json")
    run = jac(*args, "--no-timings")
    assert run.code == 0, run
    record = run.record()
    assert record["chosen_by"] == "trial"
    trial = record["trial"]
    assert len(trial) >= 2 and all(seconds > 0 for seconds in trial.values()), trial
    assert record["route"] in trial
    assert record["beat"] == [r for r in trial if r != record["route"]]
    choice = json.loads(Path("t.json").read_text())["choice"]  # the table's footer names the same
    assert all(route in choice for route in trial), (trial, choice)
    one_shot = jac("vjp", "recmod:loss", "-p", "x.npy", "--format", "json", "--no-timings").record()
    assert one_shot["trial"] == {} and one_shot["beat"] == [] and one_shot["chosen_by"] == "plan"


def test_stdin_literals_and_generators_are_described(scene):
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3.0))
    piped = buffer.getvalue()
    args = (
        "jvp",
        "recmod:f",
        "-p",
        "-",
        "-p",
        "[1, 2, 3]",
        "-t",
        "randn",
        "--format",
        "json",
        "--no-timings",
    )
    run = jac(*args, input=piped)
    assert run.code == 0, run
    inputs = run.record()["inputs"]
    assert inputs[0] == {
        "option": "--primals",
        "value": "-",
        "kind": "stdin",
        "sha256": hashlib.sha256(piped).hexdigest(),
    }
    assert inputs[1] == {"option": "--primals", "value": "[1, 2, 3]", "kind": "literal"}
    assert inputs[2]["kind"] == "generator"


def test_an_input_overwritten_by_the_output_is_hashed_as_read(scene):
    assert jac("vjp", "recmod:loss", "-p", "x.npy", "--select", "vjp.0", "-o", "g.npz", "-q").code == 0
    before = sha("g.npz")
    run = jac("vjp", "recmod:loss", "-p", "g.npz", "-o", "g.npz", "--timings", "t.json", "-q")
    assert run.code == 0, run
    assert sha("g.npz") != before
    assert read("g.npz")["inputs"][0]["sha256"] == before
    assert json.loads(Path("t.json").read_text())["record"]["inputs"][0]["sha256"] == before


def test_state_and_config_files_are_hashed(workdir):
    write_module(
        workdir,
        "recnet",
        """
        import torch
        def model():
            torch.manual_seed(0)
            return torch.nn.Linear(3, 2)
        """,
    )
    import recnet

    np.savez("state.npz", **{k: v.detach().numpy() * 2 for k, v in recnet.model().state_dict().items()})
    Path("c.yaml").write_text("command: jacrev\nfunction: recnet:model()\nprimals: [randn:3]\n")
    run = jac("run", "c.yaml", "--state", "state.npz", "--format", "json", "--no-timings")
    assert run.code == 0, run
    inputs = {e["option"]: e for e in run.record()["inputs"]}
    assert inputs["--state"]["sha256"] == sha("state.npz")
    assert inputs["--config"]["sha256"] == sha("c.yaml") and inputs["--config"]["value"] == "c.yaml"
    weight = np.load("state.npz")["weight"]
    np.testing.assert_allclose(np.array(json.loads(run.stdout)["jacobian"]["data"]), weight, rtol=1e-6)


def test_from_python_the_record_names_the_request(scene):
    from jaccli import Request, run
    from jaccli.pipeline import deliver

    request = Request("vjp", "recmod:loss", primals=["x.npy"], seed=3, format="json", repeat=0)
    outcome = run(request)
    out = io.BytesIO()
    deliver(outcome, request, out, io.StringIO())
    record = json.loads(out.getvalue())[RECORD]
    assert record["argv"] is None
    assert record["python_api"] == {
        "command": "vjp",
        "func": "recmod:loss",
        "primals": ["x.npy"],
        "seed": 3,
        "format": "json",
        "repeat": 0,
    }
    cd, folder, then, python, dash_c, code = shlex.split(record["reproduce"])
    assert (cd, folder, then, python, dash_c) == ("cd", os.getcwd(), "&&", "python", "-c")
    assert code == (
        "from jaccli import Request, run; "
        "run(Request('vjp', 'recmod:loss', primals=['x.npy'], seed=3, format='json', repeat=0))"
    )
    assert record["inputs"][0]["sha256"] == sha("x.npy") and record["seed"] == 3

    def g(x):
        return x.sin().sum()

    request = Request("vjp", g, primals=[np.arange(3.0)], format="json", repeat=0)
    outcome = run(request)
    out = io.BytesIO()
    deliver(outcome, request, out, io.StringIO())
    record = json.loads(out.getvalue())[RECORD]
    assert record["reproduce"] is None  # a callable and an array: no line reruns it
    assert record["function"]["file"] == __file__ and record["function"]["sha256"] == sha(__file__)
    want = hashlib.sha256(np.arange(3.0).tobytes()).hexdigest()
    assert record["inputs"][0] == {
        "option": "--primals",
        "value": None,
        "kind": "array",
        "shape": [3],
        "dtype": "float64",
        "sha256": want,
    }


def test_jac_info_json_has_the_environment():
    run = jac("info", "--format", "json")
    assert run.code == 0, run
    facts = json.loads(run.stdout)
    env = environment()
    assert {k: facts[k] for k in env} == env
    assert facts["torch_git"] == torch.version.git_version and facts["threads"] == torch.get_num_threads()
    assert "devices" in facts and "cuda_available" in facts


# --- reading results back -------------------------------------------------------------------


def test_result_files_feed_the_next_command_as_before(scene):
    """vjp -o g.npz, g.json, g.yaml, then jvp -p g.*: the record is skipped, the result read."""
    x = torch.from_numpy(np.load("x.npy"))
    grad = torch.func.grad(lambda t: (torch.sin(t) ** 2).sum())(x)
    want = torch.func.jvp(lambda t: (torch.sin(t) ** 2).sum(), (grad,), (torch.ones(4, dtype=torch.float64),))
    for suffix in ("npz", "json", "yaml"):
        assert (
            jac("vjp", "recmod:loss", "-p", "x.npy", "--select", "vjp.0", "-o", f"g.{suffix}", "-q").code == 0
        )
        run = jac("jvp", "recmod:loss", "-p", f"g.{suffix}", "-t", "ones", "--format", "npz", "--no-timings")
        assert run.code == 0, (suffix, run)
        got = run.npz()
        np.testing.assert_allclose(got["output"], want[0].numpy(), rtol=1e-12)
        np.testing.assert_allclose(got["jvp"], want[1].numpy(), rtol=1e-12)


@pytest.mark.parametrize("fmt", ["npz", "json", "yaml"])
def test_results_piped_into_the_next_command_as_before(scene, fmt):
    first = jac("vjp", "recmod:loss", "-p", "x.npy", "--select", "vjp.0", "--format", fmt, "--no-timings")
    assert first.code == 0, first
    run = jac("vjp", "recmod:loss", "-p", "-", "--format", "npz", "--no-timings", input=first.stdout_bytes)
    assert run.code == 0, run
    grad = torch.func.grad(lambda t: (torch.sin(t) ** 2).sum())
    x = torch.from_numpy(np.load("x.npy"))
    np.testing.assert_allclose(run.npz()["vjp.0"], grad(grad(x)).numpy(), rtol=1e-12)


def test_a_result_with_several_keys_gives_as_many_primals_as_before(scene):
    assert jac("jvp", "recmod:f", "-p", "x.npy", "-p", "y.npy", "-t", "ones", "-o", "r.npz", "-q").code == 0
    with np.load("r.npz", allow_pickle=False) as z:
        output, tangent = z["output"], z["jvp"]
    run = jac("jvp", "recmod:f", "-p", "r.npz", "-t", "ones", "--format", "npz", "--no-timings")
    assert run.code == 0, run  # two primals (output, jvp): the record is not a third
    a, b = torch.from_numpy(output), torch.from_numpy(tangent)
    want = torch.func.jvp(
        lambda p, q: torch.sin(p) * q.sum() + p**2, (a, b), (torch.ones(4, dtype=torch.float64),) * 2
    )
    np.testing.assert_allclose(run.npz()["jvp"], want[1].numpy(), rtol=1e-12)


# --- the reproduce line -------------------------------------------------------------------------


def test_the_reproduce_line_reruns_to_the_same_result(scene, tmp_path_factory):
    """Run the line itself in a shell, with 'jac' on PATH standing for this tree's jac."""
    args = (
        "jacrev",
        "recmod:f",
        "-p",
        "x.npy",
        "-p",
        "y.npy",
        "--argnums",
        "0,1",
        "-o",
        "J.npz",
        "--no-timings",
    )
    assert jac(*args).code == 0
    record = read("J.npz")
    with np.load("J.npz", allow_pickle=False) as z:
        first = {k: z[k] for k in z.files if k != RECORD}
    os.remove("J.npz")
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "jac"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m jaccli "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JAC_SERVER": "off"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        ["sh", "-c", record["reproduce"]], cwd="/", env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    again = read("J.npz")
    with np.load("J.npz", allow_pickle=False) as z:
        second = {k: z[k] for k in z.files if k != RECORD}
    assert list(second) == list(first) == ["jacobian.0", "jacobian.1"]
    for key in first:
        np.testing.assert_array_equal(second[key], first[key])
    same = ("argv", "function", "inputs", "seed", "dtype", "device", "route", "reproduce")
    assert {k: again[k] for k in same} == {k: record[k] for k in same}
    x, y = (torch.from_numpy(np.load(n)) for n in ("x.npy", "y.npy"))
    want = torch.func.jacrev(lambda p, q: torch.sin(p) * q.sum() + p**2, argnums=(0, 1))(x, y)
    for key, w in zip(first, want):
        np.testing.assert_allclose(first[key], w.numpy(), rtol=1e-15)
