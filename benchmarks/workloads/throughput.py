"""The no-op task and actor, and the sync/async call-rate loops the throughput workloads share."""

import time

from workloads.timing import rate

ASYNC_COUNT = 10_000
WARMUP_COUNT = 200


def noop():
    return None


class NoopActor:
    """An actor whose one method does nothing."""

    def noop(self):
        return None


def warm_up(rt, submit, count=WARMUP_COUNT):
    """Submit `count` calls at once and wait, so every worker is started before timing."""
    rt.get([submit() for _ in range(count)])


def sync_rate(rt, submit, count):
    """Calls/s when each call is submitted and then waited for before the next."""
    start = time.perf_counter()
    for _ in range(count):
        rt.get(submit())
    return rate(count, time.perf_counter() - start)


def async_rate(rt, submit, count=ASYNC_COUNT):
    """Calls/s when `count` calls are submitted first and then fetched with one get."""
    start = time.perf_counter()
    rt.get([submit() for _ in range(count)])
    return rate(count, time.perf_counter() - start)


def sync_count(quick):
    """How many sync round trips to time."""
    return 300 if quick else 1000
