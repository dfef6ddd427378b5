"""nebula.util on a real cluster: ActorPool, the multiprocessing.Pool drop-in, and Queue."""
from __future__ import annotations

import asyncio
import os
import queue
import time

import pytest

import nebula
from nebula.exceptions import ActorDiedError, GetTimeoutError
from nebula.util import ActorPool
from nebula.util.multiprocessing import Pool, TimeoutError as PoolTimeoutError
from nebula.util.queue import Empty, Full, Queue


# ---------------------------------------------------------------- helpers run remotely

_STATE: dict = {}


class NeedsTwoArgs(Exception):
    """An exception whose __init__ does not take its message: must still arrive as itself."""

    def __init__(self, value, reason):
        super().__init__(f"{value}: {reason}")
        self.value = value


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise NeedsTwoArgs(x, "three is not allowed")
    return x


def remember(value):
    _STATE["value"] = value


def recall(_):
    return _STATE.get("value")


def pid_of(_):
    return os.getpid()


def nap_then_return(seconds):
    time.sleep(seconds)
    return seconds


@nebula.remote
class Sleeper:
    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


@nebula.remote
def produce(q, count):
    for i in range(count):
        q.put(i, timeout=30)
    return count


@nebula.remote
class Consumer:
    def take(self, q, count):
        return [q.get(timeout=30) for _ in range(count)]


@pytest.fixture(scope="module")
def pool(cluster):
    with Pool(2) as shared:
        yield shared


def nap(actor, seconds):
    return actor.nap.remote(seconds)


# ---------------------------------------------------------------- ActorPool


def test_actor_pool_map_keeps_order_and_map_unordered_does_not(cluster):
    actor_pool = ActorPool([Sleeper.remote(), Sleeper.remote()])
    values = [0.6, 0.0, 0.0, 0.0]
    assert list(actor_pool.map(nap, values)) == values
    unordered = list(actor_pool.map_unordered(nap, values))
    assert sorted(unordered) == sorted(values) and unordered[0] == 0.0 and unordered[-1] == 0.6


def test_actor_pool_get_next_until_exhausted(cluster):
    actor_pool = ActorPool([Sleeper.remote()])
    for value in (0.0, 0.01, 0.02):
        actor_pool.submit(nap, value)
    assert not actor_pool.has_free()  # one actor, two submissions waiting for it
    assert [actor_pool.get_next() for _ in range(3)] == [0.0, 0.01, 0.02]
    assert not actor_pool.has_next() and actor_pool.has_free()
    with pytest.raises(StopIteration, match="No more results to get"):
        actor_pool.get_next()
    with pytest.raises(StopIteration):
        actor_pool.get_next_unordered()


def test_actor_pool_timeouts(cluster):
    actor_pool = ActorPool([Sleeper.remote()])
    actor_pool.submit(nap, 1.0)
    with pytest.raises(GetTimeoutError):
        actor_pool.get_next(timeout=0.05)
    with pytest.raises(TimeoutError):
        actor_pool.get_next_unordered(timeout=0.05)
    assert actor_pool.has_next()  # a plain timeout leaves the call in place
    with pytest.raises(TimeoutError, match="ignored"):
        actor_pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not actor_pool.has_next() and actor_pool.has_free()


def test_actor_pool_membership(cluster):
    first, second = Sleeper.remote(), Sleeper.remote()
    actor_pool = ActorPool([first])
    actor_pool.submit(nap, 0.3)
    assert actor_pool.pop_idle() is None
    with pytest.raises(ValueError, match="already belongs"):
        actor_pool.push(first)
    actor_pool.push(second)
    actor_pool.submit(nap, 0.0)
    assert actor_pool.get_next_unordered() == 0.0  # the later call, finished first
    with pytest.raises(ValueError, match="after get_next_unordered"):
        actor_pool.get_next()
    assert actor_pool.get_next_unordered() == 0.3
    assert actor_pool.pop_idle() in (first, second) and actor_pool.pop_idle() in (first, second)
    assert actor_pool.pop_idle() is None


# ---------------------------------------------------------------- multiprocessing.Pool


def test_pool_maps_equal_builtin_map(pool):
    values = list(range(37))
    assert pool.map(square, values) == list(map(square, values))
    assert pool.map(square, iter(values), chunksize=5) == list(map(square, values))
    assert pool.map(square, []) == []
    assert pool.starmap(pow, [(2, 5), (3, 2)]) == [32, 9]
    assert pool.map_async(square, values).get(timeout=30) == list(map(square, values))
    assert pool.starmap_async(pow, [(2, 3)]).get(timeout=30) == [8]


