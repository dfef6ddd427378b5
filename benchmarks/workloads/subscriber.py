"""Async task throughput with one state subscriber attached, against the same run without (nebula only).

The subscriber is a no-op callback, attached in the driver itself (where its decoding of the
workers' events competes with the driver for its interpreter lock) and, separately, in a
process of its own that joins the cluster (as the notebook dashboard's model process does).
"""

import importlib
import os
import statistics
import subprocess
import sys

from workloads.metric import Metric
from workloads.throughput import ASYNC_COUNT, async_rate, noop, warm_up

SYSTEMS = ("nebula",)
METRICS = (
    Metric("tasks_async_plain_per_s", "tasks async, same run, no subscriber", "tasks/s", True),
    Metric("tasks_async_subscribed_per_s", "tasks async, 1 subscriber in the driver", "tasks/s", True),
    Metric("subscriber_change_pct", "subscriber in the driver: effect on tasks async", "%", True),
    Metric("tasks_async_subscribed_apart_per_s", "tasks async, 1 subscriber in its own process", "tasks/s", True),
    Metric("subscriber_apart_change_pct", "subscriber in its own process: effect", "%", True),
)

SUBSCRIBER_PROCESS = """
import sys
import nebula
nebula.init()
nebula.state.subscribe(lambda batch: None)
print("subscribed", flush=True)
sys.stdin.read()
"""


def subscribed_rate(rt, submit):
    """Async rate while one no-op subscriber is attached here; it is detached afterwards."""
    state = importlib.import_module(f"{rt.__name__}.state")
    with state.subscribe(lambda batch: None):
        warm_up(rt, submit)  # the feed is on everywhere before timing
        return async_rate(rt, submit)


def subscribed_apart_rate(rt, submit):
    """Async rate while a process of its own subscribes; it ends afterwards."""
    env = dict(os.environ, **rt.api.join_env())
    process = subprocess.Popen([sys.executable, "-c", SUBSCRIBER_PROCESS], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "subscribed":
            raise RuntimeError("the subscriber process did not start")
        warm_up(rt, submit)  # the feed is on everywhere before timing
        return async_rate(rt, submit)
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def paired_rates(rt, submit, rounds):
    """Plain and subscribed runs in turn, the order rotating each round, so drift hits all alike."""
    runs = {"plain": lambda: async_rate(rt, submit), "here": lambda: subscribed_rate(rt, submit),
            "apart": lambda: subscribed_apart_rate(rt, submit)}
    rates = {name: [] for name in runs}
    order = list(runs)
    for index in range(rounds):
        for name in order[index % 3:] + order[:index % 3]:
            rates[name].append(runs[name]())
    return {name: statistics.median(values) for name, values in rates.items()}


def run(rt, quick):
    task = rt.remote(noop)
    warm_up(rt, task.remote, ASYNC_COUNT)
    rates = paired_rates(rt, task.remote, 5 if quick else 7)  # a few % apart: many rounds
    return {
        "tasks_async_plain_per_s": rates["plain"],
        "tasks_async_subscribed_per_s": rates["here"],
        "subscriber_change_pct": 100.0 * (rates["here"] / rates["plain"] - 1.0),
        "tasks_async_subscribed_apart_per_s": rates["apart"],
        "subscriber_apart_change_pct": 100.0 * (rates["apart"] / rates["plain"] - 1.0),
    }
