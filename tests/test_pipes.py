"""jac in shell pipelines and against hostile input (issue 11): broken pipes, two outputs on one
file, shadowed imports, exceptions that escaped, errors that echoed the input, slow failures
on bad YAML, temporary files left behind, the help summary."""

from __future__ import annotations

import glob
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_clean_error, jac, jac_process, write_module

from jaccli.cli.commands import cli
from jaccli.io import streams, tempfiles

SOURCE = """
import torch

def f(x):
    return x.sin() * 2

def gen_exit(x):
    raise GeneratorExit("boom")

def closes_stdout(x):
    import sys
    sys.stdout.close()
    return x * 2

def many(x):
    return {f"k{i:02d}": x * i for i in range(63)}
"""


@pytest.fixture
def mod(workdir):
    write_module(workdir, "pipemod", SOURCE)
    return workdir


def _shell(command: str, cwd: Path) -> tuple[int, bytes]:
    """Run a shell pipeline (bash, pipefail): its status and jac's standard error."""
    err = cwd / "stderr.txt"
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {{ {command}; }} 2>{err}"],
        cwd=cwd,
        env=os.environ.copy(),
        timeout=300,
    )
    return proc.returncode, err.read_bytes()


JAC = f"{sys.executable} -m jaccli"


# --- 2. broken pipes --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "npz", "yaml"])
def test_a_reader_that_leaves_early_ends_jac_by_sigpipe_quietly(mod, fmt):
    """800 KB into `head -c 100`: the kernel takes 64 KiB, then the pipe breaks. Never 0, no noise."""
    code, err = _shell(
        f"{JAC} jacrev pipemod:f -p randn:300 --format {fmt} --no-timings | head -c 100 >/dev/null", mod
    )
    assert code == 141, err
    assert err == b""


def test_check_text_into_a_closed_pipe_is_not_check_failed(mod):
    code, err = _shell(f"{JAC} check pipemod:f -p randn:3 --no-timings | true", mod)
    assert code in (0, 141), err  # 0 when the table fitted in the pipe before true left
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_a_reader_of_both_streams_that_leaves_is_never_check_failed(mod):
    """`2>&1 | head -1`: the timing table meets the broken pipe on standard error; click would
    exit 1 (jac's "check failed"), jac ends by SIGPIPE or, when all was read in time, with 0."""
    for _ in range(3):
        code, _ = _shell(f"{JAC} jacrev pipemod:f -p randn:3 2>&1 | head -1 >/dev/null", mod)
        assert code in (0, 141)


class ShortThenBroken(io.RawIOBase):
    """A pipe whose reader takes 10 bytes, then leaves."""

    def __init__(self):
        self.taken = 0

    def writable(self):
        return True

    def write(self, data):
        if self.taken:
            raise BrokenPipeError(32, "Broken pipe")
        self.taken = 10
        return 10


def test_write_all_meets_the_broken_pipe_after_a_short_write():
    with pytest.raises(streams.ReaderGone):
        streams.write_all(ShortThenBroken(), b"x" * 1000)


class Loop(io.RawIOBase):
    def __init__(self):
        self.data = b""

    def writable(self):
        return True

    def write(self, data):
        self.data += bytes(data[:7])
        return min(7, len(data))


def test_write_all_loops_over_short_writes():
    sink = Loop()
    streams.write_all(sink, b"0123456789" * 5)
    assert sink.data == b"0123456789" * 5


def test_text_to_a_full_disk_is_an_input_error(mod):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    for args in (["jacrev", "pipemod:f", "-p", "randn:4"], ["check", "pipemod:f", "-p", "randn:3"]):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "jaccli", *args, "--no-timings"],
                stdout=full,
                stderr=subprocess.PIPE,
                cwd=mod,
            )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.decode().strip().splitlines() == [
            "jac: error: cannot write to standard output: No space left on device"
        ]


