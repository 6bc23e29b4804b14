"""Docs that cannot rot: help texts carry examples, README commands and snippets run."""

import re
import shlex
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, jac

from jaccli.cli.commands import cli

README = (ROOT / "README.md").read_text()
COMMANDS = sorted(cli.commands)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _readme_commands() -> list[str]:
    lines = [line for block in _blocks("sh") for line in block.splitlines()]
    return [line for line in lines if line.startswith("jac ")]


@pytest.fixture
def examples_copy(tmp_path, monkeypatch):
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_four_commands_exist():
    assert {"jvp", "vjp", "jacfwd", "jacrev"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    run = jac(command, "--help")
    assert run.code == 0, run
    assert "Examples:" in run.stdout
    assert re.search(rf"^\s+jac {command} \S+", run.stdout, flags=re.M), run.stdout


def test_top_level_help_lists_every_command():
    run = jac("--help")
    assert run.code == 0
    for command in COMMANDS:
        assert command in run.stdout


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_command_runs(line, examples_copy):
    expected = re.search(r"# exit (\d+)", line)  # a command documented to fail says so
    if "--plot" in line:
        pytest.importorskip("matplotlib")  # the plot extra
    run = jac(*shlex.split(line, comments=True)[1:])
    assert run.code == (int(expected.group(1)) if expected else 0), (line, run)
    if line.split()[1] != "info":
        assert "function alone" in run.stderr  # the timing table, on stderr


def test_readme_lists_enough_commands():
    commands = _readme_commands()
    assert len(commands) >= 7
    assert {c.split()[1] for c in commands} >= {"jvp", "vjp", "jacfwd", "jacrev"}


# Printed numbers: the same up to what differs between CPUs (AVX2 or not), thread counts and
# summation orders. Errors of finite differences and of float64 round-off (below NOISE) are
# noise; other numbers must agree to RTOL, so a stale README (other examples, other digits
# beyond the last stable one, other shapes) still fails.
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
NOISE = 1e-6
RTOL = 1e-4


def _skeleton(line: str) -> str:
    """A line with each number replaced by '#' and no spaces (numpy aligns columns by the
    widest number, which depends on the digits printed)."""
    return "".join(_NUMBER.sub("#", line).split())


def _numbers(line: str) -> list[float]:
    return [float(n) for n in _NUMBER.findall(line)]


def same_printout(got: list[str], expected: list[str]) -> str | None:
    """None when two printouts agree in everything but rounding noise, else the first difference."""
    if len(got) != len(expected):
        return f"{len(got)} lines printed, {len(expected)} in the README"
    for n, (a, b) in enumerate(zip(got, expected)):
        if _skeleton(a) != _skeleton(b):
            return f"line {n + 1}: {a!r} vs README {b!r}"
        for x, y in zip(_numbers(a), _numbers(b)):
            if not (abs(x) < NOISE and abs(y) < NOISE) and abs(x - y) > RTOL * max(abs(x), abs(y)):
                return f"line {n + 1}: {x} vs README {y} in {b!r}"
    return None


def test_same_printout_ignores_noise_and_catches_real_changes():
    readme = ["  fd: forward J.v          6.42e-11       1.49e-10    PASS", "[[ 0.99339172  0.04957862]"]
    noisy = ["  fd: forward J.v   8.25e-11   2.01e-10    PASS", "[[ 0.99339171  0.0495786 ]"]
    assert same_printout(noisy, readme) is None
    for changed in (
        ["  fd: forward J.v   8.25e-11   2.01e-10    FAIL", readme[1]],  # a verdict
        ["  fd: forward J.v   3.00e-03   2.01e-10    PASS", readme[1]],  # an error that is not noise
        [readme[0], "[[ 0.99439172  0.04957862]"],  # a value beyond the stable digits
        [readme[0], "[[ 0.99339172  0.04957862  1.0]"],  # a shape
        [readme[0]],  # a line
    ):
        assert same_printout(changed, readme) is not None, changed


@pytest.mark.parametrize("block", _blocks("console"), ids=lambda b: b.splitlines()[0][:40])
def test_readme_console_output_is_what_jac_prints(block, examples_copy):
    prompt, *expected = block.strip("\n").splitlines()
    assert prompt.startswith("$ jac ")
    run = jac(*shlex.split(prompt)[2:])
    assert run.code in (0, 1), run
    got = [line.rstrip() for line in run.stdout.strip("\n").splitlines()]
    problem = same_printout(got, expected)
    assert problem is None, (problem, "\n".join(got))


def test_readme_python_snippet_runs(examples_copy):
    (snippet,) = _blocks("python")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    np.testing.assert_array_equal(scope["outcome"].results["jvp"], [6, 14, 22])


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci
    test_lines = [line for block in _blocks("sh") for line in block.splitlines() if "pytest" in line]
    assert test_lines and re.search(r"^python -m pip install torch==.*\[test[,a-z]*\].*pytest", test_lines[0])


def test_cli_reference_is_generated_from_the_help_texts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "docs" / "generate_cli.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    current = generator.TARGET.read_text(encoding="utf-8")
    assert current == generator.render(), f"docs/cli.md is out of date: run '{generator.COMMAND}'"
    for command in COMMANDS:
        assert f"\n## jac {command}\n" in current
        assert f"Usage: jac {command} " in current


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_readme_documents_shell_completion(shell):
    assert f"_JAC_COMPLETE={shell}_source jac" in README
