"""Progress bars: drawn on a terminal, never in pipelines or under --quiet; NO_COLOR only
drops colours. A terminal is faked by a text stream whose isatty() is true."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from conftest import jac, write_module

from jaccli.report import progress
from jaccli.report.timing import Timings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _loud():
    progress.Switch.quiet = False
    yield
    progress.Switch.quiet = False


def test_a_bar_is_drawn_on_a_terminal_and_counts_its_steps():
    stream = Terminal()
    with progress.bar("rows of J", 4, stream) as shown:
        for _ in range(4):
            shown.advance()
    text = stream.getvalue()
    assert "rows of J" in text and "4/4" in text


@pytest.mark.parametrize("stream", [io.StringIO(), None])
def test_no_bar_off_a_terminal(stream, capsys):
    with progress.bar("rows of J", 4, stream) as shown:
        shown.advance(4)
    assert (stream.getvalue() if stream else capsys.readouterr().err) == ""


def test_no_bar_under_quiet():
    stream = Terminal()
    progress.Switch.quiet = True
    with progress.bar("rows of J", 4, stream) as shown:
        shown.advance(4)
    assert stream.getvalue() == ""


def test_no_color_drops_colours_but_keeps_the_bar(monkeypatch):
    drawn = {}
    for no_color in ("", "1"):
        monkeypatch.setenv("NO_COLOR", no_color) if no_color else monkeypatch.delenv(
            "NO_COLOR", raising=False
        )
        stream = Terminal()
        with progress.bar("rows of J", 2, stream) as shown:
            shown.advance(2)
        drawn[no_color] = stream.getvalue()
    assert "rows of J" in drawn[""] and "rows of J" in drawn["1"]
    colour = re.compile(r"\x1b\[(3\d|9\d)m")  # foreground colours; cursor movement is not colour
    assert colour.search(drawn[""]) and not colour.search(drawn["1"])


def test_a_long_repeat_series_gets_a_bar_and_a_short_one_does_not(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    timings = Timings()
    timings.series("steady-state compute", lambda: None, repeat=3, warmup=0, per_run_s=1.0)
    assert "steady-state compute" in stream.getvalue()
    stream.truncate(0)
    stream.seek(0)
    timings.series("steady-state compute", lambda: None, repeat=3, warmup=0, per_run_s=0.01)
    assert stream.getvalue() == ""


def test_the_commands_draw_no_bar_when_stderr_is_captured(workdir):
    write_module(workdir, "pmod", "import torch\ndef f(x):\n    return x.sin() * x.sum()\n")
    run = jac("jacrev", "pmod:f", "-p", "randn:6", "--dtype", "float64", "-o", "J.npy", "--max-memory", "100")
    assert run.code == 0, run
    assert "\x1b[" not in run.stderr and "━" not in run.stderr
    x = torch.tensor(np.random.default_rng(0).standard_normal(6))
    np.testing.assert_array_equal(np.load("J.npy"), torch.func.jacrev(lambda t: t.sin() * t.sum())(x).numpy())


def test_check_full_draws_its_column_loop_on_a_terminal(workdir, monkeypatch):
    write_module(workdir, "pmod2", "import torch\ndef f(x):\n    return x.sin()\n")
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)  # as if stderr were one
    run = jac("check", "pmod2:f", "-p", "randn:5", "--full", "--no-timings")
    assert run.code == 0, run
    assert "check --full: finite differences" in run.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_a_streamed_jacobian_draws_its_chunks_on_a_terminal_unless_quiet(workdir, monkeypatch, quiet):
    write_module(workdir, "pmod3", "import torch\ndef f(x):\n    return x.sin() * x.sum()\n")
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)
    flags = ["-q"] if quiet else []
    run = jac("jacrev", "pmod3:f", "-p", "randn:6", "-o", "J.npy", "--max-memory", "100", *flags)
    assert run.code == 0, run
    assert ("jacobian -> J.npy" in run.stderr) is not quiet, run
    assert ("6/6" in run.stderr) is not quiet, run
    if quiet:
        assert run.stderr == ""
