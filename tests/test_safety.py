"""Output safety and interruption: no partial, temporary or clobbered file, ever.

Writes go to a temporary file in the target folder and are renamed into place. These tests
break each step: a folder, a read-only file or folder, a full disk, an exception or a signal
in the middle of a write or of the computation.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, assert_clean_error, jac, write_module

from jaccli.errors import InputError
from jaccli.io import outputs

OLD = b"previous results, to be kept intact"
ARGS = ("jvp", f"{EXAMPLES}/quickstart.py:f", "-p", f"{EXAMPLES}/x.npy", "-t", f"{EXAMPLES}/v.npy")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "out.npz"
    path.write_bytes(OLD)
    return path


def test_a_successful_write_replaces_the_file_whole(old_file: Path):
    run = jac(*ARGS, "-o", str(old_file), "--no-timings")
    assert run.code == 0, run
    with np.load(old_file) as z:
        np.testing.assert_array_equal(z["jvp"], [6, 14, 22])
    assert leftovers(old_file.parent) == []


def test_replacing_keeps_the_permissions(old_file: Path):
    old_file.chmod(0o640)
    assert jac(*ARGS, "-o", str(old_file), "--no-timings").code == 0
    assert old_file.stat().st_mode & 0o777 == 0o640


def test_output_path_that_is_a_folder(tmp_path: Path):
    (tmp_path / "out.npz").mkdir()
    assert_clean_error(jac(*ARGS, "-o", str(tmp_path / "out.npz")), 2, "is a folder")


def test_existing_read_only_file_is_kept(old_file: Path):
    old_file.chmod(0o444)
    assert_clean_error(jac(*ARGS, "-o", str(old_file)), 2, "read-only", str(old_file))
    assert old_file.read_bytes() == OLD
    assert leftovers(old_file.parent) == []


def test_read_only_folder(old_file: Path, monkeypatch):
    """A folder refusing new files (simulated: root may write anywhere)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    from jaccli.io import tempfiles

    monkeypatch.setattr(tempfiles.tempfile, "mkstemp", refuse)
    assert_clean_error(jac(*ARGS, "-o", str(old_file)), 2, "cannot write", "Permission denied")
    assert old_file.read_bytes() == OLD


def test_full_disk_mid_write(old_file: Path, monkeypatch):
    """ENOSPC after part of the file is written: the old file stays, the temporary one goes."""
    real = outputs.encode

    def half_then_full(fh, fmt, results, record=None):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "encode", half_then_full)
    assert_clean_error(jac(*ARGS, "-o", str(old_file)), 2, "No space left on device", "nothing was changed")
    assert old_file.read_bytes() == OLD
    assert leftovers(old_file.parent) == []
    monkeypatch.setattr(outputs, "encode", real)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_interrupted_write_leaves_no_trace(tmp_path: Path, interruption):
    path = tmp_path / "out.npz"
    path.write_bytes(OLD)

    def write(fh):
        fh.write(b"x" * 100_000)
        raise interruption()

    with pytest.raises(interruption):
        outputs.atomic_write(str(path), write)
    assert path.read_bytes() == OLD
    assert leftovers(tmp_path) == []


def test_write_error_is_an_input_error(tmp_path: Path):
    def write(fh):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(InputError, match="Disk quota exceeded; nothing was changed"):
        outputs.atomic_write(str(tmp_path / "out.json"), write)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signal_during_the_computation(tmp_path: Path, sig, code, word):
    """A real process, killed while the user's function runs: the exit code says which signal,
    one line says so, and neither the output nor a temporary file is left."""
    marker = tmp_path / "started"
    write_module(
        tmp_path,
        "sleepy",
        f"import time, pathlib\n\ndef f(x):\n    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(60)\n    return x * 2\n",
    )
    out = tmp_path / "out.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaccli", "jvp", "sleepy:f", "-p", "1.0", "-o", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in stderr.decode(), stderr
    assert stdout == b""
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_keyboard_interrupt_raised_by_the_function(workdir: Path):
    write_module(workdir, "ki", "def f(x):\n    raise KeyboardInterrupt\n")
    run = jac("jvp", "ki:f", "-p", "1.0", "-o", "out.npz")
    assert run.code == 130
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        "jac: interrupted (SIGINT); nothing was written"
    ]
    assert not (workdir / "out.npz").exists()


def test_sigterm_handler_is_restored_after_main():
    before = signal.getsignal(signal.SIGTERM)
    jac("--help")
    assert signal.getsignal(signal.SIGTERM) is before


def test_stdout_write_is_all_or_nothing(monkeypatch):
    """A failure while encoding writes no partial document to standard output."""

    def broken(fh, fmt, results):
        fh.write(b'{"partial":')
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(outputs, "encode", broken)
    run = jac(*ARGS, "--format", "json", "--no-timings")
    assert run.code != 0
    assert run.stdout_bytes == b""


def test_user_print_goes_to_stderr_not_results(workdir: Path):
    write_module(workdir, "chatty", "def f(x):\n    print('hello from f')\n    return x * 2\n")
    run = jac("jvp", "chatty:f", "-p", "1.0", "--format", "json", "--no-timings")
    assert run.code == 0, run
    import json

    assert json.loads(run.stdout)["jvp"]["data"] == 2.0
    assert "hello from f" in run.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_no_temporary_files_after_any_error(tmp_path: Path):
    run = jac(*ARGS[:3], "-p", "nosuch.npy", "-o", str(tmp_path / "out.npz"))
    assert run.code == 2
    assert list(tmp_path.iterdir()) == []
