"""Actors on a real cluster: state, ordering, concurrency, names, lifetimes, restarts and deaths."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import nebula
from nebula.exceptions import ActorDiedError, TaskCancelledError, TaskError

from driver_process import joining_env, run_driver
from polling import wait_until

pytestmark = pytest.mark.timeout(60)


@nebula.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@nebula.remote
def call_increment(counter, times):
    return nebula.get([counter.increment.remote() for _ in range(times)])[-1]


def test_counter_keeps_state(cluster):
    counter = Counter.remote(10)
    assert nebula.get(counter.increment.remote()) == 11
    assert nebula.get(counter.increment.remote(by=5)) == 16
    assert nebula.get(counter.get.remote()) == 16


@nebula.remote
class Log:
    def __init__(self):
        self.items = []

    def append(self, item):
        self.items.append(item)

    def items_(self):
        return self.items


def test_calls_from_one_caller_run_in_submission_order(cluster):
    log = Log.remote()
    for i in range(200):
        log.append.remote(i)
    assert nebula.get(log.items_.remote(), timeout=30) == list(range(200))


def test_calls_stay_behind_an_earlier_call_that_waits_for_its_ref_argument(cluster):
    """Calls without ref arguments go straight from the calling thread; they must still queue
    behind earlier calls whose arguments are not ready yet."""
    @nebula.remote
    def slowly(value):
        time.sleep(0.5)
        return value

    log = Log.remote()
    assert nebula.get(log.items_.remote(), timeout=30) == []  # alive and linked: the direct path is open
    log.append.remote(0)
    log.append.remote(slowly.remote(1))
    for i in range(2, 50):
        log.append.remote(i)
    assert nebula.get(log.items_.remote(), timeout=30) == list(range(50))


def test_actor_method_arguments_can_be_refs(cluster):
    counter = Counter.remote()
    pending = [nebula.put(3), Counter.remote(5).get.remote()]
    assert nebula.get(counter.increment.remote(pending[0])) == 3
    assert nebula.get(counter.increment.remote(by=pending[1])) == 8


def test_actor_method_errors_are_task_errors_and_the_actor_lives_on(cluster):
    @nebula.remote
    class Fragile:
        def fail(self):
            raise KeyError("missing")

        def ok(self):
            return "ok"

    actor = Fragile.remote()
    with pytest.raises(KeyError) as info:
        nebula.get(actor.fail.remote())
    assert isinstance(info.value, TaskError) and "missing" in str(info.value)
    assert nebula.get(actor.ok.remote()) == "ok"


def test_max_concurrency_runs_calls_on_threads_at_once(cluster):
    @nebula.remote(max_concurrency=4)
    class Gathering:
        def __init__(self):
            self.barrier = threading.Barrier(4, timeout=10)

        def meet(self):
            self.barrier.wait()  # returns only when 4 calls are inside at the same time
            return threading.current_thread().name

    actor = Gathering.remote()
    threads = nebula.get([actor.meet.remote() for _ in range(4)], timeout=30)
    assert len(set(threads)) == 4


def test_async_methods_interleave_on_one_event_loop(cluster):
    @nebula.remote
    class AsyncActor:
        def __init__(self):
            self.event = None

        async def wait_for_signal(self):
            self.event = self.event or asyncio.Event()
            await asyncio.wait_for(self.event.wait(), 10)
            return "released"

        async def signal(self):
            self.event = self.event or asyncio.Event()
            self.event.set()
            return "sent"

    actor = AsyncActor.remote()
    waiting = actor.wait_for_signal.remote()
    time.sleep(0.2)
    assert nebula.get(actor.signal.remote(), timeout=20) == "sent"
    assert nebula.get(waiting, timeout=20) == "released"


def test_method_with_num_returns(cluster):
    @nebula.remote
    class Splitter:
        @nebula.method(num_returns=2)
        def split(self, pair):
            return pair[0], pair[1]

        def whole(self):
            return (1, 2)

    actor = Splitter.remote()
    first, second = actor.split.remote(("a", "b"))
    assert nebula.get([first, second]) == ["a", "b"]
    assert nebula.get(actor.whole.remote()) == (1, 2)
    x, y = actor.whole.options(num_returns=2).remote()
    assert nebula.get([x, y]) == [1, 2]


# ---- names and namespaces ----------------------------------------------------------------

def test_named_actor_get_actor_and_get_if_exists(cluster):
    counter = Counter.options(name="shared-counter").remote()
    nebula.get(counter.increment.remote())
    found = nebula.get_actor("shared-counter")
    assert nebula.get(found.increment.remote()) == 2
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    again = Counter.options(name="shared-counter", get_if_exists=True).remote()
    assert nebula.get(again.get.remote()) == 2
    with pytest.raises(ValueError, match="no-such-actor"):
        nebula.get_actor("no-such-actor")
    nebula.kill(counter)


def test_names_are_scoped_by_namespace(cluster):
    a = Counter.options(name="same-name", namespace="team-a").remote(1)
    b = Counter.options(name="same-name", namespace="team-b").remote(2)
    assert nebula.get(nebula.get_actor("same-name", namespace="team-a").get.remote()) == 1
    assert nebula.get(nebula.get_actor("same-name", namespace="team-b").get.remote()) == 2
    with pytest.raises(ValueError):
        nebula.get_actor("same-name")  # this driver's namespace has none
    nebula.kill(a)
    nebula.kill(b)


def test_detached_actor_survives_its_creating_driver(cluster):
    result = run_driver("""
        import nebula
        nebula.init()

        @nebula.remote
        class Store:
            def __init__(self):
                self.items = []
            def add(self, item):
                self.items.append(item)
                return len(self.items)
            def items_(self):
                return self.items

        kept = Store.options(name="kept", namespace="jobs", lifetime="detached").remote()
        gone = Store.options(name="gone", namespace="jobs").remote()
        print(nebula.get(kept.add.remote("from the first driver")), nebula.get(gone.add.remote("x")))
    """, joining_env(cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
    kept = nebula.get_actor("kept", namespace="jobs")
    assert nebula.get(kept.add.remote("from the test")) == 2
    assert nebula.get(kept.items_.remote()) == ["from the first driver", "from the test"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the non-detached actor dies with its owner
        try:
            nebula.get_actor("gone", namespace="jobs")
        except ValueError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a non-detached named actor outlived the driver that created it")
    nebula.kill(kept)


# ---- handles travel ----------------------------------------------------------------------

def test_handle_passed_to_tasks(cluster):
    counter = Counter.remote()
    assert nebula.get([call_increment.remote(counter, 3), call_increment.remote(counter, 3)], timeout=30)
    assert nebula.get(counter.get.remote()) == 6


def test_handle_passed_to_another_actor(cluster):
    @nebula.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def forward(self, by):
            return nebula.get(self.target.increment.remote(by))

    counter = Counter.remote()
    forwarder = Forwarder.remote(counter)
    assert nebula.get(forwarder.forward.remote(4), timeout=30) == 4
    assert nebula.get(counter.get.remote()) == 4


def test_refs_kept_by_an_actor_outlive_the_callers_handles(cluster):
    import numpy as np

    @nebula.remote
    class Keeper:
        def keep(self, refs):
            self.refs = refs
            return True

        def read(self):
            return int(nebula.get(self.refs[0]).sum()), nebula.get(self.refs[1])

    keeper = Keeper.remote()
    big, small = nebula.put(np.ones(1 << 20, dtype=np.int64)), nebula.put("small")
    assert nebula.get(keeper.keep.remote([big, small]))
    del big, small
    import gc
    gc.collect()
    time.sleep(0.5)
    assert nebula.get(keeper.read.remote(), timeout=20) == (1 << 20, "small")


def test_four_actors_alive_on_two_cpus(cluster):
    actors = [Counter.remote(i) for i in range(4)]
    assert nebula.get([a.get.remote() for a in actors], timeout=30) == [0, 1, 2, 3]
    pids = nebula.get([a.pid.remote() for a in actors])
    assert len(set(pids)) == 4
    # actors hold no CPU while alive, so tasks still run
    assert nebula.get(call_increment.remote(actors[0], 1), timeout=30) == 1


# ---- deaths, restarts, exits -------------------------------------------------------------

def test_kill_makes_later_calls_fail_with_actor_died_error(cluster):
    counters = [Counter.remote() for _ in range(3)]
    pids = nebula.get([c.pid.remote() for c in counters], timeout=30)
    for counter in counters:
        nebula.kill(counter)
        with pytest.raises(ActorDiedError, match="kill"):  # even while its process is still exiting
            nebula.get(counter.increment.remote(), timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_max_restarts_rebuilds_state_with_init_then_gives_up(cluster):
    @nebula.remote(max_restarts=1)
    class Phoenix:
        def __init__(self):
            self.calls = 0

        def call(self):
            self.calls += 1
            return self.calls, os.getpid()

        def crash(self):
            os._exit(1)

    actor = Phoenix.remote()
    nebula.get(actor.call.remote())
    calls, first_pid = nebula.get(actor.call.remote())
    assert calls == 2
    with pytest.raises(ActorDiedError):
        nebula.get(actor.crash.remote(), timeout=20)
    calls, second_pid = nebula.get(actor.call.remote(), timeout=20)
    assert calls == 1 and second_pid != first_pid  # a new process, state rebuilt by __init__
    with pytest.raises(ActorDiedError):
        nebula.get(actor.crash.remote(), timeout=20)
    with pytest.raises(ActorDiedError) as info:
        nebula.get(actor.call.remote(), timeout=20)  # restarts exhausted
    assert "exit code 1" in str(info.value)


def test_init_failure_gives_actor_died_error_with_the_traceback(cluster):
    @nebula.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot start: missing config")

        def method(self):
            return 1

    actor = Broken.remote()
    with pytest.raises(ActorDiedError) as info:
        nebula.get(actor.method.remote(), timeout=20)
    text = str(info.value)
    assert "cannot start: missing config" in text and "RuntimeError" in text and "__init__" in text


def test_exit_actor_ends_the_actor(cluster):
    @nebula.remote
    class Quitter:
        def quit(self):
            nebula.actor.exit_actor()

        def ping(self):
            return "pong"

    actor = Quitter.remote()
    assert nebula.get(actor.ping.remote()) == "pong"
    quit_ref, queued_ref = actor.quit.remote(), actor.ping.remote()  # the second waits behind the first
    for ref in (quit_ref, queued_ref):
        with pytest.raises(ActorDiedError, match="exit_actor"):
            nebula.get(ref, timeout=20)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        nebula.get(actor.ping.remote(), timeout=20)


def test_exit_actor_outside_an_actor_is_refused(cluster):
    with pytest.raises(TypeError, match="actor"):
        nebula.actor.exit_actor()


def test_actor_class_cannot_be_instantiated_directly(cluster):
    with pytest.raises(TypeError, match=r"Counter\.remote"):
        Counter()


# ---- where a method runs -----------------------------------------------------------------

class _ContextReporter:
    def report(self):
        ctx = nebula.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_task_id(), ctx.get_job_id()


class _AsyncContextReporter:
    async def report(self):
        ctx = nebula.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_task_id(), ctx.get_job_id()


@pytest.mark.parametrize("kind", ["plain", "threaded", "async"])
def test_runtime_context_inside_actor_methods(cluster, kind):
    cls = _AsyncContextReporter if kind == "async" else _ContextReporter
    options = {"max_concurrency": 3} if kind == "threaded" else {}
    first, second = nebula.remote(**options)(cls).remote(), nebula.remote(**options)(cls).remote()
    refs = [first.report.remote(), first.report.remote(), second.report.remote()]
    (a1, t1, j1), (a2, _t2, _j2), (b1, _tb, _jb) = nebula.get(refs, timeout=30)
    assert a1 is not None and a1 == a2 and b1 is not None and a1 != b1
    assert j1 == cluster["job_id"]
    assert t1 == refs[0].task_id()  # async calls interleave on one thread, yet each knows its own


def test_many_callers_share_one_actor_without_dropped_links(cluster):
    """Regression: a connection's reader task, held only weakly by asyncio, was collected mid-call."""
    @nebula.remote
    class Tally:
        def __init__(self):
            self.n = 0

        def add(self):
            self.n += 1

        def read(self):
            return self.n

    @nebula.remote
    def add_many(tally, times):
        for _ in range(times):
            tally.add.remote()
        return nebula.get(tally.read.remote())

    tally = Tally.remote()
    for _ in range(3):
        nebula.get([add_many.remote(tally, 100) for _ in range(4)], timeout=60)
    assert nebula.get(tally.read.remote(), timeout=30) == 1200


