"""Small timing helpers shared by the benchmarks: best-of-N wall clock, rates, pass/miss lines, the JSON line.

A *case* is a callable that prepares its own input, times only the region that matters and returns
``(operations, wall_ns, cpu_ns)``: ``t = start()`` before the region, ``stop(t)`` after it gives the two
durations (``(operations, wall_ns)`` alone, timed with ``clock``, is accepted too). ``interleave`` runs
every case once per round, round after round, so each case is sampled across the whole run rather than
in one burst: on a shared or frequency-scaling machine a slow phase then hits all cases alike. The
figure is the best wall-clock round; the median shows the noise, and the best thread-CPU-time round
shows what the code costs when other processes take the core away (it leaves out time spent
descheduled, not cache or SMT interference).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

clock = time.perf_counter_ns  # the wall clock every figure is taken with
cpu_clock = time.thread_time_ns  # this thread's CPU time, the cross-check under contention

Case = Callable[[], tuple[int, int, int] | tuple[int, int]]


def start() -> tuple[int, int]:
    return clock(), cpu_clock()


def stop(t0: tuple[int, int]) -> tuple[int, int]:
    """(wall ns, CPU ns) since ``start()``."""
    cpu, wall = cpu_clock(), clock()
    return wall - t0[0], cpu - t0[1]


class Timing:
    """Samples of one case, in ns per operation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[float] = []
        self.cpu_samples: list[float] = []

    def add(self, ops: int, ns: int, cpu_ns: int | None = None) -> None:
        self.samples.append(ns / ops)
        if cpu_ns is not None:
            self.cpu_samples.append(cpu_ns / ops)

    @property
    def rounds(self) -> int:
        return len(self.samples)

    @property
    def best_ns(self) -> float:
        return min(self.samples)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)

    @property
    def best_cpu_ns(self) -> float:
        """Best CPU-time round; NaN when the case reported no CPU time."""
        return min(self.cpu_samples, default=float("nan"))

    @property
    def rate(self) -> float:
        """Operations per second at the best round."""
        return 1e9 / self.best_ns


def interleave(
    cases: dict[str, Case], rounds: int, budget_s: float = 0.0, min_rounds: int = 1
) -> dict[str, Timing]:
    """Run each case once per round, ``rounds`` rounds; the samples of every case, by name.

    With ``budget_s``, no new round starts once that many seconds have passed and ``min_rounds`` are done.
    """
    timings = {name: Timing(name) for name in cases}
    deadline = time.monotonic() + budget_s
    for done in range(rounds):
        if budget_s and done >= min_rounds and time.monotonic() > deadline:
            break
        for name, case in cases.items():
            timings[name].add(*case())
    return timings


def best_of(case: Case, rounds: int, budget_s: float = 0.0, min_rounds: int = 1) -> Timing:
    """One case, ``rounds`` times (or fewer, see ``interleave``)."""
    return interleave({"case": case}, rounds, budget_s, min_rounds)["case"]


def cpu_share(wall_s: float, cpu_s: float) -> str:
    """How much of the wall time the process got as CPU, as a sentence for the report."""
    share = cpu_s / wall_s if wall_s else 1.0
    note = "" if share > 0.9 else ": other processes competed for the CPU, wall-clock figures are pessimistic"
    return f"the process got {share:.0%} of the wall time as CPU{note}"


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (+ unit)."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def verdict(value: float, target: float, higher_is_better: bool = True) -> bool:
    return value >= target if higher_is_better else value <= target


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def out(text: str = "") -> None:
    """A human-readable line, flushed so progress shows during a long run."""
    print(text, flush=True)


def emit_json(figures: dict) -> None:
    """The final line of a benchmark: every figure, one JSON object."""
    sys.stdout.write(json.dumps(figures, sort_keys=True) + "\n")
    sys.stdout.flush()
