"""`jac serve`: one-shot commands through a warm server against the same commands without one.

Per call wall time of `jac` (a real process each time) with a server (JAC_SERVER=require) and
without (JAC_SERVER=off), alternating call by call with `python -c "import torch"`, on the
quickstart jvp, rosenbrock(1000) vjp, a 64x512 MLP jacrev and `jac check`. Target: with the
server, at most 0.1 x import torch. Then the server's resident memory (VmRSS) before and after
1,000 requests (a loop in one client process, so that the requests, not Python's start-up, are
what is counted), and its children left over (none expected).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

FUNCS = """
import torch
from torch import nn

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 64)).eval()


def mlp(x):
    return net(x)


def rosenbrock(x):
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return len(fh.read().split())
    except OSError:
        return -1


def section_serve(quick: bool) -> list[dict]:
    calls = 5 if quick else 20
    requests = 200 if quick else 1000
    jac = [sys.executable, "-m", "jaccli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Path(tmp, "runtime")
        runtime.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        env.pop("JAC_SERVER", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        Path(tmp, "bench_serve_funcs.py").write_text(FUNCS)
        rng = np.random.default_rng(0)
        np.save(Path(tmp, "x1000.npy"), rng.standard_normal(1000).astype(np.float32))
        np.save(Path(tmp, "x64.npy"), rng.standard_normal(64).astype(np.float32))
        examples = ROOT / "examples"
        cases = {
            "quickstart jvp": [
                "jvp",
                f"{examples}/quickstart.py:f",
                "-p",
                f"{examples}/x.npy",
                "-t",
                f"{examples}/v.npy",
            ],
            "rosenbrock(1000) vjp": ["vjp", "bench_serve_funcs:rosenbrock", "-p", "x1000.npy", "-o", "g.npz"],
            "64x512 MLP jacrev": ["jacrev", "bench_serve_funcs:mlp", "-p", "x64.npy", "-o", "J.npy"],
            "quickstart check": ["check", f"{examples}/quickstart.py:f", "-p", f"{examples}/x.npy"],
        }
        start = subprocess.run(
            [*jac, "serve", "start", "--idle", "10m", "--timeout", "300"],
            env=env,
            capture_output=True,
            cwd=tmp,
        )
        if start.returncode != 0:
            raise RuntimeError(f"jac serve start failed: {start.stderr.decode()[-500:]}")
        status = subprocess.run([*jac, "serve", "status", "--format", "json"], env=env, capture_output=True)
        import json

        pid = json.loads(status.stdout)["pid"]
        try:
            times: dict[str, list[float]] = {"import torch": []}
            for name in cases:
                times[f"{name} served"], times[f"{name} alone"] = [], []
            for i in range(calls):
                order = [("import torch", [sys.executable, "-c", "import torch"], None)]
                for name, args in cases.items():
                    order.append((f"{name} served", [*jac, *args], "require"))
                    order.append((f"{name} alone", [*jac, *args], "off"))
                for label, cmd, mode in order if i % 2 == 0 else reversed(order):
                    run_env = dict(env) if mode is None else {**env, "JAC_SERVER": mode}
                    t0 = time.perf_counter()
                    proc = subprocess.run(
                        cmd, env=run_env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                    )
                    times[label].append(time.perf_counter() - t0)
                    if proc.returncode not in (0, 1):
                        raise RuntimeError(f"{label}: {proc.stderr.decode()[-500:]}")
            anchor = statistics.median(times["import torch"])
            for name in cases:
                served = statistics.median(times[f"{name} served"])
                alone = statistics.median(times[f"{name} alone"])
                rows.append(
                    {
                        "case": name,
                        "calls": calls,
                        "served median": f"{served * 1e3:.0f} ms",
                        "alone median": f"{alone * 1e3:.0f} ms",
                        "import torch median": f"{anchor * 1e3:.0f} ms",
                        "served / import torch": served / anchor,
                        "alone / import torch": alone / anchor,
                        "target": "<= 0.1",
                    }
                )
            loop = (
                "import sys, jaccli.cli.client as c\n"
                f"args = {cases['quickstart jvp'] + ['--no-timings']!r}\n"
                f"for _ in range({requests}):\n"
                "    assert c._through_server(args, True) == 0\n"
            )
            rss0 = _rss_kib(pid)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", loop], env=env, cwd=tmp, stdout=subprocess.DEVNULL, check=True
            )
            elapsed = time.perf_counter() - t0
            time.sleep(0.5)
            rss1 = _rss_kib(pid)
            rows.append(
                {
                    "case": f"server RSS over {requests} quickstart jvp requests",
                    "calls": requests,
                    "served median": f"{elapsed / requests * 1e3:.0f} ms (mean, no Python start-up)",
                    "alone median": "",
                    "import torch median": "",
                    "served / import torch": f"RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB",
                    "alone / import torch": f"children left: {_children(pid)}",
                    "target": "no growth",
                }
            )
        finally:
            subprocess.run([*jac, "serve", "stop"], env=env, capture_output=True)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rows
