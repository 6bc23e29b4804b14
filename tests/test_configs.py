"""Config files: ``jac run CONFIG`` and ``--config FILE``, precedence, paths, and strict errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECORD, assert_clean_error, jac, write_module

CUBE = """
    import torch

    def f(x, scale=1.0):
        return scale * x ** 3
"""


def _config(folder: Path, text: str, name: str = "c.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _cube_config(folder: Path, rest: str) -> Path:
    """A config for cube.py:f at x.npy, both beside it; ``rest`` adds keys."""
    return _config(folder, "function: cube.py:f\nprimals: x.npy\n" + textwrap.dedent(rest))


@pytest.fixture
def project(workdir):
    """A config folder apart from the current directory, holding a module and an input."""
    folder = workdir / "project"
    folder.mkdir()
    write_module(folder, "cube", CUBE)
    np.save(folder / "x.npy", np.array([1.0, 2.0, 3.0]))
    return folder


def _json(run) -> dict[str, np.ndarray]:
    assert run.code == 0, run
    doc = json.loads(run.stdout)
    assert list(doc)[-1] == RECORD  # the results, then their reproducibility record
    return {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in doc.items() if k != RECORD}


def _expected_jvp(x, v, scale=1.0):
    fn = lambda t: scale * t**3  # noqa: E731
    out, jv = torch.func.jvp(fn, (torch.tensor(x),), (torch.tensor(v),))
    return out.numpy(), jv.numpy()


def test_run_resolves_paths_against_the_config_folder_and_flags_override(project, workdir):
    config = _cube_config(
        project,
        """
        command: jvp
        tangents: [[0.5, 1.0, 2.0]]
        kwargs: {scale: 2.0}
        options: {format: json, dtype: float64, repeat: 0}
        """,
    )
    got = _json(jac("run", str(config)))
    out, jv = _expected_jvp([1.0, 2.0, 3.0], [0.5, 1.0, 2.0], scale=2.0)
    np.testing.assert_allclose(got["output"], out, rtol=1e-12)
    np.testing.assert_allclose(got["jvp"], jv, rtol=1e-12)
    assert got["jvp"].dtype == np.float64

    # flags after the config win: a new point, and the tangent from the command line
    got = _json(jac("run", str(config), "-p", "[2.0, 2.0, 2.0]", "-t", "ones", "--kwarg", "scale=1.0"))
    out, jv = _expected_jvp([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got["jvp"], jv, rtol=1e-12)
    np.testing.assert_allclose(got["output"], out, rtol=1e-12)


def test_config_option_on_a_command_supplies_defaults(project):
    config = _cube_config(project, "options: {format: json, argnums: [0], flatten: true}\n")
    got = _json(jac("jacfwd", "--config", str(config), "--repeat", "0"))
    want = torch.func.jacfwd(lambda t: t**3, argnums=(0,))(torch.tensor([1.0, 2.0, 3.0]))[0]
    np.testing.assert_allclose(got["jacobian.0"], want.numpy(), rtol=1e-12)
    # FUNC given on the command line replaces the config's function
    write_module(project, "square", "def f(x):\n    return x ** 2\n")
    got = _json(jac("jacfwd", "--config", str(config), f"{project}/square.py:f", "--repeat", "0"))
    np.testing.assert_allclose(got["jacobian.0"], np.diag([2.0, 4.0, 6.0]), rtol=1e-12)


def test_out_and_timings_resolve_against_the_config_folder(project, workdir):
    config = _cube_config(
        project,
        """
        command: vjp
        cotangents: ones
        out: results/g.npz
        options: {timings: results/t.json, quiet: true}
        """,
    )
    (project / "results").mkdir()
    run = jac("run", str(config))
    assert run.code == 0, run
    assert run.stderr == ""
    with np.load(project / "results" / "g.npz") as z:
        np.testing.assert_allclose(z["vjp.0"], 3 * np.array([1.0, 2.0, 3.0]) ** 2, rtol=1e-12)
    assert "phases" in json.loads((project / "results" / "t.json").read_text())
    assert sorted(p.name for p in workdir.iterdir()) == ["project"]  # nothing in the current folder


def test_generators_and_literals_are_left_alone(project):
    config = _config(
        project,
        """
        command: jvp
        function: cube.py:f
        primals: [0.5]
        tangents: randn
        options: {format: json, seed: 3, repeat: 0}
        """,
    )
    got = _json(jac("run", str(config)))
    v = np.float32(np.random.default_rng(3).standard_normal(()))
    np.testing.assert_allclose(got["jvp"], 3 * 0.5**2 * v, rtol=1e-6)


def test_check_runs_from_a_config_and_keeps_its_exit_code(project):
    write_module(project, "sine", "import torch\n\ndef f(x):\n    return torch.sin(x)\n")
    config = _config(
        project,
        """
        command: check
        function: sine.py:f
        primals: x.npy
        options: {format: json, directions: 2}
        """,
    )
    run = jac("run", str(config), "--repeat", "0")
    assert run.code == 0, run
    assert json.loads(run.stdout)["verdict"] == "PASS"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "command: jvp\nfunction: cube.py:f\nprimal: x.npy\n",
            ["'primal'", "did you mean 'primals'", "valid keys"],
        ),
        ("command: jvpp\n", ["'command: jvpp'", "did you mean 'jvp'"]),
        ("function: cube.py:f\nprimals: x.npy\n", ["missing key 'command'"]),
        ("command: jvp\nprimals: x.npy\n", ["missing key 'function'", "FUNC"]),
        ("command: jvp\nfunction: cube.py:f\n", ["missing key 'primals'", "-p/--primals"]),
        ("command: 3\n", ["'command' must be a string"]),
        ("command: vjp\nfunction: cube.py:f\nprimals: x.npy\ntangents: ones\n", ["takes no 'tangents'"]),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {dtpye: float64}\n",
            ["'options.dtpye'", "'dtype'"],
        ),
        ("command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {out: y.npz}\n", ["top level"]),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {repeat: ten}\n",
            ["'options.repeat'", "integer"],
        ),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {repeat: 1.5}\n",
            ["'options.repeat'", "integer"],
        ),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {has-aux: 1}\n",
            ["'options.has-aux'", "true or false"],
        ),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: {dtype: float65}\n",
            ["'options.dtype'", "float64"],
        ),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\noptions: [dtype]\n",
            ["'options' must be a mapping"],
        ),
        (
            "command: jacrev\nfunction: cube.py:f\nprimals: x.npy\noptions: {argnums: [a]}\n",
            ["'options.argnums'"],
        ),
        (
            "command: jvp\nfunction: cube.py:f\nprimals: x.npy\nkwargs: [scale]\n",
            ["'kwargs' must be a mapping"],
        ),
        ("command: jvp\nfunction: nocolon\nprimals: x.npy\n", ["'function'", "nocolon"]),
        ("command: jvp\nfunction: cube.py:f\nprimals: x.npy\nout: 3\n", ["'out' must be a string"]),
        ("command: jvp\nfunction: cube.py:f\nprimals: true\n", ["'primals'", "not an input source"]),
        ("command: jvp\nfunction:\n", ["'function' has no value"]),
        ("a: &x 1\nb: *x\n", ["anchors and aliases are refused"]),
        ("command: !!python/object/apply:os.system [ls]\n", ["tag refused"]),
        ("[1, 2]\n", ["holds a list"]),
        ("command: [jvp\n", ["not valid YAML"]),
    ],
)
def test_config_errors_name_the_file_and_key_and_write_nothing(project, workdir, text, needles):
    config = project / "bad.yaml"
    config.write_text(text)
    before = sorted(p.name for p in project.iterdir())
    run = jac("run", str(config), "-o", "out.npz")
    assert_clean_error(run, 2, *needles)
    if "not valid YAML" not in needles:
        assert "bad.yaml" in run.stderr
    assert sorted(p.name for p in project.iterdir()) == before
    assert not (workdir / "out.npz").exists()


def test_a_config_for_another_command_is_refused_by_config_option(project):
    config = _cube_config(project, "command: vjp\n")
    assert_clean_error(jac("jvp", "--config", str(config)), 2, "is for 'jac vjp'", "jac run")


def test_missing_config_file(workdir):
    assert_clean_error(jac("run", "nowhere.yaml"), 2, "nowhere.yaml does not exist")
    assert_clean_error(jac("jvp", "--config", "nowhere.yaml"), 2, "nowhere.yaml does not exist")


def test_config_option_on_info(project):
    config = _config(project, "options: {format: json}\n")
    run = jac("info", "--config", str(config))
    assert run.code == 0, run
    assert json.loads(run.stdout)["torch"] == torch.__version__


def test_an_oversized_config_is_refused_unread(workdir):
    (workdir / "big.yaml").write_text("command: jvp\n# " + "x" * 2**20 + "\n")
    assert_clean_error(jac("run", "big.yaml"), 2, "big.yaml is over 1 MiB")
