"""A task that sums a stored 100 MB float64 array, warm (ms per task, submit to result)."""

import numpy as np

from workloads.metric import Metric
from workloads.timing import median_seconds

SYSTEMS = ("nebula", "ray")
ELEMENTS = 12_500_000  # 100 MB of float64
METRICS = (Metric("stored_sum_ms", "task summing stored 100 MB", "ms", False),)


def total(array):
    return float(array.sum())


def run(rt, quick):
    ref = rt.put(np.full(ELEMENTS, 1.5))
    task = rt.remote(total)
    for _ in range(2):  # warm: workers started and the object mapped
        assert rt.get(task.remote(ref)) == 1.5 * ELEMENTS
    seconds = median_seconds(lambda: rt.get(task.remote(ref)), 3 if quick else 5)
    return {"stored_sum_ms": seconds * 1e3}
