"""``jac serve``, ``jac serve start|stop|status``: the click side of :mod:`jaccli.cli.server`.

Starting waits until the new server answers; stopping waits until it is gone. Only click and
:mod:`jaccli.cli.client` are imported here: the server's imports happen in the server.
"""

from __future__ import annotations

import os
import re
import sys
import time

import click

from jaccli.cli.options import report_format_option
from jaccli.errors import InputError

_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``900``, ``90s``, ``15m``, ``1.5h``; 0 means never."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h|)\s*", text)
    if not match:
        raise InputError(f"--idle {text!r}: give a duration such as 900, 90s, 15m or 1h (0: never)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "never"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return " ".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


_IDLE = click.option(
    "--idle",
    default="15m",
    show_default=True,
    metavar="DURATION",
    help="Stop after this long without requests: 900, 90s, 15m, 1h; 0 never stops.",
)
_MAX = click.option(
    "--max-children",
    type=click.IntRange(min=1),
    help="Commands run at once; more wait their turn [default: the CPU count].",
)


@click.group(invoke_without_command=True)
@_IDLE
@_MAX
@click.pass_context
def serve(ctx: click.Context, idle: str, max_children: int | None) -> None:
    """A warm server for this user: every jac command runs through it, in tens of milliseconds.

    'jac serve' alone runs the server in the foreground (for a supervisor; logs on stderr).
    While it runs, every jac command (of the same jac, Python and torch) is forked from it
    instead of importing torch afresh; results, output and exit codes are unchanged.
    JAC_SERVER=off runs without it; JAC_SERVER=require fails (exit 2) when none answers.

    \b
    Examples:
      jac serve start               # in the background; returns when it is ready
      jac serve status
      jac serve stop
      jac serve --idle 0            # in the foreground, never idles out
    """
    if ctx.invoked_subcommand is not None:
        return
    from jaccli.cli.server import Server

    code = Server(parse_duration(idle), max_children).run()
    if code:
        raise InputError("another jac server already runs for this user; 'jac serve stop' stops it")


@serve.command()
@_IDLE
@_MAX
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=120,
    show_default=True,
    help="Seconds to wait for the server to be ready.",
)
def start(idle: str, max_children: int | None, timeout: float) -> None:
    """Start a server in the background and return once it answers.

    Its log goes to serve.log next to its socket ('jac serve status' names the folder).

    \b
    Examples:
      jac serve start
      jac serve start --idle 1h
    """
    import subprocess

    from jaccli.cli.client import control, make_private, runtime_dir

    seconds = parse_duration(idle)
    folder = make_private(runtime_dir())
    running = control("ping")
    if running is not None:
        click.echo(f"jac serve: already running (pid {running['pid']}, {running['socket']})", err=True)
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.pop("JAC_SERVER", None)
    if env.get("PYTHONPATH"):  # the server runs in its private folder: relative entries would move
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep))
    command = [
        sys.executable,
        "-c",
        "import sys, jaccli.cli.server as s; sys.exit(s.main())",
        "--idle",
        str(seconds),
    ]
    if max_children:
        command += ["--max", str(max_children)]
    log_path = os.path.join(folder, "serve.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InputError(f"the jac server exited with code {process.returncode}: {_last_line(log_path)}")
        answer = control("ping", timeout=5)
        if answer is not None and answer.get("pid") == process.pid:
            click.echo(
                f"jac serve: ready (pid {process.pid}, {answer['socket']}, "
                f"idle timeout {_duration(seconds)})",
                err=True,
            )
            return
        time.sleep(0.1)
    process.terminate()
    raise InputError(f"the jac server was not ready after {timeout:g} s (see {log_path}); try --timeout")


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [line.strip() for line in fh if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


@serve.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for running commands to finish.",
)
def stop(timeout: float) -> None:
    """Stop the server once its running commands finish.

    \b
    Examples:
      jac serve stop
    """
    from jaccli.cli.client import control

    answer = control("stop")
    if answer is None:
        click.echo("jac serve: no server running", err=True)
        return
    pid = answer["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise InputError(f"the jac server (pid {pid}) still runs after {timeout:g} s; kill {pid} ends it")
    click.echo(f"jac serve: stopped (pid {pid}, {answer['served']} requests served)", err=True)


@serve.command()
@report_format_option
def status(fmt: str) -> None:
    """Whether a server runs: pid, uptime, requests served, versions.

    \b
    Examples:
      jac serve status
      jac serve status --format json
    """
    from jaccli.cli.client import compat_key, control, describe_key

    answer = control("status")
    if answer is None:
        if fmt == "json":
            click.echo('{"running": false}')
        else:
            click.echo("no jac server running ('jac serve start' starts one)")
        return
    answer = {"running": True, **answer}
    if fmt == "json":
        import json

        click.echo(json.dumps(answer))
        return
    mine = compat_key()
    same = all(answer.get(k) == v for k, v in mine.items())
    click.echo(f"running: pid {answer['pid']}, socket {answer['socket']}")
    click.echo(
        f"uptime {_duration(answer['uptime_s']) if answer['uptime_s'] >= 1 else '0s'}, "
        f"{answer['served']} requests served, {answer['running']} running now (at most "
        f"{answer['max_children']}), idle timeout {_duration(answer['idle_s'])}"
    )
    click.echo(f"versions: {describe_key(answer)}, numpy {answer['numpy']}")
    click.echo("used by this jac: " + ("yes" if same else f"no, this is {describe_key(mine)}"))
