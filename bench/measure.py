"""Timing primitives shared by every stage: interleaved repetitions, medians and log-log slopes.

Runs of the two sides of a ratio are interleaved (A B A B ...) rather than batched (A A A B B B) so
that a change in the shared machine's load during the measurement lands on both sides alike.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call; wall (not CPU) time because Spark and Petastorm work in other threads."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(runs: Mapping[str, Callable[[], object]], repeats: int,
                timer: Callable[[str, Callable[[], object]], float] | None = None) -> dict[str, list[float]]:
    """Seconds of each named run, `repeats` times, alternating between the runs. `timer(name, fn)`
    replaces plain timing when a run's other costs (bytes shuffled) are recorded too."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timer(name, fn) if timer else seconds(fn))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def loglog_slope(sizes: list[float], times: list[float]) -> float:
    """Least-squares slope of log(time) on log(size): 1 is linear growth, 2 quadratic.

    Fixed costs (job scheduling, Delta commits) flatten the slope at small sizes, so a slope under
    1 means "dominated by overhead", not "better than linear".
    """
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