def test_a_restarted_actor_knows_it_was_reconstructed(cluster):
    @nebula.remote(max_restarts=1)
    class Phoenix:
        def status(self):
            return os.getpid(), nebula.get_runtime_context().was_current_actor_reconstructed

        def die(self):
            os._exit(1)

    phoenix = Phoenix.remote()
    first_pid, reconstructed = nebula.get(phoenix.status.remote(), timeout=30)
    assert reconstructed is False
    phoenix.die.remote()
    deadline = time.monotonic() + 30
    while True:
        try:
            pid, reconstructed = nebula.get(phoenix.status.remote(), timeout=30)
            break
        except nebula.exceptions.ActorDiedError:  # calls made while it restarts fail
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert pid != first_pid and reconstructed is True


@nebula.remote
class _Sleeper:
    async def sleep(self, seconds, started_file=None):
        if started_file:
            open(started_file, "w").close()  # tells the test this call is the running one
        await asyncio.sleep(seconds)
        return seconds

    async def ping(self):
        return "pong"


def test_cancel_interrupts_a_running_async_actor_call_and_keeps_the_actor(cluster, tmp_path):
    sleeper = _Sleeper.options(max_concurrency=1).remote()
    assert nebula.get(sleeper.ping.remote(), timeout=30) == "pong"
    started = tmp_path / "started"
    running = sleeper.sleep.remote(30, str(started))
    waiting = sleeper.sleep.remote(30)  # waits for its turn behind the running one
    assert wait_until(started.exists, timeout=30), "the first call never started"
    nebula.cancel(waiting)
    nebula.cancel(running)
    for ref in (running, waiting):
        with pytest.raises(TaskCancelledError):
            nebula.get(ref, timeout=10)
    assert nebula.get(sleeper.ping.remote(), timeout=10) == "pong"
