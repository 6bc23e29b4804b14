"""jac's benchmark suite: ratios measured side by side in one run, never absolute targets.

    python benchmarks/run.py            # everything, several minutes
    python benchmarks/run.py --quick    # fewer rounds and cases, under 2 minutes
    python benchmarks/run.py steady     # one section (or several)

Each section times its contenders alternately, round after round, so a burst of load on a
shared machine hits them all; it reports min and median over rounds. Sections:

- help: `jac --help`, `--version` and a usage error against `python -c pass` (target: 150 ms).
- oneshot: one-shot `jac jvp|vjp|jacrev` end to end against `python -c "import torch"` (target:
  1.15x) and against the hand-written torch.func script, with the numbers compared.
- steady: the steady-state median under --repeat against the fastest of torch.func,
  torch.autograd.functional and plain autograd / forward-mode AD (target: 1.05x).
- compile: `--compile`'s steady state against JAX's jit (target: 1.5x; needs `pip install
  'jaccli[bench]'`, else the JAX columns say so).
- memory: peak resident memory writing a 4 GiB float32 Jacobian to `-o J.npy` (target: 1 GiB).
- distributed: one process against two torchrun ranks on the same Jacobian.
- serve: one-shot `jac` through a warm `jac serve` server and without one, against `python -c
  "import torch"` (target: 0.1x), and the server's memory over 1,000 requests.
- mode: `jac jacobian --mode auto` against the better of jacfwd and jacrev, through jac's own
  code path (``jaccli.run``), on functions where the choice matters and where it does not.
- directions, spectrum: `--directions 64` against 64 runs and torch.func.vmap(jvp); `jac
  spectrum` on n = 1,000,000 and against numpy on n = 2,048 (see bench_linalg.py).
- sparse: `--sparse` colours against asdex's, the steady state at n = 4,096 against dense
  jacrev, a hand-seeded vmap(jvp) and asdex under jax.jit, one-shot n = 65,536 against
  `import torch` (see bench_sparse.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_compile  # noqa: E402
import bench_engines  # noqa: E402
import bench_functions  # noqa: E402
import bench_linalg  # noqa: E402
import bench_scale  # noqa: E402
import bench_serve  # noqa: E402
import bench_sparse  # noqa: E402


def steady(command: str, func, x, mode: str, repeat: int, batch_dim=None) -> tuple[float, str]:
    """The steady-state median of one jac run (seconds), and the mode's note."""
    from jaccli import Request, run

    outcome = run(
        Request(command, func, primals=[x], mode=mode, repeat=repeat, warmup=2, batch_dim=batch_dim)
    )
    note = outcome.timings.footer.get("mode", "")
    return outcome.timings.get("steady-state compute").stats()["median"], note


def section_mode(rounds: int, repeat: int) -> list[dict]:
    """`--mode auto` runs the very code of the mode it picks, so auto / best beyond 1 is a
    wrong pick or noise; each auto run decides afresh, and the picks are counted."""
    rows = []
    for case in bench_functions.mode_cases():
        name, func, x, batch = case["name"], case["func"], case["x"], case.get("batch_dim")
        times: dict[str, list[float]] = {"fwd": [], "rev": [], "auto": []}
        picks: dict[str, int] = {}
        for r in range(rounds):
            order = ["fwd", "rev", "auto"] if r % 2 == 0 else ["auto", "rev", "fwd"]
            for mode in order:
                seconds, note = steady("jacobian", func, x, mode, repeat, batch)
                times[mode].append(seconds)
                if mode == "auto":
                    picked = note.split()[1]
                    picks[picked] = picks.get(picked, 0) + 1
        best_min = min(min(times["fwd"]), min(times["rev"]))
        best_med = min(statistics.median(times["fwd"]), statistics.median(times["rev"]))
        rows.append(
            {
                "function": name,
                "in": case["n_in"],
                "out": case["n_out"],
                "auto picked": ", ".join(f"{k} {v}/{rounds}" for k, v in sorted(picks.items())),
                "fwd median": fmt_time(statistics.median(times["fwd"])),
                "rev median": fmt_time(statistics.median(times["rev"])),
                "auto median": fmt_time(statistics.median(times["auto"])),
                "auto / best (min)": min(times["auto"]) / best_min,
                "auto / best (median)": statistics.median(times["auto"]) / best_med,
            }
        )
    return rows


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    headers = list(rows[0])
    cells = [[_cell(row[h]) for h in headers] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for line in cells:
        print("| " + " | ".join(line) + " |")


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def machine() -> str:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {' '.join(f'{v:.2f}' for v in load)}"
    )


def _mode(quick: bool) -> list[dict]:
    return section_mode(*((3, 5) if quick else (11, 30)))


SECTIONS = {
    "help": bench_engines.section_help,
    "oneshot": bench_engines.section_oneshot,
    "steady": bench_engines.section_steady,
    "compile": bench_compile.section_compile,
    "memory": bench_scale.section_memory,
    "distributed": bench_scale.section_distributed,
    "mode": _mode,
    "directions": bench_linalg.section_directions,
    "spectrum": bench_linalg.section_spectrum,
    "sparse": bench_sparse.section_sparse,
    "serve": bench_serve.section_serve,
}
QUICK_SECTIONS = ("help", "oneshot", "steady")  # --quick with no section named: these


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, repeats and cases")
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    chosen = args.sections or (list(QUICK_SECTIONS) if args.quick else list(SECTIONS))
    print(f"# jac benchmarks\n\n{machine()}{' (--quick)' if args.quick else ''}")
    for name in chosen:
        print_table(name, SECTIONS[name](args.quick))
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