def test_text_to_a_pipe_does_not_import_rich(mod):
    probe = (
        "import sys\nfrom jaccli.cli.commands import main\ntry:\n"
        "    main(['jacrev', 'pipemod:f', '-p', 'randn:4', '--no-timings'])\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('RICH' if 'rich' in sys.modules else 'PLAIN')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=mod, timeout=300)
    assert proc.stderr.decode().endswith("PLAIN"), proc.stderr
    assert b"jacobian  shape (4, 4)  float32" in proc.stdout
    assert b"heatmap: " in proc.stdout


# --- 3. two outputs, one file -----------------------------------------------------------


def test_two_outputs_on_one_file_are_an_input_error_before_any_work(mod):
    (mod / "r.json").write_bytes(b"old")
    os.symlink("r.json", mod / "link.json")
    for timings in ("r.json", "./r.json", str(mod / "r.json"), "link.json"):
        run = jac("jacrev", "pipemod:f", "-p", "randn:3", "-o", "r.json", "--timings", timings)
        assert_clean_error(run, 2, "same file", "r.json")
        assert "function alone" not in run.stderr
    assert (mod / "r.json").read_bytes() == b"old"
    assert not glob.glob(str(mod / ".*.tmp"))


def test_a_config_relative_out_and_timings_on_one_file(mod):
    (mod / "cfg").mkdir()
    (mod / "cfg" / "c.yaml").write_text(
        "command: jacrev\nfunction: pipemod:f\nprimals: randn:3\nout: r.json\n"
        "options:\n  timings: ../cfg/r.json\n"
    )
    assert_clean_error(jac("run", "cfg/c.yaml"), 2, "same file")
    assert not (mod / "cfg" / "r.json").exists()


def test_distinct_outputs_still_work(mod):
    run = jac("jacrev", "pipemod:f", "-p", "randn:3", "-o", "r.json", "--timings", "t.json")
    assert run.code == 0, run
    assert "jacobian" in (mod / "r.json").read_text() and "phases" in (mod / "t.json").read_text()


# --- 4. jac's imports are not the user's files -------------------------------------------


def test_a_yaml_py_beside_the_module_or_in_the_cwd_is_not_jacs_yaml(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    bomb = 'raise SystemExit("the user\'s file ran")\n'
    for name in ("yaml.py", "numpy.py", "rich.py"):
        (sub / name).write_text(bomb)
        (tmp_path / name).write_text(bomb)
    (sub / "m.py").write_text("import torch\ndef f(x):\n    return x * 3\n")
    proc = jac_process(
        "jacrev", "sub/m.py:f", "-p", "[1, 2]", "-o", "J.yaml", "--kwarg", "k=[1]", cwd=tmp_path
    )
    assert proc.returncode == 2 and b"--kwarg k" in proc.stderr, proc.stderr  # parsed by the real yaml
    proc = jac_process("jacrev", "sub/m.py:f", "-p", "[1, 2]", "-o", "J.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import yaml

    doc = yaml.safe_load((tmp_path / "J.yaml").read_text())
    assert doc["jacobian"]["data"] == [[3.0, 0.0], [0.0, 3.0]]
    proc = jac_process("jacrev", "m:f", "-p", "[1, 2]", "--format", "yaml", "--no-timings", cwd=sub)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["jacobian"]["shape"] == [2, 2]


def test_the_users_own_sibling_modules_still_import(workdir):
    (workdir / "pkgdir").mkdir()
    (workdir / "pkgdir" / "helper_mod_x.py").write_text("def twice(x):\n    return 2 * x\n")
    (workdir / "pkgdir" / "top.py").write_text(
        "from helper_mod_x import twice\ndef f(x):\n    return twice(x)\n"
    )
    run = jac("jvp", "pkgdir/top.py:f", "-p", "[1.0]", "-t", "[1.0]", "--format", "npz")
    assert run.code == 0, run
    assert run.npz()["jvp"].tolist() == [2.0]


def test_a_module_named_like_one_already_imported_is_named_as_such(workdir):
    (workdir / "calendar.py").write_text("def f(x):\n    return 5 * x\n")
    assert_clean_error(jac("jvp", "calendar:f", "-p", "1.0"), 2, "installed module", "calendar.py:f")
    run = jac("jvp", "calendar.py:f", "-p", "1.0", "--format", "npz")
    assert run.code == 0, run
    assert run.npz()["jvp"] == 5.0


def test_readme_says_python_m_jaccli_runs_a_jaccli_py_in_the_cwd():
    readme = (ROOT / "README.md").read_text()
    near = readme[readme.index("jaclang installs one") :][:600]
    assert "jaccli.py" in near and "numpy.py" in near


# --- 5. exceptions that escaped ---------------------------------------------------------


def test_a_base_exception_from_the_function_is_exit_3_in_one_line(mod):
    assert_clean_error(jac("jacrev", "pipemod:gen_exit", "-p", "randn:3"), 3, "GeneratorExit", "boom")


def test_a_function_closing_stdout_is_a_clean_error(mod):
    proc = jac_process("jacrev", "pipemod:closes_stdout", "-p", "randn:3", cwd=mod)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "closed sys.stdout" in lines[0], lines


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(3.0))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.replace(b"}", b" ", 1),  # the dict not closed: tokenize raises TokenError
        lambda d: d.replace(b"'descr'", b"'descr", 1),
        lambda d: d.replace(b"(3,)", b"(3,(", 1),
        lambda d: d.replace(b"False", b"Fals\xff", 1),
    ],
)
def test_a_malformed_npy_header_is_an_input_error(mod, damage):
    (mod / "bad.npy").write_bytes(damage(_npy_bytes()))
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "bad.npy"), 2, "bad.npy")


