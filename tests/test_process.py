"""What only a real process shows: start-up imports, exit codes, bytes through pipes, the console script.

Each test here starts ``python -m jaccli`` (or the ``jac`` script); those that compute import
torch and cost a few seconds each, so there are few of them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, jac_process

import jaccli

QUICK = f"{EXAMPLES}/quickstart.py:f"
HEAVY = ("torch", "numpy")
COMMANDS = ("jvp", "vjp", "jacfwd", "jacrev")


def _importtime(stderr: bytes) -> tuple[set[str], list[str]]:
    """Split ``-X importtime`` stderr into the imported module names and the other lines."""
    modules, other = set(), []
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "package":  # the header line
                modules.add(name)
        elif line.strip():
            other.append(line)
    return modules, other


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def _python_m(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jaccli", *args], capture_output=True, timeout=120, **kw
    )


def test_help_lists_the_commands_and_imports_neither_torch_nor_numpy():
    proc = _python_m("--help")
    assert proc.returncode == 0, proc.stderr
    modules, other = _importtime(proc.stderr)
    assert "jaccli.cli.commands" in modules  # the probe works: it sees jac's own imports
    assert _heavy(modules) == [], "jac --help imported " + ", ".join(_heavy(modules))
    assert other == [], other  # nothing else on stderr
    out = proc.stdout.decode()
    assert "Usage: jac" in out
    for command in COMMANDS:
        assert f"\n  {command} " in out, (command, out)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["jvp"], ["FUNC"]),
        (["jvp", "mymod:f", "--bogus"], ["--bogus"]),
        (["jacrev", "nocolon", "-p", "1.0"], ["FUNC", "nocolon"]),
        (["run", "nowhere.yaml"], ["config nowhere.yaml does not exist"]),
    ],
    ids=["no-arguments", "unknown-option", "func-without-colon", "config-missing"],
)
def test_usage_error_is_one_line_exit_2_without_importing_torch(tmp_path: Path, args, needles):
    proc = _python_m(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    modules, other = _importtime(proc.stderr)
    assert _heavy(modules) == [], "a usage error imported " + ", ".join(_heavy(modules))
    assert len(other) == 1, other
    assert other[0].startswith(("jac ", "jac:")) and "error" in other[0], other
    for needle in needles:
        assert needle in other[0], (needle, other)
    assert proc.stdout == b""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str):
    proc = jac_process(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == f"jac {jaccli.__version__}"
    assert proc.stderr == b""


def test_function_error_exits_3_end_to_end(tmp_path: Path):
    (tmp_path / "failmod.py").write_text(
        "def f(x):\n    raise ZeroDivisionError('user code divided by zero')\n"
    )
    proc = jac_process("jvp", "failmod:f", "-p", "0.5", "-o", "out.npz", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "ZeroDivisionError" in lines[0] and "user code divided by zero" in lines[0]
    assert "Traceback" not in proc.stderr.decode()
    assert proc.stdout == b""
    assert not (tmp_path / "out.npz").exists()


def test_stdin_npy_to_stdout_npz_matches_torch(tmp_path: Path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2)).astype(np.float64)
    buffer = io.BytesIO()
    np.save(buffer, x)
    v = np.arange(6, dtype=np.float64).reshape(3, 2) - 2.5
    np.save(tmp_path / "v.npy", v)

    proc = jac_process(
        "jvp",
        f"{EXAMPLES}/quickstart.py:loss",
        "-p",
        "-",
        "-t",
        "v.npy",
        "--format",
        "npz",
        input=buffer.getvalue(),
        cwd=tmp_path,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout[:2] == b"PK"  # nothing but the archive on stdout
    with np.load(io.BytesIO(proc.stdout), allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    assert sorted(got) == ["__jac__", "jvp", "output"]  # the results and their record

    def loss(t):
        return 0.5 * torch.sin(t).pow(2).sum()

    out, tangent_out = torch.func.jvp(loss, (torch.from_numpy(x),), (torch.from_numpy(v),))
    assert got["jvp"].dtype == np.float64  # .npy keeps its dtype
    np.testing.assert_allclose(got["output"], out.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got["jvp"], tangent_out.numpy(), rtol=1e-12)
    assert b"first call" in proc.stderr  # the timing table went to stderr


def test_out_dash_json_is_one_document_and_timings_stay_on_stderr(tmp_path: Path):
    proc = jac_process(
        "jacrev", QUICK, "-p", f"{EXAMPLES}/x.npy", "-o", "-", "--format", "json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.decode())  # the whole of stdout, one document
    assert list(doc) == ["jacobian", "__jac__"]  # the result and its record
    assert doc["jacobian"]["shape"] == [3, 3, 2]
    expected = torch.func.jacrev(lambda t: 2 * t.sum(dim=1))(torch.ones(3, 2))
    np.testing.assert_array_equal(np.array(doc["jacobian"]["data"]), expected.numpy())
    err = proc.stderr.decode()
    for phase in (
        "load function",
        "read inputs",
        "first call",
        "steady-state compute",
        "function alone",
        "write",
    ):
        assert phase in err, (phase, err)
        assert phase not in proc.stdout.decode()
    assert f"torch {torch.__version__}" in err
    assert list(tmp_path.iterdir()) == []  # '-' is standard output, not a file named '-'


@pytest.mark.skipif(shutil.which("jac") is None, reason="the jac console script is not installed")
def test_console_script_behaves_like_python_m(tmp_path: Path):
    script = shutil.which("jac")
    args = [
        "jvp",
        QUICK,
        "-p",
        f"{EXAMPLES}/x.npy",
        "-t",
        f"{EXAMPLES}/v.npy",
        "--format",
        "json",
        "--no-timings",
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    via_script = subprocess.run([script, *args], capture_output=True, cwd=tmp_path, env=env, timeout=120)
    via_module = jac_process(*args, cwd=tmp_path, env={"NO_COLOR": "1"})
    assert via_script.returncode == via_module.returncode == 0, (via_script.stderr, via_module.stderr)
    assert via_script.stdout == via_module.stdout
    doc = json.loads(via_script.stdout)
    assert doc["jvp"]["data"] == [6.0, 14.0, 22.0]

    bad = subprocess.run(
        [script, "jvp", "nocolon", "-p", "1.0"], capture_output=True, cwd=tmp_path, timeout=120
    )
    assert bad.returncode == 2
    lines = bad.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jac jvp: error:") and "nocolon" in lines[0], lines


@pytest.mark.parametrize(
    ("shell", "needle"),
    [("bash", "_jac_completion"), ("zsh", "#compdef jac"), ("fish", "complete --no-files --command jac")],
)
def test_completion_script_for_each_shell_without_torch(shell: str, needle: str):
    proc = _python_m(env={**os.environ, "_JAC_COMPLETE": f"{shell}_source"})
    assert proc.returncode == 0, proc.stderr
    assert needle in proc.stdout.decode()
    modules, _ = _importtime(proc.stderr)
    assert _heavy(modules) == [], "completion imported " + ", ".join(_heavy(modules))


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("jac j", {"jacfwd", "jacobian", "jacrev", "jvp"}),
        ("jac r", {"run"}),
        ("jac jvp --dt", {"--dtype"}),
        ("jac jvp x:f --dtype f", {"float16", "float32", "float64"}),
    ],
)
def test_completion_offers_commands_options_and_choices_without_torch(words: str, expected: set[str]):
    cword = str(len(words.split()) - 1)
    env = {**os.environ, "_JAC_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    proc = _python_m(env=env)
    assert proc.returncode == 0, proc.stderr
    offered = {line.split(",", 1)[1] for line in proc.stdout.decode().splitlines()}
    assert offered == expected
    modules, _ = _importtime(proc.stderr)
    assert _heavy(modules) == [], "completion imported " + ", ".join(_heavy(modules))
