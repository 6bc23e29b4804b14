"""Shared helpers: run ``jac`` in-process (fast) or as a subprocess (for what only a process shows)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jaccli.cli.commands import main

ROOT = Path(__file__).resolve().parent.parent
RECORD = "__jac__"  # the reproducibility record's key in result files (jaccli.report.record)
EXAMPLES = ROOT / "examples"


@dataclass
class Run:
    code: int
    stdout_bytes: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8")

    def npz(self) -> dict[str, np.ndarray]:
        """The results in an .npz on stdout (its reproducibility record, ``__jac__``, aside)."""
        with np.load(io.BytesIO(self.stdout_bytes), allow_pickle=False) as z:
            assert z.files[-1] == RECORD, z.files  # every .npz result ends with its record
            return {k: z[k] for k in z.files if k != RECORD}

    def record(self) -> dict:
        """The reproducibility record of an .npz, JSON or YAML document on stdout."""
        import json

        if self.stdout_bytes.startswith(b"PK"):
            with np.load(io.BytesIO(self.stdout_bytes), allow_pickle=False) as z:
                return json.loads(str(z[RECORD][()]))
        import yaml

        return yaml.safe_load(self.stdout)[RECORD]

    def __repr__(self) -> str:  # shown by pytest when an assertion fails
        return f"Run(code={self.code}, stderr={self.stderr!r}, stdout={self.stdout_bytes[:500]!r})"


def jac(*args: str, input: bytes | str | None = None) -> Run:
    """Run ``jac ARGS`` in this process, through the same ``main`` as the console script."""
    runner = CliRunner()
    with runner.isolation(input=input) as streams:
        out, err = streams[0], streams[1]
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout_bytes = out.getvalue()
        stderr = err.getvalue().decode("utf-8") if err is not None else ""
    return Run(code, stdout_bytes, stderr)


def jac_process(
    *args: str,
    input: bytes | None = None,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run ``python -m jaccli ARGS`` as a real process (bytes in, bytes out)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "jaccli", *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory (on sys.path, as jac puts it) for user modules and files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write_module(folder: Path, name: str, source: str) -> Path:
    """Write ``folder/name.py`` with dedented ``source`` and forget any earlier import of it."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    return path


def assert_clean_error(run: Run, code: int, *needles: str) -> None:
    """One line on stderr, the exit code, each needle in the message, and no traceback."""
    assert run.code == code, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run
    assert "Traceback" not in run.stderr, run
    for needle in needles:
        assert needle in lines[0], (needle, run)
    assert run.stdout_bytes == b"", run


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip cleanly where torch sees no CUDA device."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