# --- 6. errors quote short excerpts -------------------------------------------------------


def test_a_3mb_yaml_string_gives_a_short_error(mod):
    (mod / "long.yaml").write_text("x" * 3_000_000)
    run = jac("jacrev", "pipemod:f", "-p", "long.yaml")
    assert_clean_error(run, 2, "long.yaml", "3,000,000 characters", "is not a number")
    assert len(run.stderr) < 300


def test_a_long_func_and_control_characters_are_excerpted(mod):
    run = jac("jacrev", "x" * 100_000 + "\x1b[31m", "-p", "1.0")
    assert_clean_error(run, 2, "FUNC")
    assert len(run.stderr) < 400 and "\x1b" not in run.stderr


# --- 7. YAML fails fast; booleans and quoted numbers --------------------------------------


def test_a_big_yaml_file_is_refused_by_size_before_parsing(mod):
    (mod / "big.yaml").write_text("\n".join(["- hello"] * 1_000_000))
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "big.yaml"), 2, "big.yaml", "MiB of YAML", ".npy")


def test_a_big_json_shaped_yaml_file_is_parsed_as_json(mod):
    (mod / "big.yaml").write_text("[" + ", ".join(['"hello"'] * 1_000_000) + "]")
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "big.yaml"), 2, "'hello' at [0] is not a number")


def test_yaml_numbers_booleans_and_quoted_numbers(mod):
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "[1, true, 3]"), 2, "true at [1]", "array of numbers")
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "[[1, 2], [false, 3]]"), 2, "false at [1][0]")
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", '[1, "2.0", 3]'), 2, "quoted string '2.0' at [1]")
    run = jac(
        "jvp", "pipemod:f", "-p", '[1e-3, 2E1, "NaN", "-Infinity", .5]', "-t", "ones", "--format", "npz"
    )
    assert run.code == 0, run
    x = torch.tensor([1e-3, 20.0, float("nan"), float("-inf"), 0.5])
    np.testing.assert_allclose(run.npz()["output"], (x.sin() * 2).numpy(), rtol=1e-6)
    bools = jac("jvp", "pipemod:f", "-p", "[true, false]", "-t", "ones", "--format", "npz")
    assert bools.code == 0, bools
    np.testing.assert_allclose(bools.npz()["output"], [2 * np.sin(1.0), 0.0], rtol=1e-6)


@pytest.mark.parametrize("text", ["[" * 100_000 + "1" + "]" * 100_000, "- " * 50_000 + "1", "{a: " * 60_000])
def test_deep_yaml_never_reaches_the_c_parser(mod, text):
    """libyaml composes by recursion in C: 100,000 levels would overflow the stack (a crash)."""
    (mod / "deep.yaml").write_text(text)
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "deep.yaml"), 2, "deep.yaml")


