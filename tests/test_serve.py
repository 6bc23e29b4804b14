"""``jac serve``: through a warm server, every command gives what it gives without one.

Each server runs in a private runtime folder of its own (XDG_RUNTIME_DIR set per server) and
is stopped, or killed, when its test or module ends. Loops that wait are bounded.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, RECORD, ROOT, jac

import jaccli.cli.client as client

pytestmark = pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="needs SCM_RIGHTS (Python 3.9+)")


def _wait(predicate, timeout: float = 60.0, what: str = "a condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Server:
    """A jac server in its own runtime folder, started with 'jac serve start'."""

    def __init__(self, base: Path, idle: str = "5m") -> None:
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o700)
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(base), "PYTHONPATH": str(ROOT)}
        self.env.pop("JAC_SERVER", None)
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            self.env.pop(name, None)
        self.folder = base / "jac"
        started = self.jac("serve", "start", "--idle", idle, "--timeout", "300", timeout=320)
        assert started.returncode == 0, started.stderr
        self.pid = self.status()["pid"]

    def jac(
        self, *args: str, env: dict | None = None, timeout: float = 300, **kw
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "jaccli", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            timeout=timeout,
            **kw,
        )

    def popen(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "jaccli", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,
        )

    def status(self) -> dict:
        run = self.jac("serve", "status", "--format", "json", timeout=60)
        return json.loads(run.stdout)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie is dead too
            with open(f"/proc/{self.pid}/stat") as fh:
                return fh.read().split(") ")[1][0] != "Z"
        except OSError:
            return False

    def close(self) -> None:
        if self.alive():
            self.jac("serve", "stop", "--timeout", "60", timeout=90)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("runtime"))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def own_server(tmp_path):
    srv = Server(tmp_path / "runtime")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def examples_pair(tmp_path):
    """Two identical copies of examples/ and configs/: one for the server, one without."""
    pair = []
    for name in ("served", "alone"):
        where = tmp_path / name
        shutil.copytree(EXAMPLES, where / "examples")
        shutil.copytree(ROOT / "configs", where / "configs")
        pair.append(where)
    return pair


def _without_timings(stderr: str) -> list[str]:
    """stderr without the timing table (its figures differ from run to run)."""
    kept, in_table = [], False
    for line in stderr.splitlines():
        if re.match(r"^\s+phase\s+time", line):
            in_table = True
        if not in_table and ": not repeated: one run took" not in line:  # the table's own footnote
            kept.append(line)
        if in_table and "|  device" in line:
            in_table = False
    return kept


def _auto_jacobian(config: str) -> bool:
    text = (ROOT / config).read_text()
    return "command: jacobian" in text and not re.search(r"mode: (fwd|rev)", text)


def _untimed(text: bytes) -> bytes:
    """--mode auto names the mode it timed faster on the first call: a timing figure, in words."""
    return re.sub(
        rb"mode: \w+ \(--mode auto, the faster route timed on the first call\)", b"mode: (timed)", text
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _placed(files: dict[str, bytes], folder: Path) -> dict[str, bytes]:
    """Files as two folders are compared: the reproducibility record names the folder a command
    ran in (its cwd, the absolute paths of the files it read), written <folder> here; an .npz is
    rewritten as its entries with that done (every other byte compared as is)."""
    import io

    place = str(folder)
    placed = {}
    for name, data in files.items():
        if data.startswith(b"PK") and name.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                entries = [(k, z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files]
                if RECORD in z.files:  # written by jac (not an example's input)
                    assert z.files[-1] == RECORD and place in str(z[RECORD][()]), name
                    entries[-1] = (RECORD, str(z[RECORD][()]).replace(place, "<folder>"))
            data = repr(entries).encode()
        elif name.endswith(".json") or data.startswith(b"{"):
            data = _untimed_document(data)
        placed[name] = data.replace(place.encode(), b"<folder>")
    return placed


def _untimed_document(data: bytes) -> bytes:
    """A JSON document with its timing figures left out: a --timings file keeps its keys (its
    every figure is a time); a record chosen by a trial of routes keeps how it was chosen (which
    route won, and by how much, is a timing figure)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if not isinstance(doc, dict):
        return data
    if "phases" in doc:  # a --timings file
        return repr(sorted(doc)).encode()
    for key in ("__jac__", "record"):
        record = doc.get(key)
        if isinstance(record, dict) and record.get("chosen_by") == "trial":
            doc[key] = {**record, "trial": "<timed>", "beat": "<timed>", "route": "<timed>"}
    return json.dumps(doc, sort_keys=True).encode()


