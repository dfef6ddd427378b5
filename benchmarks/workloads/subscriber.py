"""Async task throughput with one state subscriber attached, against the same run without (nebula only)."""

import importlib

from workloads.metric import Metric
from workloads.throughput import ASYNC_COUNT, async_rate, noop, warm_up

SYSTEMS = ("nebula",)
METRICS = (
    Metric("tasks_async_plain_per_s", "tasks async, same run, no subscriber", "tasks/s", True),
    Metric("tasks_async_subscribed_per_s", "tasks async, 1 subscriber", "tasks/s", True),
    Metric("subscriber_change_pct", "subscriber effect on tasks async", "%", True),
)


def run(rt, quick):
    task = rt.remote(noop)
    warm_up(rt, task.remote, ASYNC_COUNT)
    plain = async_rate(rt, task.remote)
    importlib.import_module(f"{rt.__name__}.state").subscribe(lambda batch: None)
    subscribed = async_rate(rt, task.remote)
    return {
        "tasks_async_plain_per_s": plain,
        "tasks_async_subscribed_per_s": subscribed,
        "subscriber_change_pct": 100.0 * (subscribed / plain - 1.0),
    }