def test_pool_imap_ordered_and_unordered(pool):
    assert list(pool.imap(square, range(20), chunksize=3)) == [x * x for x in range(20)]
    assert list(pool.imap(square, (x for x in range(5)))) == [0, 1, 4, 9, 16]
    unordered = list(pool.imap_unordered(nap_then_return, [0.8, 0.0, 0.0, 0.0]))
    assert sorted(unordered) == [0.0, 0.0, 0.0, 0.8] and unordered[-1] == 0.8
    with pytest.raises(ValueError, match="Chunksize"):
        pool.imap(square, [1], chunksize=0)


def test_pool_apply_and_callbacks(pool):
    assert pool.apply(square, (9,)) == 81
    got, errors = [], []
    result = pool.apply_async(square, (4,), callback=got.append)
    assert result.get(timeout=30) == 16 and got == [16] and result.successful()
    failing = pool.apply_async(fail_on_three, (3,), callback=got.append, error_callback=errors.append)
    with pytest.raises(NeedsTwoArgs):
        failing.get(timeout=30)
    assert not failing.successful() and isinstance(errors[0], NeedsTwoArgs) and got == [16]
    mapped = pool.map_async(square, [1, 2, 3], callback=got.append)
    mapped.wait(30)
    assert mapped.ready() and got == [16, [1, 4, 9]]


def test_pool_errors_keep_their_type(pool):
    with pytest.raises(NeedsTwoArgs, match="three is not allowed") as caught:
        pool.map(fail_on_three, range(6))
    assert caught.value.value == 3
    assert "fail_on_three" in str(caught.value.__cause__)  # the remote traceback, as multiprocessing
    results = pool.imap(fail_on_three, range(5))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(NeedsTwoArgs):
        next(results)
    assert list(results) == [4]
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))


def test_pool_async_result_timeout(pool):
    slow = pool.apply_async(nap_then_return, (1.0,))
    with pytest.raises(PoolTimeoutError):
        slow.get(timeout=0.05)
    assert not slow.ready()
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    assert slow.get(timeout=30) == 1.0


def test_pool_initializer_runs_in_every_process(cluster):
    with Pool(2, initializer=remember, initargs=("ready",)) as initialized:
        assert initialized.map(recall, range(8), chunksize=1) == ["ready"] * 8
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    default = Pool()
    assert default._processes == 2  # the cluster's CPU count
    default.terminate()


def test_pool_maxtasksperchild_replaces_processes(cluster):
    with Pool(1, maxtasksperchild=1) as recycled:
        pids = [recycled.apply(pid_of, (i,)) for i in range(2)]
    assert len(set(pids)) == 2


def test_pool_context_manager_close_join_terminate(cluster):
    with Pool(2) as managed:
        assert managed.map(square, [1, 2]) == [1, 4]
    with pytest.raises(ValueError, match="Pool not running"):
        managed.map(square, [1])

    closing = Pool(2)
    pending = closing.imap(square, range(10))
    with pytest.raises(ValueError, match="still running"):
        closing.join()
    closing.close()
    closing.join()
    assert list(pending) == [x * x for x in range(10)]  # work given before close() completes

    stopped = Pool(2)
    running = stopped.apply_async(nap_then_return, (30,))
    stopped.terminate()
    with pytest.raises(ActorDiedError):
        running.get(timeout=30)
    with pytest.raises(ValueError, match="Pool not running"):
        stopped.apply(square, (1,))


# ---------------------------------------------------------------- Queue


def test_queue_between_producer_task_and_consumer_actor(cluster):
    q = Queue(maxsize=2)  # small: the producer must block until the consumer takes
    consumer = Consumer.remote()
    taken = consumer.take.remote(q, 10)
    produced = produce.remote(q, 10)
    assert nebula.get(taken, timeout=60) == list(range(10))
    assert nebula.get(produced, timeout=60) == 10
    assert q.empty() and len(q) == 0
    q.shutdown()


def test_queue_empty_and_full(cluster):
    assert issubclass(Empty, queue.Empty) and issubclass(Full, queue.Full)
    q = Queue(maxsize=2)
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put("a")
    q.put_nowait("b")
    assert q.full() and q.qsize() == 2
    with pytest.raises(Full):
        q.put("c", timeout=0.1)
    with pytest.raises(Full):
        q.put_nowait("c")
    assert [q.get(), q.get(block=False)] == ["a", "b"]
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)


def test_queue_batches(cluster):
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.size() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    asyncio.run(q.put_async("x"))
    assert asyncio.run(q.get_async(timeout=5)) == "x"
    q.shutdown(force=True)
