"""Timing the phases of a command: single phases, and repeated runs with min / median / max.

Clocks are read after the device has finished its queued work (``sync``), so CUDA timings
measure the computation, not the launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

# Without --repeat, steady-state runs stop once they have taken this long (at least one runs),
# so a slow Jacobian is not computed many times over just to be timed.
AUTO_BUDGET_S = 1.0
# ... and, so that timing never makes a one-shot command much slower, the two automatic series
# (steady state, function alone) together may take at most this share of the command's one-shot
# cost, modelled as ONE_SHOT_BASE_S (starting Python and torch: 1.4-3 s measured) plus a first
# call: half each. A series whose warm-up and one run would exceed its half is not run at all,
# and the table says so.
ONE_SHOT_SHARE = 0.05
ONE_SHOT_BASE_S = 1.5
DEFAULT_REPEAT = 5
DEFAULT_WARMUP = 1


@dataclass
class Phase:
    name: str
    times: list[float]
    is_series: bool = False  # repeated runs (min / median / max) rather than one timed block
    skipped: str | None = None  # why an automatic series was not run

    def stats(self) -> dict[str, float] | None:
        if not self.times:
            return None
        return {
            "min": min(self.times),
            "median": statistics.median(self.times),
            "max": max(self.times),
        }


@dataclass
class Timings:
    sync: Callable[[], None] = lambda: None
    phases: list[Phase] = field(default_factory=list)
    footer: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # fallbacks: another route than the first answered
    remarks: list[str] = field(
        default_factory=list
    )  # what jac noticed about the function (jaccli.autodiff.trust)
    routes: dict[str, float] = field(default_factory=dict)  # a trial: route -> first-call seconds
    record: dict[str, Any] | None = None  # made once per command (jaccli.report.record)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block once."""
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.phases.append(Phase(name, [time.perf_counter() - start]))

    def series(
        self,
        name: str,
        fn: Callable[[], Any],
        repeat: int | None,
        warmup: int | None,
        per_run_s: float | None = None,
    ) -> Phase:
        """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

        ``repeat=None`` means up to DEFAULT_REPEAT runs within AUTO_BUDGET_S (at least one).
        ``per_run_s`` (what one run took before, if known) decides whether the series is long
        enough to deserve a progress bar on a terminal.
        """
        from jaccli.report import progress

        budget = None if repeat is not None else AUTO_BUDGET_S
        if budget is not None and per_run_s is not None:
            budget = min(budget, ONE_SHOT_SHARE / 2 * (ONE_SHOT_BASE_S + per_run_s))
            if per_run_s * ((DEFAULT_WARMUP if warmup is None else warmup) + 1) > budget:
                return self._not_repeated(name, per_run_s)
        repeat = DEFAULT_REPEAT if repeat is None else repeat
        warmup = DEFAULT_WARMUP if warmup is None else warmup
        if repeat == 0:
            warmup = 0  # nothing to time, so nothing to warm up for
        runs = warmup + repeat
        long = per_run_s is not None and per_run_s * runs > progress.LONG_S
        with progress.bar(name, runs if long else 0) as shown:
            times = self._runs(fn, warmup, repeat, budget, shown)
        phase = Phase(name, times, is_series=True)
        self.phases.append(phase)
        return phase

    def _not_repeated(self, name: str, per_run_s: float) -> Phase:
        from jaccli.report.render import duration

        why = (
            f"not repeated: one run took {duration(per_run_s)}, and timing more would add over "
            f"{ONE_SHOT_SHARE:.0%} to this one-shot command; --repeat N times it"
        )
        phase = Phase(name, [], is_series=True, skipped=why)
        self.phases.append(phase)
        self.footer.setdefault("not_repeated", []).append(f"{name}: {why}")
        return phase

    def _runs(
        self, fn: Callable[[], Any], warmup: int, repeat: int, budget: float | None, shown: Any
    ) -> list:
        spent = 0.0
        for _ in range(warmup):
            start = time.perf_counter()
            fn()
            self.sync()
            spent += time.perf_counter() - start
            shown.advance()
            if budget is not None and spent > budget:
                break
        times: list[float] = []
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
            spent += times[-1]
            shown.advance()
            if budget is not None and spent > budget:
                break
        return times

    def get(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def ratio(self, numerator: str, denominator: str) -> float | None:
        top, bottom = self.get(numerator), self.get(denominator)
        if not top or not bottom or not top.times or not bottom.times:
            return None
        low = statistics.median(bottom.times)
        return statistics.median(top.times) / low if low > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--timings PATH`` (seconds throughout)."""
        phases = []
        for p in self.phases:
            entry: dict[str, Any] = {"phase": p.name, "runs": len(p.times)}
            if p.is_series:
                entry.update(p.stats() or {})
                if p.skipped:
                    entry["skipped"] = p.skipped
            else:
                entry["seconds"] = p.times[0]
            phases.append(entry)
        return {"phases": phases, **self.footer, "notes": list(self.notes) + list(self.remarks)}
