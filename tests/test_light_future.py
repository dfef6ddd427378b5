"""LightFuture, the owner's per-object future, and what a pending task costs the garbage collector."""
from __future__ import annotations

import concurrent.futures
import gc
import threading

import pytest

import nebula
from nebula.light_future import LightFuture
from nebula.session import current_session
from polling import wait_until


def test_result_value_and_error():
    done = LightFuture()
    done.set_result(42)
    assert done.done() and done.result() == 42 and done.exception() is None
    failed = LightFuture()
    failed.set_exception(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    assert isinstance(failed.exception(), ValueError)
    with pytest.raises(concurrent.futures.InvalidStateError):
        failed.set_result(1)
    assert LightFuture.completed("x").result() == "x"


def test_result_times_out_then_wakes_when_set_from_another_thread():
    future = LightFuture()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.05)
    threading.Timer(0.05, future.set_result, ("late",)).start()
    assert future.result(timeout=10) == "late"


def test_callbacks_run_once_in_order_and_are_dropped():
    future, seen = LightFuture(), []
    future.add_done_callback(lambda f: seen.append(("first", f.result())))
    future.add_done_callback(lambda f: 1 / 0)  # logged, does not stop the others
    future.add_done_callback(lambda f: seen.append(("second", f.result())))
    future.set_result(7)
    assert seen == [("first", 7), ("second", 7)]
    assert future._callbacks is None  # nothing they hold stays alive with the future
    future.add_done_callback(lambda f: seen.append(("after", f.result())))  # already done: at once
    assert seen[-1] == ("after", 7)


def test_many_threads_waiting_on_one_future_all_wake():
    future, results = LightFuture(), []
    waiters = [threading.Thread(target=lambda: results.append(future.result(timeout=30))) for _ in range(8)]
    for waiter in waiters:
        waiter.start()
    assert wait_until(lambda: future._event is not None, timeout=10)  # waiters block on it
    future.set_result("go")
    for waiter in waiters:
        waiter.join(timeout=30)
    assert results == ["go"] * 8


@nebula.remote
def never_runs():
    return None


def test_a_pending_task_keeps_few_objects_for_the_garbage_collector(cluster):
    """Python's full collections walk every tracked object: an owner with 10,000 tasks in
    flight must not hold hundreds of thousands of them (a concurrent.futures.Future alone is
    ten). Tasks that need a resource nobody has stay pending, so they can be counted."""
    pending = never_runs.options(resources={"nowhere": 1})
    gc.collect()
    before = len(gc.get_objects())
    refs = [pending.remote() for _ in range(2000)]
    submitter = current_session().tasks
    assert wait_until(lambda: len(submitter.tasks) >= len(refs), timeout=30)  # the I/O thread took them in
    gc.collect()
    per_task = (len(gc.get_objects()) - before) / len(refs)
    for ref in refs:
        nebula.cancel(ref)
    assert per_task < 16, f"{per_task:.1f} tracked objects per pending task"
