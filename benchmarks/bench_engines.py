"""Latency and engine benchmarks: `jac --help`, one-shot runs, and steady state per call.

Each section alternates its contenders round after round and reports min and median ratios
over rounds (see run.py). Anchors are plain torch, timed the same way as jac's own numbers.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _jac_command() -> list[str]:
    """The installed `jac` next to this interpreter (what users run), else python -m jaccli."""
    exe = Path(sys.executable).with_name("jac")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jaccli"]


def _wall(cmd: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
    return elapsed


def _alternate(
    contenders: dict[str, list[str]], rounds: int, cwd: str | None = None
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(_wall(contenders[name], cwd))
    return times


def _imports(args: list[str]) -> list[str]:
    code = "\n".join(
        [
            "import sys",
            "from jaccli.cli.commands import main",
            "try:",
            f"    main({args!r})",
            "except SystemExit:",
            "    pass",
            "loaded = [m for m in ('torch', 'numpy') if m in sys.modules]",
            "print('MODULES:' + ','.join(loaded), file=sys.stderr)",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    found = [line for line in proc.stderr.splitlines() if line.startswith("MODULES:")]
    return [m for m in found[-1][len("MODULES:") :].split(",") if m]


def section_help(quick: bool) -> list[dict]:
    """Target 1: --help, --version and usage errors <= 150 ms wall, importing neither torch nor
    numpy. Python's own start-up (`python -c pass`) is measured beside it."""
    rounds = 7 if quick else 21
    jac = _jac_command()
    contenders = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "jac --help": [*jac, "--help"],
        "jac --version": [*jac, "--version"],
        "jac jvp --help": [*jac, "jvp", "--help"],
        "jac jvp (usage error)": [*jac, "jvp"],
    }
    times = _alternate(contenders, rounds)
    rows = []
    for name, ts in times.items():
        args = contenders[name][len(jac) :] if name.startswith("jac") else None
        rows.append(
            {
                "command": name,
                "min": f"{min(ts) * 1e3:.1f} ms",
                "median": f"{statistics.median(ts) * 1e3:.1f} ms",
                "target": "<= 150 ms" if args is not None else "",
                "imports torch/numpy": ", ".join(_imports(args)) or "no" if args is not None else "",
            }
        )
    return rows


ONESHOT_MODULE = """
import torch
from torch import nn

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8)).double()


def mlp(x):
    return net(x)


def elementwise(x):
    return torch.sin(x) * x + torch.exp(-(x ** 2))


def scalar(x):
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()
"""

# The hand-written one-shot script a user would write: load, torch.func, save.
SCRIPT = """
import sys
import numpy as np
import torch
import oneshot_funcs as m
f = getattr(m, sys.argv[2])
x = torch.from_numpy(np.load("x.npy", allow_pickle=False))
if sys.argv[1] == "jvp":
    out = torch.func.jvp(f, (x,), (torch.from_numpy(np.load("v.npy")),))[1]
elif sys.argv[1] == "vjp":
    y, pull = torch.func.vjp(f, x)
    out = pull(torch.ones_like(y))[0]
else:
    out = torch.func.jacrev(f)(x)
np.save(sys.argv[3], out.detach().numpy())
"""


