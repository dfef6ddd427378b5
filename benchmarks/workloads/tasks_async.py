"""Tasks async: submit 10,000 no-op tasks, then one get of the whole list (tasks/s)."""

from workloads.metric import Metric
from workloads.throughput import async_rate, noop, warm_up

SYSTEMS = ("nebula", "ray", "dask", "pool")
METRICS = (Metric("tasks_async_per_s", "tasks async (10k)", "tasks/s", True),)


def run(rt, quick):
    task = rt.remote(noop)
    warm_up(rt, task.remote)
    return {"tasks_async_per_s": async_rate(rt, task.remote)}
