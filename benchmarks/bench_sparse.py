"""``--sparse`` against dense torch.func, a hand-seeded torch anchor and asdex (JAX).

Three tables (``python benchmarks/run.py sparse``):

- colours: jac's colourings against asdex's on four functions (the 2-D periodic stencil
  f(u) = Lap(u) + u^2 - u^3, a 1-D Brusselator, an arrowhead, the Hessian of a chain energy);
- steady state at n = 4,096: jac's ``--sparse --repeat`` (the traced graph,
  jaccli.sparse.kernel) and ``--sparse --compile --repeat`` against dense ``torch.func.jacrev``,
  nine JVPs seeded by hand under eager ``vmap`` (the eager torch floor), and asdex's sparse
  Jacobian under ``jax.jit``, timed alternately round after round (median and min);
- one-shot at n = 65,536: ``jac jacobian --sparse -o J.npz`` end to end (detection included)
  against ``python -c "import torch"``, and asdex's detect + colour + jit + one call in a fresh
  process.

asdex and JAX come with ``pip install 'jaccli[bench]'``; without them their columns say so.
The functions below are also FUNCs for jac (``benchmarks/bench_sparse.py:stencil``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# --- the functions, in torch and (below) in JAX --------------------------------------------------


def stencil(u):
    n = int(round(u.numel() ** 0.5))
    g = u.reshape(n, n)
    lap = g.roll(1, 0) + g.roll(-1, 0) + g.roll(1, 1) + g.roll(-1, 1) - 4 * g
    return (lap + g**2 - g**3).reshape(-1)


def brusselator(x):  # 1-D, periodic, u and v interleaved in halves
    u, v = x.chunk(2)
    alpha = 0.02
    du = 1 + u * u * v - 4.4 * u + alpha * (u.roll(1) - 2 * u + u.roll(-1))
    dv = 3.4 * u - u * u * v + alpha * (v.roll(1) - 2 * v + v.roll(-1))
    return torch.cat([du, dv])


def arrowhead(x):
    head = x.sum().reshape(1) * x[:1]
    return torch.cat([head, x[1:] * x[:1] + x[1:] ** 2])


def chain_energy(x):
    return ((x[1:] - x[:-1]) ** 2).sum() + (x**4).sum() + 0.5 * (x[2:] * x[:-2]).sum()


def _jax_functions():
    import jax.numpy as jnp

    def j_stencil(u):
        n = int(round(u.size**0.5))
        g = u.reshape(n, n)
        lap = jnp.roll(g, 1, 0) + jnp.roll(g, -1, 0) + jnp.roll(g, 1, 1) + jnp.roll(g, -1, 1) - 4 * g
        return (lap + g**2 - g**3).reshape(-1)

    def j_brusselator(x):
        u, v = jnp.split(x, 2)
        alpha = 0.02
        du = 1 + u * u * v - 4.4 * u + alpha * (jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1))
        dv = 3.4 * u - u * u * v + alpha * (jnp.roll(v, 1) - 2 * v + jnp.roll(v, -1))
        return jnp.concatenate([du, dv])

    def j_arrowhead(x):
        head = x.sum().reshape(1) * x[:1]
        return jnp.concatenate([head, x[1:] * x[:1] + x[1:] ** 2])

    def j_chain(x):
        return ((x[1:] - x[:-1]) ** 2).sum() + (x**4).sum() + 0.5 * (x[2:] * x[:-2]).sum()

    return {"stencil": j_stencil, "brusselator": j_brusselator, "arrowhead": j_arrowhead, "chain": j_chain}


def _asdex():
    try:
        import asdex  # noqa: F401
        import jax  # noqa: F401

        return True
    except ImportError:
        return False


CASES = [  # name, torch function, n, kind
    ("stencil", stencil, 4096, "jacobian"),
    ("brusselator", brusselator, 4096, "jacobian"),
    ("arrowhead", arrowhead, 4096, "jacobian"),
    ("chain", chain_energy, 4096, "hessian"),
]


def section_colours(quick: bool) -> list[dict]:
    from jaccli.sparse import colouring
    from jaccli.sparse.detect import detect

    have = _asdex()
    jfns = _jax_functions() if have else {}
    rows = []
    for name, fn, n, kind in CASES:
        x = torch.randn(n, dtype=torch.float64)
        found = detect(fn, [x], (0,), hessian=kind == "hessian")
        if kind == "hessian":
            jac_colours = f"{colouring.star_colouring(found.hessian).max() + 1} (star)"
        else:
            fwd = colouring.column_colouring(found.matrix).max() + 1
            rev = colouring.row_colouring(found.matrix).max() + 1
            jac_colours = f"{min(fwd, rev)} ({'rows' if rev < fwd else 'columns'}; {fwd} col / {rev} row)"
        asdex_colours = "asdex not installed"
        if have:
            import warnings

            import asdex
            import jax.numpy as jnp

            warnings.filterwarnings("ignore", category=asdex.DenseColoringWarning)
            xj = jnp.ones(n)
            if kind == "hessian":
                cp = asdex.hessian_coloring(jfns[name], xj)
            else:
                cp = asdex.jacobian_coloring(jfns[name], xj)
            asdex_colours = f"{cp.num_colors} ({cp.mode})"
        nnz = int((found.hessian if kind == "hessian" else found.matrix).nnz)
        rows.append(
            {
                "function": f"{name} ({kind}, n={n})",
                "nnz": nnz,
                "jac colours": jac_colours,
                "asdex colours": asdex_colours,
            }
        )
    return rows


def _times(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def section_steady(quick: bool) -> list[dict]:
    from jaccli import Request, run

    n = 4096
    rounds = 3 if quick else 7
    x = torch.randn(n)
    have = _asdex()
    times: dict[str, list[float]] = {"jac": [], "compiled": [], "jacrev": [], "anchor": [], "asdex": []}
    compiled_how, one_thread = [], {"jac": 0, "compiled": 0}  # rounds whose kernel chose one thread
    # the hand-seeded anchor: the stencil's 9 colours from jac's own colouring, one vmapped jvp
    from jaccli.sparse import colouring
    from jaccli.sparse.detect import detect

    colours = torch.from_numpy(colouring.column_colouring(detect(stencil, [x], (0,)).matrix))
    seeds = (colours.unsqueeze(0) == torch.arange(int(colours.max()) + 1).unsqueeze(1)).to(x.dtype)

    def anchor():
        return torch.func.vmap(lambda v: torch.func.jvp(stencil, (x,), (v,))[1])(seeds)

    asdex_call = None
    if have:
        import asdex
        import jax
        import jax.numpy as jnp

        xj = jnp.asarray(x.numpy())
        jitted = jax.jit(asdex.jacobian(_jax_functions()["stencil"], xj))
        jitted(xj).data.block_until_ready()

        def asdex_call():
            jitted(xj).data.block_until_ready()

    for _ in range(rounds):
        outcome = run(Request("jacobian", stencil, primals=[x], sparse=True, repeat=20, warmup=2))
        times["jac"].extend(outcome.timings.get("steady-state compute").times)
        compiled = run(
            Request("jacobian", stencil, primals=[x], sparse=True, compile=True, repeat=20, warmup=2)
        )
        times["compiled"].extend(compiled.timings.get("steady-state compute").times)
        compiled_how.append("compiled by TorchInductor" in compiled.timings.footer["engine"])
        one_thread["jac"] += "on one thread" in outcome.timings.footer["engine"]
        one_thread["compiled"] += "on one thread" in compiled.timings.footer["engine"]
        times["jacrev"].extend(_times(lambda: torch.func.jacrev(stencil)(x), 1 if quick else 2))
        times["anchor"].extend(_times(anchor, 20))
        if asdex_call is not None:
            times["asdex"].extend(_times(asdex_call, 50))
    rows = []
    for stat, pick in (("median", statistics.median), ("min", min)):
        t = {k: pick(v) for k, v in times.items() if v}
        row = {
            "n": n,
            "statistic": stat,
            "jac --sparse": f"{t['jac'] * 1e6:.0f} us",
            "jac --sparse --compile": f"{t['compiled'] * 1e6:.0f} us"
            + ("" if all(compiled_how) else " (Inductor failed: traced graph, uncompiled)"),
            "rounds on one thread (jac, --compile)": f"{one_thread['jac']}/{rounds}, "
            f"{one_thread['compiled']}/{rounds}",
            "dense jacrev": f"{t['jacrev'] * 1e3:.1f} ms",
            "jacrev / jac": f"{t['jacrev'] / t['jac']:.0f}x",
            "hand-seeded vmap(jvp)": f"{t['anchor'] * 1e3:.3f} ms",
            "jac / hand-seeded": f"{t['jac'] / t['anchor']:.2f}x",
        }
        if "asdex" in t:
            row["asdex jit"] = f"{t['asdex'] * 1e6:.0f} us"
            row["jac / asdex"] = f"{t['jac'] / t['asdex']:.1f}x"
            row["jac --compile / asdex"] = f"{t['compiled'] / t['asdex']:.2f}x"
        else:
            row["asdex jit"] = "asdex not installed"
        rows.append(row)
    return rows


_ASDEX_ONESHOT = """
import jax, jax.numpy as jnp, asdex, sys
sys.path.insert(0, {here!r})
from bench_sparse import _jax_functions
x = jnp.asarray(__import__('numpy').random.default_rng(0).standard_normal({n}), dtype=jnp.float32)
J = jax.jit(asdex.jacobian(_jax_functions()['stencil'], x))(x)
J.data.block_until_ready()
"""


def section_oneshot(quick: bool) -> list[dict]:
    n = 65536
    rounds = 2 if quick else 3
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "jac_bench_sparse_J.npz"
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "jac --sparse": [
            sys.executable,
            "-m",
            "jaccli",
            "jacobian",
            f"{HERE / 'bench_sparse.py'}:stencil",
            "-p",
            f"randn:{n}",
            "--sparse",
            "-o",
            str(out),
            "-q",
        ],  # fmt: skip
    }
    if _asdex():
        commands["asdex (detect, colour, jit, call)"] = [
            sys.executable, "-c", _ASDEX_ONESHOT.format(here=str(HERE), n=n)
        ]  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["import torch"])
    return [
        {
            "n": n,
            "what": name,
            "median": f"{statistics.median(v):.2f} s",
            "min": f"{min(v):.2f} s",
            "vs import torch": f"{statistics.median(v) / base:.1f}x",
        }  # fmt: skip
        for name, v in times.items()
    ]


def section_sparse(quick: bool) -> list[dict]:
    """All three tables, flattened into one for run.py's printer (one row per figure)."""
    rows = []
    for title, section in (
        ("colours", section_colours),
        ("steady", section_steady),
        ("oneshot", section_oneshot),
    ):
        for row in section(quick):
            rows.append({"table": title, "figures": "; ".join(f"{k}: {v}" for k, v in row.items())})
    return rows
