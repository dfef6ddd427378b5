"""Chain: 100 dependent tasks (`x = f.remote(x)` 100 times, then one get), in ms."""

import statistics
import time

from workloads.metric import Metric
from workloads.throughput import warm_up

SYSTEMS = ("nebula", "ray", "dask")
LENGTH = 100
METRICS = (Metric("chain_100_ms", "chain of 100 tasks", "ms", False),)


def increment(x):
    return x + 1


def chain_seconds(rt, task, length):
    """Seconds to build a chain of `length` dependent tasks and get its end."""
    start = time.perf_counter()
    x = 0
    for _ in range(length):
        x = task.remote(x)
    value = rt.get(x)
    elapsed = time.perf_counter() - start
    assert value == length, f"chain returned {value}, expected {length}"
    return elapsed


def run(rt, quick):
    task = rt.remote(increment)
    warm_up(rt, lambda: task.remote(0))
    chain_seconds(rt, task, LENGTH)
    times = [chain_seconds(rt, task, LENGTH) for _ in range(3 if quick else 5)]
    return {"chain_100_ms": statistics.median(times) * 1e3}
