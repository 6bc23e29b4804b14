"""The ``jac`` entry point: run through a warm ``jac serve`` server when one answers, else in-process.

Only ``os`` and ``sys`` are imported until a server's socket is found, so with no server the
whole check is one ``stat``; click, torch and numpy are never imported here. With a server, the
client sends its argv, working folder, environment, ``sys.path`` and umask, and its own standard
input, output and error file descriptors (SCM_RIGHTS), then waits for the exit status and
forwards SIGINT, SIGTERM and SIGHUP to the forked child that runs the command
(:mod:`jaccli.cli.server`). The server's folder and wire format are defined here, for both sides.

``JAC_SERVER=off`` never uses a server; ``JAC_SERVER=require`` exits 2 when none answers. Under
torchrun (RANK, LOCAL_RANK or WORLD_SIZE set) a server is never used.
"""

from __future__ import annotations

import os
import sys

PROTOCOL = 1
SOCKET_NAME = "serve.sock"
_DISTRIBUTED = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class ServerError(Exception):
    """A server problem meant for the user as one line (exit 2)."""


def runtime_dir() -> str:
    """The user-only folder for the socket: $XDG_RUNTIME_DIR/jac, else <tmp>/jac-<uid>."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return os.path.join(base, "jac")
    tmp = os.environ.get("TMPDIR") or os.environ.get("TEMP") or os.environ.get("TMP") or "/tmp"
    return os.path.join(os.path.abspath(tmp), f"jac-{os.getuid()}")


def socket_path() -> str:
    return os.path.join(runtime_dir(), SOCKET_NAME)


def check_private(folder: str) -> None:
    """Raise ServerError unless ``folder`` is a real folder owned by this user with mode 0700 or less."""
    import stat

    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ServerError(
            f"{folder} is not a folder private to this user (owner uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):o}); remove it, or set XDG_RUNTIME_DIR to a private folder"
        )


def make_private(folder: str) -> str:
    """Create ``folder`` with mode 0700 if it is missing, and check that it is private."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    check_private(folder)
    return folder


