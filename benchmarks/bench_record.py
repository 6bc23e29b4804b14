"""What the reproducibility record costs a command (jaccli.report.record).

``python benchmarks/bench_record.py [ROUNDS]``: one in-process ``jac vjp ... -o r.npz`` with the
record and one without it (``for_output`` stubbed to give none), alternating round by round,
for a small input (4 KiB) and a large one (64 MiB, whose sha256 is most of the record's cost).
Prints the medians and mins and their ratios; nothing is asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = "import torch\n\ndef loss(x):\n    return (torch.sin(x) ** 2).sum()\n"


def _one(args: list[str]) -> float:
    from jaccli.cli.commands import main

    start = time.perf_counter()
    try:
        main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"jac {' '.join(args)} exited {exc.code}") from None
    return time.perf_counter() - start


def _case(name: str, size: int, rounds: int) -> None:
    from jaccli.report import record

    np.save("x.npy", np.random.default_rng(0).standard_normal(size))
    args = ["vjp", "recbench:loss", "-p", "x.npy", "-o", "r.npz", "--repeat", "0", "-q", "--no-timings"]
    real = record.for_output
    _one(args)  # warm: imports, first use of torch.func
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for label in ("with", "without"):
            record.for_output = real if label == "with" else (lambda *a, **k: None)
            try:
                times[label].append(_one(args))
            finally:
                record.for_output = real
    w, wo = times["with"], times["without"]
    print(
        f"| {name} | {statistics.median(w) * 1e3:.1f} ms | {statistics.median(wo) * 1e3:.1f} ms "
        f"| {statistics.median(w) / statistics.median(wo):.3f} | {min(w) / min(wo):.3f} |"
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    import torch

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        sys.path.insert(0, folder)
        Path("recbench.py").write_text(SOURCE)
        print(
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, {rounds} rounds, "
            f"load average {os.getloadavg()}"
        )
        print("| case | with record (median) | without (median) | ratio (median) | ratio (min) |")
        print("| --- | --- | --- | --- | --- |")
        _case("vjp, 512 float64 (4 KiB) -o r.npz", 512, rounds)
        _case("vjp, 8,388,608 float64 (64 MiB) -o r.npz", 8 * 2**20, max(3, rounds // 3))


if __name__ == "__main__":
    main()
