"""Docs that cannot rot: help texts carry examples, README commands and snippets run."""

import re
import shlex
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, jac

from jaccli.cli import cli

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


@pytest.mark.parametrize("block", _blocks("console"), ids=lambda b: b.splitlines()[0][:40])
def test_readme_console_output_is_what_jac_prints(block, examples_copy):
    prompt, *expected = block.strip("\n").splitlines()
    assert prompt.startswith("$ jac ")
    run = jac(*shlex.split(prompt)[2:])
    assert run.code in (0, 1), run
    assert [line.rstrip() for line in run.stdout.strip("\n").splitlines()] == expected


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