def section_oneshot(quick: bool) -> list[dict]:
    """Target 2: one-shot `jac jvp|vjp|jacrev` end to end <= 1.15 x `python -c "import torch"`,
    on an elementwise function, an MLP and a scalar function, with torch.func's numbers."""
    import numpy as np

    rounds = 3 if quick else 5
    cases = [(c, f) for f in ("elementwise", "mlp", "scalar") for c in ("jvp", "vjp", "jacrev")]
    if quick:
        cases = [("jvp", "elementwise"), ("vjp", "mlp"), ("jacrev", "scalar")]
    jac = _jac_command()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "oneshot_funcs.py").write_text(ONESHOT_MODULE)
        Path(tmp, "script.py").write_text(SCRIPT)
        rng = np.random.default_rng(0)
        np.save(Path(tmp, "x.npy"), rng.standard_normal(16))
        np.save(Path(tmp, "v.npy"), rng.standard_normal(16))
        contenders = {"import torch": [sys.executable, "-c", "import torch"]}
        for command, func in cases:
            extra = {"jvp": ["-t", "v.npy"], "vjp": ["-u", "ones"]}.get(command, [])
            out = f"{command}-{func}.npy"
            key = {"jvp": "jvp", "vjp": "vjp.0", "jacrev": "jacobian"}[command]
            contenders[f"jac {command} {func}"] = [
                *jac,
                command,
                f"oneshot_funcs:{func}",
                "-p",
                "x.npy",
                *extra,
                "-o",
                out,
                "--select",
                key,
            ]
            contenders[f"script {command} {func}"] = [
                sys.executable,
                "script.py",
                command,
                func,
                f"ref-{command}-{func}.npy",
            ]
        times = _alternate(contenders, rounds, cwd=tmp)
        anchor = times["import torch"]
        for command, func in cases:
            mine, script = times[f"jac {command} {func}"], times[f"script {command} {func}"]
            ratios = [a / b for a, b in zip(mine, anchor)]
            got = np.load(Path(tmp, f"{command}-{func}.npy"))
            ref = np.load(Path(tmp, f"ref-{command}-{func}.npy"))
            err = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)))
            rows.append(
                {
                    "case": f"{command} {func}",
                    "jac median": f"{statistics.median(mine):.3f} s",
                    "script median": f"{statistics.median(script):.3f} s",
                    "import torch median": f"{statistics.median(anchor):.3f} s",
                    "jac / import torch (min)": min(ratios),
                    "jac / import torch (median)": statistics.median(ratios),
                    "target": "<= 1.15",
                    "max rel. diff vs torch.func": f"{err:.1e}",
                }
            )
    return rows


def _anchors(command: str, f, x):
    """Plain torch ways to compute the same thing: {name: zero-argument callable}."""
    import torch
    import torch.autograd.forward_ad as fwad
    import torch.autograd.functional as af
    import torch.func as tf

    g = torch.Generator().manual_seed(1)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    y = f(x)
    u = torch.randn(y.shape, generator=g, dtype=y.dtype)

    def leaf():
        return x.detach().requires_grad_()

    if command == "jvp":

        def forward_ad():
            with fwad.dual_level():
                return fwad.unpack_dual(f(fwad.make_dual(x, v))).tangent

        def double_backward():
            xr = leaf()
            with torch.enable_grad():
                out = f(xr)
                dummy = torch.zeros_like(out, requires_grad=True)
                (g_,) = torch.autograd.grad(out, xr, dummy, create_graph=True)
                return torch.autograd.grad(g_, dummy, v)[0]

        return {
            "torch.func.jvp": lambda: tf.jvp(f, (x,), (v,)),
            "autograd.functional.jvp": lambda: af.jvp(f, x, v),
            "forward-mode AD": forward_ad,
            "double backward": double_backward,
        }, {"tangents": [v]}
    if command == "vjp":

        def plain():
            xr = leaf()
            with torch.enable_grad():
                return torch.autograd.grad(f(xr), xr, u)[0]

        return {
            "torch.func.vjp": lambda: tf.vjp(f, x)[1](u),
            "autograd.functional.vjp": lambda: af.vjp(f, x, u),
            "autograd.grad": plain,
        }, {"cotangents": [u]}

    def rows():
        xr = leaf()
        with torch.enable_grad():
            out = f(xr).reshape(-1)
            return [torch.autograd.grad(out[k], xr, retain_graph=True)[0] for k in range(out.numel())]

    return {
        "torch.func.jacrev": lambda: tf.jacrev(f)(x),
        "torch.func.jacfwd": lambda: tf.jacfwd(f)(x),
        "autograd.functional.jacobian": lambda: af.jacobian(f, x),
        "autograd.functional.jacobian(vectorize)": lambda: af.jacobian(f, x, vectorize=True),
        "autograd.grad rows": rows,
    }, {}


