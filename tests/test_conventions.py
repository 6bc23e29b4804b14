"""Command-line conventions: NO_COLOR and pipes get no escape codes; --format json is one document."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLES, ROOT, jac, jac_process, write_module

ESC = b"\x1b["
# a failing check: a coloured verdict on stdout and a bold table header on stderr
COLOURFUL = ("check", f"{EXAMPLES}/buggy.py:layer", "-p", "randn:5", "--repeat", "0")


def _terminal_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "120", **extra}


def _on_a_terminal(env: dict[str, str]) -> tuple[int, bytes]:
    """Run jac with stdout and stderr on a pseudo-terminal, as a person at a shell would."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaccli", *COLOURFUL],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=120), b"".join(chunks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals as Linux has them")
def test_a_terminal_gets_styles_unless_no_color_is_set():
    code, screen = _on_a_terminal(_terminal_env())
    assert code == 1, screen
    assert ESC in screen  # the probe works: a terminal does get styles
    code, screen = _on_a_terminal(_terminal_env(NO_COLOR="1"))
    assert code == 1, screen
    assert b"FAIL" in screen and b"function alone" in screen
    assert ESC not in screen, screen


def test_pipes_get_no_escape_codes():
    proc = jac_process(*COLOURFUL, cwd=ROOT, env=_terminal_env())
    assert proc.returncode == 1, proc.stderr
    assert b"FAIL" in proc.stdout and b"function alone" in proc.stderr
    assert ESC not in proc.stdout and ESC not in proc.stderr


QUICK = f"{EXAMPLES}/quickstart.py"
JSON_COMMANDS = {
    "jvp": ["jvp", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy", "-t", f"{EXAMPLES}/v.npy"],
    "vjp": ["vjp", f"{QUICK}:loss", "-p", f"{EXAMPLES}/x.npy"],
    "jacfwd": ["jacfwd", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "jacrev": ["jacrev", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "jacobian": ["jacobian", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "hessian": ["hessian", f"{QUICK}:loss", "-p", f"{EXAMPLES}/x.npy"],
    "hvp": ["hvp", f"{QUICK}:loss", "-p", f"{EXAMPLES}/x.npy", "-t", f"{EXAMPLES}/v.npy"],
    "check": ["check", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "spectrum": ["spectrum", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "run": ["run", str(ROOT / "configs" / "rosenbrock-hessian.yaml")],
    "info": ["info"],
    "sparsity": ["sparsity", f"{QUICK}:f", "-p", f"{EXAMPLES}/x.npy"],
    "serve": ["serve", "status"],
}


def test_every_command_is_listed_for_json():
    from jaccli.cli.commands import cli

    assert set(JSON_COMMANDS) == set(cli.commands)


@pytest.mark.parametrize("command", sorted(JSON_COMMANDS))
def test_format_json_is_one_document(command, workdir):
    extra = [] if command in ("info", "serve") else ["--repeat", "0"]
    run = jac(*JSON_COMMANDS[command], "--format", "json", *extra)
    assert run.code == 0, run
    doc = json.loads(run.stdout)  # the whole of stdout parses as one JSON document
    assert isinstance(doc, dict) and doc
    if command == "hessian":
        x = torch.ones(3, 2)
        want = torch.func.hessian(lambda t: 0.5 * torch.sin(t).pow(2).sum())(x)
        torch.testing.assert_close(torch.tensor(doc["hessian"]["data"]), want)


def test_format_json_stays_one_document_when_the_function_prints(workdir):
    write_module(workdir, "chatty", "def f(x):\n    print('hello from f')\n    return x * 2\n")
    run = jac("vjp", "chatty:f", "-p", "[1.0, 2.0]", "-u", "ones", "--format", "json", "--repeat", "0")
    assert run.code == 0, run
    assert json.loads(run.stdout)["vjp.0"]["data"] == [2.0, 2.0]
    assert "hello from f" in run.stderr