def test_yaml_aliases_are_still_refused_with_the_fast_loader(mod):
    assert_clean_error(jac("jacrev", "pipemod:f", "-p", "{a: &x [1, 2], b: *x}"), 2, "aliases are refused")


# --- 8. temporary files --------------------------------------------------------------------


STREAM = ["jacrev", "m.py:f", "-p", "randn:2048", "-o", "J.npy", "--max-memory", "4M", "--repeat", "0"]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_streamed_temp_file_exists_leaves_nothing(tmp_path, signame):
    (tmp_path / "m.py").write_text("import torch\ndef f(x):\n    return torch.tanh(x).cumsum(0)\n")
    sig = getattr(signal, signame)
    for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaccli", *STREAM],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while (
            not glob.glob(str(tmp_path / ".J.npy.*.tmp"))
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # finished before the signal: then the file is whole
            assert np.load(tmp_path / "J.npy").shape == (2048, 2048)
            (tmp_path / "J.npy").unlink()
        else:
            assert proc.returncode == 128 + sig, err
            assert b"nothing was written" in err and b"Traceback" not in err
            assert not (tmp_path / "J.npy").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"], (delay, err)


def test_the_next_run_removes_what_sigkill_left_and_only_that(workdir):
    write_module(workdir, "km", "import torch\ndef f(x):\n    return x.sin()\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = workdir / f".J.npy.{int(dead.stdout)}.abc123_x.tmp"
    live = workdir / f".J.npy.{os.getppid()}.def456.tmp"  # a running process's: a concurrent writer
    other = workdir / f".K.npy.{int(dead.stdout)}.abc123.tmp"  # another destination's
    for path in (stale, live, other):
        path.write_bytes(b"\0" * 100)
    run = jac("jacrev", "km:f", "-p", "randn:3", "-o", "J.npy", "--no-timings")
    assert run.code == 0, run
    assert not stale.exists() and live.exists() and other.exists()
    assert "removed 1 temporary file(s)" in run.stderr and stale.name in run.stderr
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(3)).float()
    np.testing.assert_allclose(np.load("J.npy"), torch.func.jacrev(torch.sin)(x).numpy(), rtol=1e-6)


def test_pending_temporary_files_go_when_the_command_ends(tmp_path):
    target = tmp_path / "out.npz"
    fd, temp = tempfiles.create(str(target))
    os.close(fd)
    assert os.path.basename(temp).startswith(f".out.npz.{os.getpid()}.")
    tempfiles.remove_pending()
    assert not os.path.exists(temp)


# --- help and summaries ---------------------------------------------------------------------


def test_top_level_help_summary_lists_every_command():
    run = jac("--help")
    assert run.code == 0
    for command in cli.commands:
        assert f"  jac {command} " in run.stdout, command


def test_many_keys_written_to_a_file_are_summarised(mod):
    run = jac("jvp", "pipemod:many", "-p", "randn:2", "-t", "ones", "-o", "out.npz", "--no-timings")
    assert run.code == 0, run
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("wrote 126 result(s) (output.k00, ") and line.endswith(", jvp.k62) to out.npz")
    assert len(line) < 150
    with np.load("out.npz") as z:
        assert len(z.files) == 126 + 1 and z.files[-1] == "__jac__"  # the results, then their record


# --- issue 10's hint: a file inside a package that imports relatively ------------------------


def test_a_file_in_a_package_with_relative_imports_names_the_module_form(workdir):
    pkg = workdir / "relpkg" / "sub"
    pkg.mkdir(parents=True)
    (workdir / "relpkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("def helper(x):\n    return x * 2\n")
    (pkg / "mod.py").write_text(
        textwrap.dedent("from .helpers import helper\ndef fn(x):\n    return helper(x)\n")
    )
    assert_clean_error(jac("jvp", "relpkg/sub/mod.py:fn", "-p", "1.0"), 2, "use relpkg.sub.mod:fn")
    run = jac("jvp", "relpkg.sub.mod:fn", "-p", "1.0", "--format", "npz")
    assert run.code == 0, run
    assert run.npz()["jvp"] == 2.0
