"""Scale: a Jacobian larger than memory streamed to disk, and one sharded over torchrun ranks.

    python benchmarks/bench_scale.py            # 4 GiB Jacobian; 1 vs 2 ranks (a few minutes)
    python benchmarks/bench_scale.py --quick    # 1 GiB Jacobian; a smaller sharded one

- memory: ``jac jacrev ... -o J.npy --max-memory 512M`` writes a float32 Jacobian of 4 GiB
  (quick: 1 GiB) in a subprocess; its peak resident memory (the kernel's ru_maxrss for that
  child) against the 1 GiB target and against ``python -c "import torch"`` alone. Two rows of
  the file are checked against torch.autograd; the file is deleted afterwards.
- distributed: the same Jacobian by 1 process (default threads, then 1 thread) and by
  ``torchrun --nproc-per-node 2`` (1 thread per rank), measured side by side in one run, all by
  the streamed path (``--max-memory 8M --chunk-size N``: one chunk of each process's rows):
  compute time (rank 0's share under torchrun, from ``--timings``) and wall time including
  start-up (best of 3 rounds; quick: 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = textwrap.dedent(
    """
    import torch

    def dense(x):  # every output depends on every input: a full Jacobian, cheap per row
        return torch.tanh(0.5 * x + x.mean())

    _g = torch.Generator().manual_seed(0)
    WEIGHTS = [torch.randn(2048, 2048, generator=_g) / 45 for _ in range(4)]

    def mlp(x):  # four matrix products per pass: a few seconds for the whole Jacobian
        for w in WEIGHTS:
            x = torch.tanh(w @ x)
        return x
    """
)


# Runs a module (or code) and reports the process's own peak resident memory (VmHWM) as it exits.
# The kernel's ru_maxrss will not do: a child's counts its parent's memory at fork time, and the
# benchmark process is large by the time this section runs.
_PEAK = """
import runpy, sys
target = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    if target == "-c":
        exec(sys.argv[1])
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
finally:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    print("PEAK", int(hwm.split()[1]) * 1024, file=sys.stderr, flush=True)
"""


def _child(argv: list[str], folder: str, env: dict | None = None) -> tuple[int, float, int]:
    """Run ``python -m MODULE ARGS`` or ``python -c CODE`` (``argv`` without the interpreter);
    its exit code, wall seconds and its own peak resident memory in bytes."""
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", _PEAK, *argv],
        cwd=folder,
        env={**os.environ, **(env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - start
    peaks = [int(line.split()[1]) for line in process.stderr.splitlines() if line.startswith("PEAK ")]
    return process.returncode, wall, peaks[-1] if peaks else 0


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def section_memory(quick: bool) -> list[dict]:
    import numpy as np
    import torch

    n = 16384 if quick else 32768  # float32: n*n*4 bytes = 1 GiB or 4 GiB
    with tempfile.TemporaryDirectory(prefix="jac-bench-") as folder:
        Path(folder, "scalemod.py").write_text(SOURCE)
        _, _, torch_rss = _child(["-c", "import torch"], folder)
        argv = ["jaccli", "jacrev", "scalemod:dense", "-p", f"randn:{n}"]
        argv += ["-o", "J.npy", "--max-memory", "512M", "--timings", "t.json", "-q"]
        code, wall, rss = _child(argv, folder)
        if code != 0:
            raise RuntimeError(f"jac exited {code}: {' '.join(argv)}")
        path = Path(folder, "J.npy")
        size = path.stat().st_size
        jacobian = np.load(path, mmap_mode="r")
        x = torch.tensor(np.random.default_rng(0).standard_normal(n), dtype=torch.float32, requires_grad=True)
        import importlib.util

        spec = importlib.util.spec_from_file_location("scalemod", Path(folder, "scalemod.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = module.dense(x)
        worst = 0.0
        for k in (0, n // 2 + 1, n - 1):
            (row,) = torch.autograd.grad(out[k], x, retain_graph=True)
            worst = max(worst, float(np.abs(np.asarray(jacobian[k]) - row.numpy()).max()))
        del jacobian
        phases = {p["phase"]: p for p in json.loads(Path(folder, "t.json").read_text())["phases"]}
    compute = phases["steady-state compute"]["median"]
    return [
        {
            "case": f"jacrev -o J.npy, {n} x {n} float32 ({size / 2**30:.2f} GiB), --max-memory 512M",
            "value": f"peak RSS {_mib(rss)}",
            "target": "<= 1024 MiB",
            "note": f"compute {compute:.1f} s, write {phases['write']['seconds']:.1f} s, wall {wall:.1f} s; "
            f"3 rows vs torch.autograd: max abs diff {worst:.1e}",
        },
        {
            "case": 'python -c "import torch" (the floor)',
            "value": f"peak RSS {_mib(torch_rss)}",
            "target": "",
            "note": f"jac's streaming adds {_mib(rss - torch_rss)}",
        },
    ]


def section_distributed(quick: bool) -> list[dict]:
    n = 2048
    repeats = 1 if quick else 3
    runs = {
        "1 process, default threads": ([], {}),
        "1 process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
        "torchrun 2 ranks, 1 thread each": (["torchrun"], {"OMP_NUM_THREADS": "1"}),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="jac-bench-") as folder:
        Path(folder, "scalemod.py").write_text(SOURCE)
        for _ in range(repeats):  # alternate, so load on a shared machine hits every contender
            for name, (how, env) in runs.items():
                launcher = ["jaccli"]
                if how:
                    launcher = ["torch.distributed.run", "--nproc-per-node", "2"]
                    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_port()), "-m", "jaccli"]
                argv = [*launcher, "jacrev", "scalemod:mlp", "-p", f"randn:{n}", "-o", "J.npy"]
                # the same streamed path in every run: one chunk of all of a process's rows
                argv += ["--max-memory", "8M", "--chunk-size", str(n), "--timings", "t.json", "--no-timings"]
                code, wall, _ = _child(argv, folder, env)
                if code != 0:
                    raise RuntimeError(f"exited {code}: {' '.join(argv)}")
                phases = {p["phase"]: p for p in json.loads(Path(folder, "t.json").read_text())["phases"]}
                times[name].append((phases["steady-state compute"]["median"], wall))
    base = min(t for t, _ in times["1 process, 1 thread"])
    rows = []
    for name, pairs in times.items():
        compute, wall = min(t for t, _ in pairs), min(w for _, w in pairs)
        rows.append(
            {
                "case": f"jacrev {n} x {n} 4-layer MLP -o J.npy: {name}",
                "value": f"compute {compute:.2f} s",
                "target": "",
                "note": f"speed-up vs 1 thread {base / compute:.2f}x; wall with start-up {wall:.1f} s",
            }
        )
    return rows


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for title, section in (("memory", section_memory), ("distributed", section_distributed)):
        rows = section(args.quick)
        print(f"\n## {title}\n")
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + " --- |" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
