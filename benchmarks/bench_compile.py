"""`jac --compile` against JAX's jit, side by side in one run.

    python -m pip install "jax[cpu]"          # benchmark only: jaccli never imports jax
    python benchmarks/bench_compile.py        # 7 rounds, a few minutes
    python benchmarks/bench_compile.py --quick

Each round runs jac through its library (``jaccli.run(Request(..., compile=True))``, so the
figure is the steady-state median of jac's own timing table, what users get), then the same
derivative jitted by JAX, timed by the same code (``jaccli.report.timing.Timings.series``); the next
round runs them in the other order. Reported: both medians, and jac / JAX as the ratio of
their minima and of their medians over rounds (target 1.5), with uncompiled jac for scale
and the compile times. Inductor's cache starts empty in a folder of this run, so the first
round's compile is a cold one; later rounds find their kernels in that cache. Without jax
installed the JAX columns say so and the rest still runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET = 1.5
MLP_WIDTH, MLP_BATCH = 512, 64


def _rosenbrock_jax(x: Any) -> Any:
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()


def _mlp_torch() -> Any:
    """x (64, 512) through two Linear 512x512 + tanh layers, float32, fixed seed."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.Tanh(), nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.Tanh()]
    return nn.Sequential(*layers).eval()


def _mlp_jax(model: Any) -> Callable[[Any], Any]:
    """The same MLP in JAX, with the torch model's weights."""
    import jax.numpy as jnp

    weights = [
        (jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
        for m in model
        if hasattr(m, "weight")
    ]

    def mlp(x: Any) -> Any:
        for w, b in weights:
            x = jnp.tanh(x @ w.T + b)
        return x

    return mlp


def cases() -> list[dict]:
    """Each case: jac's Request arguments and, when jax is there, the jitted JAX twin."""
    import bench_functions
    import torch

    torch.manual_seed(1)
    x = torch.randn(1000)
    v = torch.randn(1000)
    m = _mlp_torch()
    mx, mv, mu = (torch.randn(MLP_BATCH, MLP_WIDTH) for _ in range(3))
    found = [
        ("rosenbrock(1000) jvp", "jvp", bench_functions.rosenbrock, _rosenbrock_jax, [x], {"tangents": [v]}),
        ("rosenbrock(1000) vjp", "vjp", bench_functions.rosenbrock, _rosenbrock_jax, [x], {}),
        (
            "rosenbrock(1000) gradient (jacrev)",
            "jacrev",
            bench_functions.rosenbrock,
            _rosenbrock_jax,
            [x],
            {},
        ),
        ("mlp 64x512 jvp", "jvp", m, _mlp_jax, [mx], {"tangents": [mv]}),
        ("mlp 64x512 vjp", "vjp", m, _mlp_jax, [mx], {"cotangents": [mu]}),
    ]
    return [
        {"name": name, "command": command, "func": func, "jax_func": jax_func, "primals": primals, **extra}
        for name, command, func, jax_func, primals, extra in found
    ]


def jax_twin(case: dict) -> Callable[[], Any] | None:
    """The case's derivative jitted by JAX, compiled and ready to call (None without jax)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    func = case["jax_func"] if case["jax_func"] is _rosenbrock_jax else case["jax_func"](case["func"])
    x = jnp.asarray(case["primals"][0].numpy())
    if case["command"] == "jvp":
        v = jnp.asarray(case["tangents"][0].numpy())
        jitted = jax.jit(lambda x, v: jax.jvp(func, (x,), (v,)))
        args: tuple = (x, v)
    elif case["command"] == "vjp":
        u = jnp.asarray(case["cotangents"][0].numpy()) if "cotangents" in case else jnp.ones(())

        def value_and_vjp(x: Any, u: Any) -> Any:
            out, pullback = jax.vjp(func, x)
            return out, pullback(u)

        jitted, args = jax.jit(value_and_vjp), (x, u)
    else:
        jitted, args = jax.jit(jax.jacrev(func)), (x,)
    jax.block_until_ready(jitted(*args))  # compile now, outside the timed runs
    return lambda: jax.block_until_ready(jitted(*args))


def jac_steady(case: dict, compile: bool, repeat: int) -> tuple[float, float | None, str]:
    """jac's steady-state median (seconds), its compile phase (seconds), and its engine label."""
    from jaccli import Request, run

    keys = ("tangents", "cotangents")
    outcome = run(
        Request(
            case["command"],
            case["func"],
            primals=case["primals"],
            compile=compile,
            repeat=repeat,
            warmup=5,
            **{k: case[k] for k in keys if k in case},
        )
    )
    compiled = outcome.timings.get("compile")
    steady = outcome.timings.get("steady-state compute").stats()["median"]
    return steady, compiled.times[0] if compiled else None, outcome.timings.footer["engine"]


def section_compile(quick: bool) -> list[dict]:
    """One row per case: jac --compile and JAX jit, alternating round by round."""
    from jaccli.report.timing import Timings

    rounds, repeat = (3, 50) if quick else (7, 200)
    rows = []
    for case in cases():
        twin = jax_twin(case)
        jac_times, jax_times, compile_times = [], [], []
        label = ""
        for r in range(rounds):
            contenders = ["jac", "jax"] if r % 2 == 0 else ["jax", "jac"]
            for who in contenders:
                if who == "jac":
                    seconds, compiled, label = jac_steady(case, True, repeat)
                    jac_times.append(seconds)
                    compile_times.append(compiled)
                elif twin is not None:
                    jax_times.append(Timings().series("jax", twin, repeat, 5).stats()["median"])
        eager_times = [jac_steady(case, False, repeat)[0] for _ in range(max(1, rounds // 3))]
        row = {
            "case": case["name"],
            "jac --compile median": _us(statistics.median(jac_times)),
            "JAX jit median": _us(statistics.median(jax_times)) if jax_times else "no jax",
            "jac / JAX (min)": min(jac_times) / min(jax_times) if jax_times else "-",
            "jac / JAX (median)": statistics.median(jac_times) / statistics.median(jax_times)
            if jax_times
            else "-",
            "target": TARGET,
            "jac uncompiled median": _us(statistics.median(eager_times)),
            "compile, cold": _seconds(compile_times[0]),
            "compile, cached": _seconds(statistics.median(compile_times[1:])) if rounds > 1 else "-",
            "engine": label,
        }
        rows.append(row)
    return rows


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"


def _seconds(seconds: float | None) -> str:
    return "failed" if seconds is None else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 50 runs instead of 7 of 200")
    args = parser.parse_args()
    # A fresh Inductor cache for this run, so "compile, cold" is cold (set before torch loads it).
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="jac-bench-inductor-")
    from run import machine, print_table

    try:
        import jax

        versions = f"jax {jax.__version__}, backend {jax.default_backend()}"
    except ImportError:
        versions = 'jax not installed: JAX columns skipped (python -m pip install "jax[cpu]")'
    print(f"# jac --compile against JAX's jit\n\n{machine()}; {versions}")
    print_table("compile", section_compile(args.quick))
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