def _documented_commands() -> list[str]:
    """The `jac` lines of the ```sh blocks in the README and the pages of docs/ (as test_docs runs them)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [
        line
        for page in pages
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S)
        for line in block.splitlines()
    ]
    return [line for line in lines if line.startswith("jac ")]


CASES = list(
    dict.fromkeys(
        _documented_commands()
        + [f"jac run configs/{p.name}" for p in sorted((ROOT / "configs").glob("*.yaml"))]
    )
)


@pytest.mark.parametrize("line", CASES)
def test_documented_examples_and_configs_are_identical_through_the_server(
    line, server, examples_pair, monkeypatch
):
    if "--plot" in line:
        pytest.importorskip("matplotlib")
    served, alone = examples_pair
    args = shlex.split(line, comments=True)[1:]
    if "--mode" not in args and (args[0] == "jacobian" or (args[0] == "run" and _auto_jacobian(args[1]))):
        args += ["--mode", "rev"]  # --mode auto times both modes: which wins is a timing figure
    through = server.jac(*args, cwd=served, env={"JAC_SERVER": "require"})
    monkeypatch.chdir(alone)
    monkeypatch.setenv("JAC_SERVER", "off")
    reference = jac(*args)  # jaccli.cli.commands.main in this process: what JAC_SERVER=off runs
    assert through.returncode == reference.code, (line, through.stderr, reference)
    stdout = _placed({"-": through.stdout}, served)["-"]
    assert _untimed(stdout) == _untimed(_placed({"-": reference.stdout_bytes}, alone)["-"]), line
    assert _without_timings(through.stderr.decode()) == _without_timings(reference.stderr), line
    assert {k: _untimed(v) for k, v in _placed(_files(served), served).items()} == {
        k: _untimed(v) for k, v in _placed(_files(alone), alone).items()
    }


def test_a_real_process_without_the_server_matches_too(server, examples_pair):
    served, alone = examples_pair
    args = ["vjp", "examples/quickstart.py:loss", "-p", "examples/x.yaml", "-o", "g.npz"]
    through = server.jac(*args, cwd=served, env={"JAC_SERVER": "require"})
    off = server.jac(*args, cwd=alone, env={"JAC_SERVER": "off"})
    assert through.returncode == off.returncode == 0, (through.stderr, off.stderr)
    assert _without_timings(through.stderr.decode()) == _without_timings(off.stderr.decode())
    assert _placed(_files(served), served) == _placed(_files(alone), alone)
    with np.load(served / "g.npz") as z:
        np.testing.assert_allclose(z["vjp.0"], np.full((3, 2), np.sin(1.0) * np.cos(1.0)), rtol=1e-6)


def test_stdin_pipelines_reach_the_child(server, tmp_path):
    x = np.arange(6, dtype=np.float64).reshape(3, 2)
    buf = tmp_path / "x.npy"
    np.save(buf, x)
    args = ["jvp", str(EXAMPLES / "quickstart.py") + ":f", "-p", "-", "-t", "ones", "--format", "json"]
    through = server.jac(*args, input=buf.read_bytes(), env={"JAC_SERVER": "require"}, cwd=tmp_path)
    off = server.jac(*args, input=buf.read_bytes(), env={"JAC_SERVER": "off"}, cwd=tmp_path)
    assert through.returncode == off.returncode == 0, through.stderr
    assert through.stdout == off.stdout
    result = json.loads(through.stdout)
    np.testing.assert_allclose(result["jvp"]["data"], np.full(3, 4.0))
    np.testing.assert_allclose(result["output"]["data"], 2 * x.sum(axis=1))


def _module(folder: Path, name: str, source: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return f"{name}:f"


def test_exit_codes_and_error_lines_are_the_same(server, tmp_path):
    func = _module(
        tmp_path,
        "raising",
        """
        def f(x):
            raise ValueError("no good")
    """,
    )
    for args in (
        ["jvp", func, "-p", "1.0"],
        ["jvp", "nosuchmodule:f", "-p", "1.0"],
        ["frobnicate"],
        ["jvp", func, "--dtype", "float7"],
    ):
        through = server.jac(*args, cwd=tmp_path, env={"JAC_SERVER": "require"})
        off = server.jac(*args, cwd=tmp_path, env={"JAC_SERVER": "off"})
        assert through.returncode == off.returncode != 0, args
        assert through.stderr == off.stderr, args
        assert through.stdout == off.stdout == b"", args


def test_the_user_module_is_imported_fresh_each_time(server, tmp_path):
    for scale in (2.0, 5.0):
        func = _module(
            tmp_path,
            "edited",
            f"""
            def f(x):
                return {scale} * x * x
        """,
        )
        run = server.jac(
            "vjp", func, "-p", "3.0", "--format", "json", cwd=tmp_path, env={"JAC_SERVER": "require"}
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["vjp.0"]["data"] == pytest.approx(2 * scale * 3.0)


@pytest.mark.parametrize(
    "body, code",
    [("import os; os._exit(7)", 7), ("import ctypes; ctypes.string_at(0)", 128 + signal.SIGSEGV)],
)
def test_a_child_that_dies_takes_only_itself(server, tmp_path, body, code):
    func = _module(
        tmp_path,
        "dying",
        f"""
        def f(x):
            {body}
    """,
    )
    out = tmp_path / "r.npz"
    run = server.jac("jvp", func, "-p", "1.0", "-o", str(out), cwd=tmp_path, env={"JAC_SERVER": "require"})
    assert run.returncode == code, run.stderr
    assert not out.exists()
    assert server.alive()
    again = server.jac(
        "vjp",
        "-p",
        "2.0",
        _module(tmp_path, "fine", "def f(x):\n    return x * x\n"),
        "--format",
        "json",
        cwd=tmp_path,
        env={"JAC_SERVER": "require"},
    )
    assert again.returncode == 0, again.stderr


SLOW = """
    import os, time
    def f(x):
        open(os.environ["JAC_TEST_MARK"], "w").write(str(os.getpid()))
        for _ in range(6000):
            time.sleep(0.01)
        return x * 2
