"""Async task throughput with one state subscriber attached, against the same run without (nebula only)."""

import importlib
import statistics

from workloads.metric import Metric
from workloads.throughput import ASYNC_COUNT, async_rate, noop, warm_up

SYSTEMS = ("nebula",)
METRICS = (
    Metric("tasks_async_plain_per_s", "tasks async, same run, no subscriber", "tasks/s", True),
    Metric("tasks_async_subscribed_per_s", "tasks async, 1 subscriber", "tasks/s", True),
    Metric("subscriber_change_pct", "subscriber effect on tasks async", "%", True),
)


def subscribed_rate(rt, submit):
    """Async rate while one no-op subscriber is attached; it is detached afterwards."""
    state = importlib.import_module(f"{rt.__name__}.state")
    with state.subscribe(lambda batch: None):
        return async_rate(rt, submit)


def paired_rates(rt, submit, rounds):
    """Alternate plain and subscribed runs, swapping which goes first, so drift hits both alike."""
    plain, subscribed = [], []
    for index in range(rounds):
        if index % 2:
            subscribed.append(subscribed_rate(rt, submit))
        plain.append(async_rate(rt, submit))
        if not index % 2:
            subscribed.append(subscribed_rate(rt, submit))
    return statistics.median(plain), statistics.median(subscribed)


def run(rt, quick):
    task = rt.remote(noop)
    warm_up(rt, task.remote, ASYNC_COUNT)
    plain, subscribed = paired_rates(rt, task.remote, 2 if quick else 3)
    return {
        "tasks_async_plain_per_s": plain,
        "tasks_async_subscribed_per_s": subscribed,
        "subscriber_change_pct": 100.0 * (subscribed / plain - 1.0),
    }
