"""Tasks sync: submit one no-op task, get it, repeat (tasks/s)."""

from workloads.metric import Metric
from workloads.throughput import noop, sync_count, sync_rate, warm_up

SYSTEMS = ("nebula", "ray", "dask", "pool")
METRICS = (Metric("tasks_sync_per_s", "tasks sync", "tasks/s", True),)


def run(rt, quick):
    task = rt.remote(noop)
    warm_up(rt, task.remote)
    return {"tasks_sync_per_s": sync_rate(rt, task.remote, sync_count(quick))}
