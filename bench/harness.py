"""Small timing helpers shared by the benchmarks: best-of-N wall clock, rates, pass/miss lines, the JSON line.

A *case* is a callable that prepares its own input, times only the region that matters with ``clock``
and returns ``(operations, elapsed_ns)``. ``interleave`` runs every case once per round, round after
round, so each case is sampled across the whole run rather than in one burst: on a shared or
frequency-scaling machine a slow phase then hits all cases alike, and the best round of each is its
figure. The median is kept too, as the noise indicator.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

clock = time.perf_counter_ns  # the one clock every benchmark times with

Case = Callable[[], tuple[int, int]]


class Timing:
    """Samples of one case, in ns per operation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[float] = []

    def add(self, ops: int, ns: int) -> None:
        self.samples.append(ns / ops)

    @property
    def best_ns(self) -> float:
        return min(self.samples)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)

    @property
    def rate(self) -> float:
        """Operations per second at the best round."""
        return 1e9 / self.best_ns


def interleave(cases: dict[str, Case], rounds: int) -> dict[str, Timing]:
    """Run each case once per round for ``rounds`` rounds; the samples of every case, by name."""
    timings = {name: Timing(name) for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            timings[name].add(*case())
    return timings


def best_of(case: Case, rounds: int) -> Timing:
    """One case, ``rounds`` times."""
    return interleave({"case": case}, rounds)["case"]


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
