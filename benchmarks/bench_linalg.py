"""Sections `directions` and `spectrum` (issue 14): many directions at once, and spectra from
products.

- directions: `jac jvp --directions 64` on the 64 -> 512 -> 64 MLP against 64 separate `jac jvp`
  runs (target: >= 20x; the separate runs are a sample of a few, times 64), and its steady state
  against torch.func.vmap(jvp) called directly (target: <= 1.2x), timed alternately.
- spectrum: `jac spectrum` on a stencil with n = 1,000,000 (never formed: dense J would be 8 TB
  in float64): top 6 singular values, residuals (target < 1e-6 relative) and products (target:
  a few hundred); on n = 2,048 the values against numpy.linalg.svd and numpy.linalg.eigvals of the
  dense Jacobian (target: 1e-8 relative).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MLP = f"{HERE / 'bench_functions.py'}:mlp_64_512()"


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _process(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jaccli", *args], capture_output=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    return elapsed


def section_directions(quick: bool) -> list[dict]:
    import bench_functions
    import torch

    from jaccli import Request, run

    k, samples, rounds, repeat = 64, (2 if quick else 4), (2 if quick else 3), (20 if quick else 50)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        x, t = rng.standard_normal(64).astype(np.float32), rng.standard_normal((k, 64)).astype(np.float32)
        np.save(f"{tmp}/x.npy", x)
        np.save(f"{tmp}/t.npy", t)
        for i in range(samples):
            np.save(f"{tmp}/t{i}.npy", t[i])
        single, many = [], []
        for _ in range(rounds):
            many.append(
                _process("jvp", MLP, "-p", f"{tmp}/x.npy", "-t", f"{tmp}/t.npy", "--directions", "64", "-q")
            )
            for i in range(samples):
                single.append(_process("jvp", MLP, "-p", f"{tmp}/x.npy", "-t", f"{tmp}/t{i}.npy", "-q"))
        rows.append(
            {
                "case": "64 directions, one-shot processes",
                "jac --directions 64": _fmt(statistics.median(many)),
                "one jac jvp": _fmt(statistics.median(single)),
                "64 runs / one run (median)": 64 * statistics.median(single) / statistics.median(many),
                "target": ">= 20",
            }
        )
        # steady state: jac's own code path against torch.func.vmap(jvp) called directly
        model = bench_functions.mlp_64_512()
        xt, tt = torch.tensor(x), torch.tensor(t)
        direct = torch.func.vmap(lambda v: torch.func.jvp(model, (xt,), (v,))[1])
        ours, theirs, routes = [], [], set()
        for r in range(rounds * 2):
            order = ("jac", "direct") if r % 2 == 0 else ("direct", "jac")
            for who in order:
                if who == "jac":
                    outcome = run(
                        Request(
                            "jvp", MLP, primals=[x], tangents=[t], n_directions=k, repeat=repeat, warmup=3
                        )
                    )
                    ours.append(outcome.timings.get("steady-state compute").stats()["median"])
                    routes.add(outcome.timings.footer["engine"])
                else:
                    for _ in range(3):
                        direct(tt)
                    times = []
                    for _ in range(repeat):
                        start = time.perf_counter()
                        direct(tt)
                        times.append(time.perf_counter() - start)
                    theirs.append(statistics.median(times))
        rows.append(
            {
                "case": f"64 directions, steady state ({', '.join(sorted(routes))})",
                "jac --directions 64": _fmt(statistics.median(ours)),
                "one jac jvp": "",
                "64 runs / one run (median)": "",
                "target": "",
            }
        )
        rows.append(
            {
                "case": "torch.func.vmap(jvp) direct, steady state",
                "jac --directions 64": _fmt(statistics.median(theirs)),
                "one jac jvp": "",
                "64 runs / one run (median)": (
                    f"jac / direct {statistics.median(ours) / statistics.median(theirs):.3f}"
                ),
                "target": "<= 1.2",
            }
        )
    return rows


def section_spectrum(quick: bool) -> list[dict]:
    import bench_functions
    import torch

    from jaccli import Request
    from jaccli.linalg.spectrum import run_spectrum

    rows = []
    rng = np.random.default_rng(0)
    sizes = (2048,) if quick else (2048, 1_000_000)
    for n in sizes:
        x = 0.1 * rng.standard_normal(n)
        for eig in (False, True):
            start = time.perf_counter()
            outcome = run_spectrum(
                Request("spectrum", bench_functions.banded, primals=[x], top=6, eig=eig, repeat=0)
            )
            elapsed = time.perf_counter() - start
            (s,) = outcome.spectra
            row = {
                "n": f"{n:,}",
                "what": "eigenvalues (--eig)" if eig else "singular values",
                "jac spectrum": _fmt(elapsed),
                "products (values / residuals / condition)": " / ".join(
                    str(s.products.get(key, 0)) for key in ("values", "residuals", "condition")
                ),
                "max residual": f"{s.residuals.max():.1e}",
                "top value": f"{np.abs(s.values[0]):.6f}",
                "max rel. error vs numpy (dense)": "not formed (8 TB)",
                "numpy time": "",
            }
            if n <= 4096:
                dense = torch.func.jacfwd(bench_functions.banded)(torch.tensor(x)).numpy()
                start = time.perf_counter()
                if eig:
                    want = np.linalg.eigvals(dense)
                    want = want[np.argsort(-np.abs(want))][:6]
                else:
                    want = np.linalg.svd(dense, compute_uv=False)[:6]
                row["numpy time"] = _fmt(time.perf_counter() - start)
                error = np.max(np.abs(s.values - want) / np.abs(want))
                row["max rel. error vs numpy (dense)"] = f"{error:.1e}"
            rows.append(row)
    return rows
