"""Small timing helpers shared by the workloads."""

import statistics
import time


def timed(fn, *args):
    """Seconds one call of fn(*args) takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def median_seconds(fn, times):
    """Median seconds over `times` calls of fn()."""
    return statistics.median(timed(fn) for _ in range(times))


def rate(count, seconds):
    """Operations per second."""
    return count / seconds if seconds > 0 else float("inf")