def steady_cases(quick: bool) -> list[tuple[str, str, object, object]]:
    import torch

    sys.path.insert(0, str(HERE))
    import bench_functions as bf

    torch.manual_seed(0)
    mlp = bf.mlp([512, 512, 512])
    zero_d = bf.zero_d
    cases = []
    for command in ("jvp", "vjp", "jacobian"):
        cases += [
            (command, "0-d", zero_d, torch.randn(())),
            (command, "rosenbrock 1000", bf.rosenbrock, torch.randn(1000)),
            (
                command,
                "mlp 64x512" if command != "jacobian" else "mlp 512",
                mlp,
                torch.randn(64, 512) if command != "jacobian" else torch.randn(512),
            ),
            (
                command,
                "elementwise 1e6" if command != "jacobian" else "elementwise 2048",
                bf.elementwise,
                torch.randn(1_000_000) if command != "jacobian" else torch.randn(2048),
            ),
        ]
    if quick:
        cases = [c for c in cases if c[1] in ("0-d", "rosenbrock 1000", "mlp 64x512", "mlp 512")]
    return cases


def section_steady(quick: bool) -> list[dict]:
    """Target 3: steady state under --repeat, jac's compute median <= 1.05 x the fastest of
    torch.func, torch.autograd.functional and plain autograd / forward-mode AD."""
    from jaccli import Request, run
    from jaccli.report.timing import Timings

    rounds, repeat = (3, 20) if quick else (9, 60)
    rows = []
    for command, name, f, x in steady_cases(quick):
        anchors, options = _anchors(command, f, x)
        jac_times: list[float] = []
        best: dict[str, list[float]] = {k: [] for k in anchors}
        picks: dict[str, int] = {}
        slow = name.startswith(("elementwise 1e6", "mlp 64x512", "elementwise 2048", "mlp 512"))
        reps = max(5, repeat // 2) if slow else repeat  # slow: each run takes 2-40 ms
        for r in range(rounds):
            timings = Timings()
            medians = {}
            order = list(anchors) + ["jac"]
            for k in order if r % 2 == 0 else reversed(order):
                if k == "jac":
                    outcome = run(Request(command, f, primals=[x], repeat=reps, warmup=2, **options))
                    jac_median = outcome.timings.get("steady-state compute").stats()["median"]
                    engine = outcome.timings.footer["engine"]
                    picks[engine] = picks.get(engine, 0) + 1
                else:
                    medians[k] = timings.series(k, anchors[k], reps, 2).stats()["median"]
            for k, m in medians.items():
                best[k].append(m)
            jac_times.append(jac_median)
        # The fastest anchor is the one with the lowest median over all rounds; each round's
        # ratio pairs jac with it. (The per-round minimum over several anchors of equal speed
        # would be biased low by the noise alone.)
        fastest = min(best, key=lambda k: statistics.median(best[k]))
        per_round = [j / a for j, a in zip(jac_times, best[fastest])]
        rows.append(
            {
                "command": command,
                "function": name,
                "jac median": _fmt(statistics.median(jac_times)),
                "fastest anchor": f"{fastest} {_fmt(statistics.median(best[fastest]))}",
                "jac ran": ", ".join(f"{k} {v}/{rounds}" for k, v in picks.items()),
                "jac / fastest (min)": min(per_round),
                "jac / fastest (median)": statistics.median(per_round),
                "target": "<= 1.05",
            }
        )
        print(f"  steady {command} {name}: {statistics.median(per_round):.3f}", file=sys.stderr, flush=True)
    return rows


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.3f} ms"


if __name__ == "__main__":
    section = sys.argv[1] if len(sys.argv) > 1 else "steady"
    quick = "--quick" in sys.argv
    for row in {"help": section_help, "oneshot": section_oneshot, "steady": section_steady}[section](quick):
        print(row)
    print(os.getloadavg())
