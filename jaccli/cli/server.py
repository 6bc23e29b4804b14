"""``jac serve``: a warm process that forks one child per command.

The server imports torch, numpy and jac's modules once and warms torch's lazy first-use imports
(torch.func's transforms pull in torch._dynamo, the jvp decompositions and sympy) by running jac
on a function of its own; it never imports or runs user code, and never initialises CUDA. Each
connection from :mod:`jaccli.cli.client` is served by a forked child that takes the client's argv,
folder, environment, ``sys.path``, umask and standard streams, runs ``jaccli.cli.commands.main`` and
exits; the server sends the child's exit status (128+n for a signal) back to the client. A
child dies with its client (end of file on the connection) and with the server (SIGHUP at the
server's death, handled like SIGTERM: no partial files, and silent, since the client speaks).

The server checks the peer's uid (SO_PEERCRED), runs at most ``max_children`` children at once
(further clients wait), and exits after ``idle`` seconds without requests.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time

from jaccli.cli.client import SOCKET_NAME, compat_key, make_private, runtime_dir


def _log(message: str) -> None:
    try:
        sys.stderr.write(f"jac serve [{time.strftime('%H:%M:%S')}]: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# warming up


def _warm_square(x):  # the server's own function for warming up: never user code
    return (x * x).sin().sum(dim=-1)


def _warm_scalar(x):
    return (x * x).sum()


def warm() -> dict:
    """Import what every command needs and run each route once; return the torch defaults to restore."""
    import gc
    import io
    import tempfile

    import numpy  # noqa: F401
    import torch

    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    import click  # noqa: F401

    import jaccli.cli.commands as cli

    here = "jaccli.cli.server"
    folder = tempfile.mkdtemp(prefix="warm-", dir=runtime_dir())
    commands = [
        ["jvp", f"{here}:_warm_square", "-p", "randn:2,3", "-t", "ones"],
        ["vjp", f"{here}:_warm_square", "-p", "randn:2,3", "-u", "ones", "--repeat", "3"],
        ["jvp", f"{here}:_warm_square", "-p", "randn:2,3", "-t", "ones", "--repeat", "3"],
        ["jacrev", f"{here}:_warm_square", "-p", "randn:2,3", "--format", "json"],
        ["jacfwd", f"{here}:_warm_square", "-p", "randn:2,3", "-o", os.path.join(folder, "j.npz")],
        ["jacobian", f"{here}:_warm_square", "-p", "randn:3", "-o", os.path.join(folder, "j.npy")],
        ["hessian", f"{here}:_warm_scalar", "-p", "randn:3", "--format", "yaml"],
        ["hvp", f"{here}:_warm_scalar", "-p", "randn:3", "-t", "ones"],
        ["check", f"{here}:_warm_square", "-p", "randn:3"],
    ]  # not 'jac info': asking whether CUDA is there starts the driver, which a fork cannot share
    saved = sys.stdout, sys.stderr
    for argv in commands:
        sys.stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        try:
            cli.main(argv, prog_name="jac")
        except SystemExit as exc:
            if exc.code not in (0, None):
                sys.stderr.flush()
                failed = sys.stderr.buffer.getvalue().decode(errors="replace").strip()
                sys.stdout, sys.stderr = saved
                _log(f"warm-up 'jac {' '.join(argv)}' exited {exc.code}: {failed}")
        finally:
            sys.stdout, sys.stderr = saved
    import torch.func as tf

    x = torch.randn(3)
    tf.jvp(_warm_square, (x,), (x,))
    tf.vjp(_warm_square, x)[1](torch.ones(()))
    tf.jacrev(_warm_square)(x)
    tf.jacfwd(_warm_square)(x)
    tf.hessian(_warm_scalar)(x)
    tf.vmap(_warm_square)(x[None])
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)
    if torch.cuda.is_initialized():  # a fork cannot use CUDA after this
        raise RuntimeError("CUDA was initialised while warming up; the server cannot fork safely")
    torch.set_rng_state(rng)
    torch.set_num_threads(threads)
    gc.collect()
    gc.freeze()  # children share these pages instead of copying them as the collector visits
    return {"rng": rng, "threads": threads}


# ---------------------------------------------------------------------------------------------
# the server


class Server:
    def __init__(self, idle: float, max_children: int | None = None) -> None:
        self.idle = idle
        self.max_children = max_children or len(os.sched_getaffinity(0))
        self.started = time.time()
        self.pid = os.getpid()
        self.served = 0
        self.children: dict[int, tuple[socket.socket, int | None]] = {}
        self.stopping = False
        self.defaults: dict = {}

    def status(self) -> dict:
        import numpy
        import torch

        return {
            "pid": self.pid,
            "socket": self.path,
            "uptime_s": round(time.time() - self.started, 1),
            "served": self.served,
            "running": len(self.children),
            "max_children": self.max_children,
            "idle_s": self.idle,
            "numpy": numpy.__version__,
            "torch_full": torch.__version__,
            **self.key,
        }

    # -- start-up ---------------------------------------------------------------------------

    def run(self) -> int:
        folder = make_private(runtime_dir())
        self.path = os.path.join(folder, SOCKET_NAME)
        import fcntl

        self.lock = open(os.path.join(folder, "serve.lock"), "a+")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another jac server already runs for this user ({self.path})")
            return 2
        t0 = time.perf_counter()
        self.defaults = warm()
        self.key = compat_key()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = f"{self.path}.{os.getpid()}"
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        listener.bind(staging)
        os.chmod(staging, 0o600)
        listener.listen(128)
        os.replace(staging, self.path)  # clients see a socket only once it accepts
        self.inode = os.stat(self.path).st_ino
        self.listener = listener
        _log(
            f"ready in {time.perf_counter() - t0:.1f} s: pid {os.getpid()}, {self.path}, "
            f"torch {self.key['torch']}, Python {self.key['python']}, at most {self.max_children} "
            f"at once, idle timeout {self.idle:g} s"
        )
        try:
            self._loop()
        finally:
            self._unlink()
            listener.close()
        _log(f"stopped after {self.served} requests")
        return 0

    def _unlink(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        import selectors

        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)

        def stop(signum, frame):  # noqa: ANN001
            self.stopping = True
            try:
                os.write(wake_w, b"x")
            except OSError:
                pass

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, stop)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        listening = False
        last = time.monotonic()
        while True:
            if self.stopping and listening:
                selector.unregister(self.listener)
                listening = False
                self._unlink()
            if self.stopping and not self.children:
                return
            want = not self.stopping and len(self.children) < self.max_children
            if want and not listening:
                selector.register(self.listener, selectors.EVENT_READ, "accept")
                listening = True
            elif not want and listening:
                selector.unregister(self.listener)
                listening = False
            timeout = None
            if self.idle > 0 and not self.children:
                timeout = max(0.0, last + self.idle - time.monotonic())
            polling = any(pidfd is None for _, pidfd in self.children.values())
            if polling:
                timeout = 0.02 if timeout is None else min(timeout, 0.02)
            events = selector.select(timeout)
            if self.idle > 0 and not self.children and time.monotonic() - last >= self.idle:
                _log(f"idle for {self.idle:g} s: stopping")
                self.stopping = True
                continue
            if self._reap(selector):  # before accepting: a status then counts every finished request
                last = time.monotonic()
            for key, _ in events:
                if key.data == "wake":
                    os.read(wake_r, 64)
                elif key.data == "accept" and len(self.children) < self.max_children:
                    self._accept(selector)

    def _accept(self, selector) -> None:  # noqa: ANN001
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            _log(f"refused a connection from uid {uid}")
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = _Child(self, conn).serve()
            except BaseException:  # noqa: BLE001 - a child never returns into the server's loop
                pass
            finally:
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
            selector.register(pidfd, 1, ("child", pid))
        except (AttributeError, OSError):
            pidfd = None
        self.children[pid] = (conn, pidfd)

    def _reap(self, selector) -> bool:  # noqa: ANN001
        reaped = False
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            conn, pidfd = self.children.pop(pid)
            if pidfd is not None:
                selector.unregister(pidfd)
                os.close(pidfd)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            try:
                conn.sendall(b'{"exit": %d}\n' % code)
            except OSError:
                pass
            conn.close()
            self.served += 1
            reaped = True
            _log(f"request {self.served}: child {pid} exited {code}")
        return reaped


# ---------------------------------------------------------------------------------------------
# one request, in the forked child


class _Hangup(BaseException):
    pass


class _Child:
    def __init__(self, server: Server, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn

    def reply(self, message: dict) -> None:
        import json

        self.conn.sendall(json.dumps(message).encode() + b"\n")

    def serve(self) -> int:
        server = self.server
        server.listener.close()
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # the server's terminal's Ctrl-C is not this command's
        _die_with_parent(server.pid)
        header, fds = self._receive()
        op = header.get("op")
        if op in ("status", "ping"):
            self.reply(server.status())
            return 0
        if op == "stop":
            self.reply(server.status())
            os.kill(os.getppid(), signal.SIGTERM)
            return 0
        if header.get("key") != server.key:
            self.reply({"mismatch": {**server.key, "pid": os.getppid()}})
            return 0
        if len(fds) != 3:
            self.reply({"fallback": "no standard streams received"})
            return 0
        try:
            os.chdir(header["cwd"])
        except OSError as exc:
            self.reply({"fallback": f"cannot enter {header['cwd']}: {exc}"})
            return 0
        self._adopt(header, fds)
        self.reply({"started": os.getpid()})
        self._watch()
        return self._run(header["argv"])

    def _receive(self) -> tuple[dict, list[int]]:
        import json

        self.conn.settimeout(30)
        data, fds, _flags, _addr = socket.recv_fds(self.conn, 4, 3)
        while len(data) < 4:
            more = self.conn.recv(4 - len(data))
            if not more:
                raise EOFError
            data += more
        (size,) = struct.unpack("!I", data)
        body = bytearray()
        while len(body) < size:
            more = self.conn.recv(size - len(body))
            if not more:
                raise EOFError
            body += more
        self.conn.settimeout(None)
        return json.loads(body), list(fds)

    def _adopt(self, header: dict, fds: list[int]) -> None:
        """Become the client: its streams, folder, environment, import path, umask, thread count."""
        import importlib
        import io

        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(header["env"])
        os.umask(int(header["umask"]))
        sys.path[:] = header["path"]
        sys.argv = [header.get("argv0", "jac"), *header["argv"]]
        importlib.invalidate_caches()
        wrapped = []
        for fd, (encoding, errors, line_buffering, write_through) in enumerate(header["streams"]):
            raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
            buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
            wrapped.append(
                io.TextIOWrapper(
                    buffered,
                    encoding=encoding,
                    errors=errors,
                    line_buffering=line_buffering,
                    write_through=write_through,
                )
            )
        sys.stdin, sys.stdout, sys.stderr = wrapped
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = wrapped
        import numpy
        import torch

        torch.set_rng_state(self.server.defaults["rng"])  # as a fresh process starts
        numpy.random.seed()  # a fresh process draws fresh entropy; forked children would share it
        threads = _threads(header["env"]) or self.server.defaults["threads"]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def _watch(self) -> None:
        """A thread that turns the client's messages into signals, and its end into SIGTERM."""
        import json
        import threading

        def watch() -> None:
            reader = self.conn.makefile("rb")
            while True:
                try:
                    line = reader.readline()
                except OSError:
                    line = b""
                if not line:  # the client is gone: stop as SIGTERM stops, then for good
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(10)
                    os._exit(143)
                try:
                    signum = int(json.loads(line)["signal"])
                except (ValueError, KeyError, TypeError):
                    continue
                if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    os.kill(os.getpid(), signal.SIGTERM if signum == signal.SIGHUP else signum)

        threading.Thread(target=watch, daemon=True).start()

    def _run(self, argv: list[str]) -> int:
        import atexit

        from jaccli.cli import commands as cli

        def server_died(signum, frame):  # noqa: ANN001 - the client reports it, in one line
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
            except OSError:
                pass
            raise cli.Terminated()

        signal.signal(signal.SIGHUP, server_died)
        code = 0
        try:
            cli.main(argv, prog_name="jac")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        return code


def _threads(env: dict) -> int | None:
    try:
        n = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def _die_with_parent(parent: int) -> None:
    """SIGHUP to this child when the server dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGHUP, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        os.kill(os.getpid(), signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """``python -c 'import jaccli.cli.server as s; s.main()' [--idle SECONDS] [--max N]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    idle, most = 900.0, None
    while args:
        flag = args.pop(0)
        if flag == "--idle":
            idle = float(args.pop(0))
        elif flag == "--max":
            most = int(args.pop(0))
    return Server(idle, most).run()