"""


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signals_at_the_client_reach_the_child(server, tmp_path, signum, code, word):
    func = _module(tmp_path, "slow", SLOW)
    mark = tmp_path / "mark"
    out = tmp_path / "r.npz"
    proc = server.popen(
        "jvp",
        func,
        "-p",
        "1.0",
        "-o",
        str(out),
        cwd=tmp_path,
        env={"JAC_SERVER": "require", "JAC_TEST_MARK": str(mark)},
    )
    try:
        _wait(mark.exists, 120, "the function to start")
        child = int(_wait(lambda: mark.read_text(), 10, "the pid"))
        assert child != proc.pid  # it runs in the server's child, not in the client
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert word in err.decode()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name] == []


def test_a_client_that_dies_takes_its_child(server, tmp_path):
    func = _module(tmp_path, "slow", SLOW)
    mark = tmp_path / "mark"
    proc = server.popen(
        "jvp", func, "-p", "1.0", cwd=tmp_path, env={"JAC_SERVER": "require", "JAC_TEST_MARK": str(mark)}
    )
    try:
        _wait(mark.exists, 120, "the function to start")
        child = int(_wait(lambda: mark.read_text(), 10, "the pid"))
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as fh:
                return fh.read().split(") ")[1][0] == "Z"
        except OSError:
            return True

    _wait(gone, 30, "the child to end")
    assert server.alive()


def test_a_server_killed_mid_request(own_server, tmp_path):
    func = _module(tmp_path, "slow", SLOW)
    mark = tmp_path / "mark"
    out = tmp_path / "r.npz"
    proc = own_server.popen(
        "jvp",
        func,
        "-p",
        "1.0",
        "-o",
        str(out),
        cwd=tmp_path,
        env={"JAC_SERVER": "require", "JAC_TEST_MARK": str(mark)},
    )
    try:
        _wait(mark.exists, 120, "the function to start")
        os.kill(own_server.pid, signal.SIGKILL)
        stdout, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "server stopped" in lines[0], lines
    assert stdout == b""
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("runtime", "__pycache__")) == [
        "mark",
        "slow.py",
    ]
    # the next command finds the stale socket, removes it and runs without a server
    run = own_server.jac(
        "vjp",
        "-p",
        "2.0",
        _module(tmp_path, "fine", "def f(x):\n    return x * x\n"),
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert not (own_server.folder / "serve.sock").exists()


def test_a_stale_socket_is_removed_and_require_says_so(tmp_path):
    base = tmp_path / "runtime"
    (base / "jac").mkdir(parents=True, mode=0o700)
    base.chmod(0o700)
    path = base / "jac" / "serve.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays; nobody listens
    env = {**os.environ, "XDG_RUNTIME_DIR": str(base), "PYTHONPATH": str(ROOT), "JAC_SERVER": "require"}
    func = _module(tmp_path, "fine", "def f(x):\n    return x * x\n")
    run = subprocess.run(
        [sys.executable, "-m", "jaccli", "vjp", func, "-p", "2.0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.decode().count("\n") == 1 and "JAC_SERVER=require" in run.stderr.decode()
    assert run.stdout == b""
    assert not path.exists()
    env["JAC_SERVER"] = ""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    run = subprocess.run(
        [sys.executable, "-m", "jaccli", "vjp", func, "-p", "2.0", "--format", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["vjp.0"]["data"] == 4.0
    assert not path.exists()


def test_a_folder_others_can_open_is_refused(tmp_path):
    base = tmp_path / "runtime"
    (base / "jac").mkdir(parents=True)
    (base / "jac").chmod(0o755)
    socket_file = base / "jac" / "serve.sock"
    socket_file.write_text("")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(base), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "jaccli", "--version"], env=env, capture_output=True, timeout=120
    )
    assert run.returncode == 2
    assert "not a folder private to this user" in run.stderr.decode()


def test_another_torch_is_not_used_and_said_once(own_server, tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "version.py").write_text("__version__ = '0.0.fake'\n")  # no __init__: real torch still imports
    env = {"PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{ROOT}"}
    func = _module(tmp_path, "fine", "def f(x):\n    return x * x\n")
    runs = [
        own_server.jac("vjp", func, "-p", "2.0", "--format", "json", cwd=tmp_path, env=env) for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["vjp.0"]["data"] == 4.0
    notes = [r.stderr.decode().count("does not match this jac") for r in runs]
    assert notes == [1, 0], [r.stderr for r in runs]
    assert "torch 0.0.fake" in runs[0].stderr.decode()
    required = own_server.jac("vjp", func, "-p", "2.0", cwd=tmp_path, env={**env, "JAC_SERVER": "require"})
    assert required.returncode == 2


def test_off_and_torchrun_never_use_the_server(server, tmp_path):
    func = _module(tmp_path, "fine", "def f(x):\n    return x * x\n")
    before = server.status()["served"]
    for env in ({"JAC_SERVER": "off"}, {"LOCAL_RANK": "0"}):
        run = server.jac("vjp", func, "-p", "2.0", "--format", "json", cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["vjp.0"]["data"] == 4.0
    assert server.status()["served"] <= before + 1  # the first status call, no more


def test_twenty_clients_at_once(server, tmp_path):
    func = _module(tmp_path, "cube", "def f(x):\n    return (x ** 3).sum()\n")
    procs = [
        server.popen(
            "vjp",
            func,
            "-p",
            f"[{i}.0, {i + 1}.0]",
            "--format",
            "json",
            cwd=tmp_path,
            env={"JAC_SERVER": "require"},
        )
        for i in range(20)
    ]
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        got = np.array(json.loads(out)["vjp.0"]["data"], dtype=np.float64)
        np.testing.assert_allclose(got, 3 * np.array([i, i + 1.0]) ** 2)


def test_status_stop_and_idle_timeout(tmp_path):
    srv = Server(tmp_path / "runtime", idle="3s")
    try:
        _wait(lambda: not srv.alive(), 120, "the idle timeout")
        assert not (srv.folder / "serve.sock").exists()
        status = srv.jac("serve", "status", timeout=60)
        assert status.returncode == 0 and b"no jac server running" in status.stdout
    finally:
        srv.close()
    srv = Server(tmp_path / "runtime2")
    try:
        text = srv.jac("serve", "status", timeout=60)
        assert text.returncode == 0 and f"pid {srv.pid}".encode() in text.stdout
        assert b"used by this jac: yes" in text.stdout
        assert oct((srv.folder).stat().st_mode & 0o777) == oct(0o700)
        assert oct((srv.folder / "serve.sock").stat().st_mode & 0o777) == oct(0o600)
        stop = srv.jac("serve", "stop", timeout=90)
        assert stop.returncode == 0 and b"stopped" in stop.stderr
        assert not srv.alive()
    finally:
        srv.close()


def test_no_socket_means_in_process_without_importing_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("JAC_SERVER", raising=False)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert client._through_server(["--version"], require=False) is None
    monkeypatch.setenv("JAC_SERVER", "require")
    with pytest.raises(client.ServerError, match="no jac server answers"):
        client._through_server(["--version"], require=True)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, jaccli.cli.client as c; c._through_server([], False); "
            "print(sorted(m for m in ('socket', 'json', 'click', 'torch', 'numpy') if m in sys.modules))",
        ],
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert probe.stdout.strip() == b"[]", probe.stderr


def test_the_compatibility_key_covers_every_module_of_the_package():
    """A server runs the code it imported: an edit to any of jac's modules (not only cli/'s)
    must make clients refuse it, so the key names the package and its newest source."""
    from jaccli.cli.client import compat_key

    key = compat_key()
    package = ROOT / "jaccli"
    assert Path(key["jaccli"]) == package
    newest = max(p.stat().st_mtime_ns for p in package.rglob("*.py"))
    assert key["jaccli_stamp"] == newest