def _newest_source(package: str) -> int:
    """The newest modification time of the package's ``.py`` files, subpackages included."""
    newest = 0
    for folder, subfolders, files in os.walk(package):
        subfolders[:] = [s for s in subfolders if s != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    return newest


def compat_key() -> dict:
    """What a server must share with this client: jac (version, folder, newest source), Python, torch.

    Found without importing anything: torch's ``version.py`` is looked up along ``sys.path``.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # jaccli/, not jaccli/cli/
    newest = _newest_source(package)
    torch_file, torch_version, torch_stamp = "", "", 0
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), "torch", "version.py")
        try:
            torch_stamp = os.stat(candidate).st_mtime_ns
        except OSError:
            continue
        torch_file = os.path.abspath(candidate)
        try:
            with open(candidate, encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("__version__"):
                        torch_version = line.split("=", 1)[1].strip().split()[0].strip("'\"")
                        break
        except OSError:
            pass
        break
    from jaccli import __version__

    return {
        "protocol": PROTOCOL,
        "jac": __version__,
        "jaccli": package,
        "jaccli_stamp": newest,
        "python": sys.version.split()[0],
        "python_build": sys.version,
        "prefix": sys.prefix,
        "torch": torch_version,
        "torch_file": torch_file,
        "torch_stamp": torch_stamp,
    }


def describe_key(key: dict) -> str:
    return (
        f"jac {key.get('jac')} from {key.get('jaccli')}, Python {key.get('python')}, torch {key.get('torch')}"
    )


# ---------------------------------------------------------------------------------------------
# the wire: a 4-byte length and a JSON header (with the three descriptors) from the client;
# newline-separated JSON messages both ways afterwards


def send_header(sock, header: dict, fds: list[int] = ()) -> None:
    import json
    import socket
    import struct

    data = json.dumps(header).encode("utf-8")
    message = struct.pack("!I", len(data)) + data
    sent = socket.send_fds(sock, [message], list(fds)) if fds else sock.send(message)
    if sent < len(message):
        sock.sendall(message[sent:])


def connect(path: str | None = None, timeout: float | None = None):
    """A connected socket to the server, or None when there is none (a stale socket is removed)."""
    import socket

    path = path or socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except ConnectionRefusedError:  # nobody listens: a server that died; its socket is stale
        sock.close()
        _remove_stale(path)
        return None
    except (FileNotFoundError, socket.timeout, OSError):
        sock.close()
        return None
    return sock


def _remove_stale(path: str) -> None:
    try:
        check_private(os.path.dirname(path))
        os.unlink(path)
    except (OSError, ServerError):
        pass


def control(op: str, timeout: float = 10.0) -> dict | None:
    """Ask the server for ``status``, ``ping`` or ``stop``; None when no server answers."""
    import json

    path = socket_path()
    if not os.path.exists(path):
        return None
    check_private(os.path.dirname(path))
    sock = connect(path, timeout)
    if sock is None:
        return None
    try:
        send_header(sock, {"op": op, "key": compat_key()})
        line = sock.makefile("rb").readline()
    except OSError:
        return None
    finally:
        sock.close()
    return json.loads(line) if line else None


# ---------------------------------------------------------------------------------------------
# the client


def main(argv: list[str] | None = None) -> None:
    """The ``jac`` console script: through a server when one answers, else ``jaccli.cli.commands.main``."""
    args = sys.argv[1:] if argv is None else list(argv)
    mode = os.environ.get("JAC_SERVER", "").strip().lower()
    if mode not in ("off", "0", "no", "false") and not _runs_in_process(args):
        try:
            code = _through_server(args, require=mode == "require")
        except ServerError as exc:
            sys.stderr.write(f"jac: error: {exc}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write("jac: interrupted (SIGINT); nothing was written\n")
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    from jaccli.cli.commands import main as in_process

    in_process(args, prog_name="jac")


def _runs_in_process(args: list[str]) -> bool:
    """``jac serve ...`` and torchrun ranks never go through a server."""
    if any(os.environ.get(name) for name in _DISTRIBUTED):
        return True
    first = next((a for a in args if not a.startswith("-")), "")
    return first == "serve"


def _through_server(args: list[str], require: bool) -> int | None:
    """The exit code of the command run by the server, or None to run it in-process."""
    path = socket_path()
    try:
        os.stat(path)
    except OSError:
        return _none_answers(require, path)
    check_private(os.path.dirname(path))
    streams = _streams()
    if streams is None:  # a closed or unusual standard stream: in-process, where it is handled
        return _none_answers(require, path)
    sock = connect(path)
    if sock is None:
        return _none_answers(require, path)
    with sock:
        return _converse(sock, args, streams, require, path)


def _none_answers(require: bool, path: str) -> None:
    if require:
        raise ServerError(
            f"JAC_SERVER=require but no jac server answers at {path}; start one with "
            "'jac serve start', or unset JAC_SERVER"
        )
    return None


def _streams() -> list | None:
    """How this process's stdin, stdout and stderr are wrapped, so that the child wraps them alike."""
    described = []
    for fd, stream in ((0, sys.stdin), (1, sys.stdout), (2, sys.stderr)):
        if stream is None or not hasattr(stream, "encoding"):
            return None
        try:
            os.fstat(fd)
            if stream.fileno() != fd:
                return None
        except (OSError, ValueError, AttributeError):
            return None
        described.append(
            [
                stream.encoding,
                stream.errors,
                bool(getattr(stream, "line_buffering", False)),
                bool(getattr(stream, "write_through", False)),
            ]
        )
    return described


def _converse(sock, args: list[str], streams: list, require: bool, path: str) -> int | None:
    import json
    import signal

    umask = os.umask(0o022)
    os.umask(umask)
    header = {
        "op": "run",
        "key": compat_key(),
        "argv": args,
        "argv0": sys.argv[0] if sys.argv else "jac",
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "path": list(sys.path),
        "umask": umask,
        "streams": streams,
    }

    def forward(signum, frame):  # noqa: ANN001 - signal's signature
        try:
            sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started = False
    try:
        try:
            send_header(sock, header, [0, 1, 2])
        except OSError:
            return _none_answers(require, path)
        reader = sock.makefile("rb")
        while True:
            try:
                line = reader.readline()
            except OSError:
                line = b""
            if not line:
                break
            message = json.loads(line)
            if "started" in message:
                started = True
            elif "exit" in message:
                return int(message["exit"]) if started else _none_answers(require, path)
            elif "mismatch" in message:
                _say_mismatch_once(message["mismatch"], header["key"])
                return _none_answers(require, path)
            elif "fallback" in message:  # the child could not take this request; nothing ran
                return _none_answers(require, path)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not started:
        return _none_answers(require, path)
    sys.stderr.write(
        "jac: error: the jac server stopped before the command finished; nothing was written; "
        "run it again (JAC_SERVER=off runs it without a server)\n"
    )
    return 2


def _say_mismatch_once(server: dict, mine: dict) -> None:
    """One note per server process, then silence: a marker file in the private folder remembers."""
    marker = os.path.join(runtime_dir(), f"mismatch-{server.get('pid', 0)}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return
    os.close(fd)
    what = describe_key(mine)
    if describe_key(server) == what:
        what += ", whose source files changed since the server started"
    sys.stderr.write(
        f"jac: note: the running jac server (pid {server.get('pid')}: {describe_key(server)}) does not "
        f"match this jac ({what}); running without it ('jac serve stop' then "
        "'jac serve start' replaces it)\n"
    )
