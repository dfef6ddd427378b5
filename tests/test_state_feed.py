"""The state feed's task events on a real cluster: who reports what, and what each carries.

The owner reports a task's submission (and a wait for a worker once its arguments are
ready) and its end, FINISHED or FAILED with the run's start, end and place, which the result
and the lease tell it; the worker reports RUNNING, only for a run still going at its next
flush. What ends without a run (a crash, a cancellation) the owner reports too.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

import nebula
from nebula.exceptions import WorkerCrashedError
from polling import wait_until

pytestmark = pytest.mark.timeout(60)


@nebula.remote
def quick(x):
    return x


@nebula.remote
def slow(seconds):
    time.sleep(seconds)
    return seconds


@nebula.remote(max_retries=0)
def crash():
    os._exit(3)


class Recorder:
    def __init__(self, **options):
        self.events, self.lock = [], threading.Lock()
        self.subscription = nebula.state.subscribe(self._take, **options)
        # The node switches the feed on in every process by a message of its own: once a task's
        # end has come back, the workers have had theirs too.
        self.wait_for(quick.remote(0).task_id(), "FINISHED")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.subscription.close()

    def _take(self, batch):
        with self.lock:
            self.events.extend(batch)

    def of(self, task_id: str) -> list:
        with self.lock:
            return [e for e in self.events if e.kind == "task" and e.id == task_id]

    def wait_for(self, task_id: str, state: str) -> list:
        assert wait_until(lambda: any(e.state == state for e in self.of(task_id)), 10), self.of(task_id)
        return self.of(task_id)


def test_a_short_task_is_reported_by_its_owner_with_where_it_ran(cluster):
    recorder = Recorder()
    try:
        ref = quick.remote(nebula.put(7))
        assert nebula.get(ref) == 7
        events = recorder.wait_for(ref.task_id(), "FINISHED")
        me, node = nebula.get_runtime_context().get_worker_id(), nebula.get_runtime_context().get_node_id()
        [submitted] = [e for e in events if e.state == "SUBMITTED"]
        assert submitted.get("owner") == me and len(submitted.get("deps")) == 1
        [done] = [e for e in events if e.state == "FINISHED"]
        assert done.get("node") == node and done.get("worker") and done.get("pid") != os.getpid()
        assert done.get("owner") == me and done.get("start") <= done.get("end") <= time.time()
        states = [e.state for e in events]  # PENDING_NODE too, unless a worker was leased already
        assert states[0] == "SUBMITTED" and states[-1] == "FINISHED" and "RUNNING" not in states  # over before a flush
    finally:
        recorder.subscription.close()


def test_a_long_task_is_reported_running_with_its_start(cluster):
    recorder = Recorder()
    try:
        ref = slow.remote(0.6)
        running = recorder.wait_for(ref.task_id(), "RUNNING")
        [event] = [e for e in running if e.state == "RUNNING"]
        assert event.get("pid") and event.get("node") and event.get("owner") == nebula.get_runtime_context().get_worker_id()
        nebula.get(ref)
        [done] = [e for e in recorder.wait_for(ref.task_id(), "FINISHED") if e.state == "FINISHED"]
        assert event.time == pytest.approx(done.get("start"), abs=0.05)
    finally:
        recorder.subscription.close()


def test_a_run_that_ends_without_its_worker_is_reported_failed(cluster):
    recorder = Recorder()
    try:
        ref = crash.remote()
        with pytest.raises(WorkerCrashedError):
            nebula.get(ref)
        [failed] = [e for e in recorder.wait_for(ref.task_id(), "FAILED") if e.state == "FAILED"]
        assert "WorkerCrashedError" in failed.get("error")
        assert failed.get("owner") == nebula.get_runtime_context().get_worker_id()
    finally:
        recorder.subscription.close()


def test_a_coalescing_subscriber_gets_one_event_per_task_per_batch(cluster):
    recorder = Recorder(kinds=["task"], coalesce=True)
    try:
        refs = [quick.remote(i) for i in range(200)]
        nebula.get(refs)
        for ref in refs:
            recorder.wait_for(ref.task_id(), "FINISHED")
        with recorder.lock:
            assert {e.kind for e in recorder.events} == {"task"}
        finished = [e for ref in refs for e in recorder.of(ref.task_id()) if e.state == "FINISHED"]
        assert len(finished) == 200  # one end each, whatever else was folded into it
        assert all(e.get("start") and e.get("end") for e in finished)
    finally:
        recorder.subscription.close()


def test_coalescing_keeps_the_furthest_state_whatever_order_the_paths_delivered():
    """One path's events can arrive after the other's (a worker's RUNNING after the owner's
    FINISHED, an actor's call ended before its caller's SUBMITTED): folding keeps the furthest."""
    from nebula.state import Event, coalesce
    finished = Event("task", "t1", "FINISHED", 2.0, {"worker": "w", "start": 1.5, "end": 2.0})
    submitted = Event("task", "t1", "SUBMITTED", 1.0, {"name": "f", "owner": "me", "deps": ()})
    node = Event("node", "n1", "TELEMETRY", 1.7, {})
    retried = [Event("task", "t2", "FAILED", 1.0, {"error": "x"}), Event("task", "t2", "FINISHED", 3.0, {})]
    folded = coalesce([finished, node, submitted, *retried])
    assert [(e.kind, e.id, e.state, e.time) for e in folded] == [
        ("task", "t1", "FINISHED", 2.0), ("node", "n1", "TELEMETRY", 1.7), ("task", "t2", "FINISHED", 3.0)]
    assert folded[0].data == {"worker": "w", "start": 1.5, "end": 2.0, "name": "f", "owner": "me", "deps": ()}
    assert finished.data == {"worker": "w", "start": 1.5, "end": 2.0}  # the originals are not changed


@nebula.remote(max_retries=0)
def raises():
    raise ValueError("no good")


def test_a_run_that_raised_is_reported_failed_with_the_error_and_where_it_ran(cluster):
    with Recorder() as recorder:
        ref = raises.remote()
        with pytest.raises(ValueError):
            nebula.get(ref)
        [failed] = [e for e in recorder.wait_for(ref.task_id(), "FAILED") if e.state == "FAILED"]
    assert failed.get("error") == "ValueError: no good" and failed.get("name") == "raises"
    assert failed.get("owner") == nebula.get_runtime_context().get_worker_id()
    assert failed.get("pid") != os.getpid() and failed.get("worker") and failed.get("start") <= failed.get("end")
    assert failed.get("node") == nebula.get_runtime_context().get_node_id()


def test_a_subscriber_taking_stretches_of_task_events_gets_every_task_of_a_burst(cluster):
    """``subscribe(kinds=["task"], stretches=True)``: a burst of short tasks comes partly as
    stretches, and unfolded they hold every task's end, once."""
    from nebula.state import STRETCH, unfold
    with Recorder(kinds=["task"], stretches=True) as recorder:
        refs = [quick.remote(i) for i in range(2000)]
        nebula.get(refs)
        wanted = {ref.task_id() for ref in refs}

        def ends() -> list:
            with recorder.lock:
                return [e.id for e in unfold(recorder.events) if e.state == "FINISHED" and e.id in wanted]
        assert wait_until(lambda: len(ends()) >= len(wanted), 10), len(ends())
        assert sorted(ends()) == sorted(wanted)
        assert any(e.kind == STRETCH for e in recorder.events)
        assert {e.kind for e in recorder.events} <= {"task", STRETCH}


def test_a_batch_that_cannot_be_made_into_a_subscribers_form_costs_itself_only(cluster, caplog):
    """Rows a process got wrong (an end without a start) are logged and dropped; the delivery
    thread goes on with the next batch."""
    from nebula.session import current_session
    from nebula.state_events import FeedBatch
    with Recorder(stretches=True) as recorder:
        events = current_session().events
        events.deliver(FeedBatch([], [], ("me", "job1"), [("bad1", "f", None, 1.0, "n", "w", 1),
                                                          ("bad2", "f", None, 1.0, "n", "w", 1)]))
        ref = quick.remote(1)
        assert nebula.get(ref) == 1
        recorder.wait_for(ref.task_id(), "FINISHED")
    assert not [e for e in recorder.events if e.id.startswith("bad")]
    assert "could not be made into with_stretches" in caplog.text


def test_a_feed_batch_crosses_processes_as_rows_and_arrives_as_events_in_each_tasks_order():
    """Submissions and ends travel as rows; the receiver gets the same Events a per-event
    record would give, submissions first and ends last, so no task's own order changes."""
    import msgspec
    from nebula.state import Event
    from nebula.state_events import FeedBatch
    running = Event("task", "t1", "RUNNING", 2.0, {"name": "f", "owner": "me", "node": "n", "worker": "w", "pid": 9})
    batch = FeedBatch([running], [("t2", "g", ("obj1",), 1.5)], ("me", "job1"), [("t1", "f", 2.0, 2.5, "n", "w", 9)])
    received = msgspec.msgpack.Decoder(FeedBatch).decode(msgspec.msgpack.encode(batch)).events()
    assert received == batch.events()
    assert [(e.id, e.state, e.time) for e in received] == [("t2", "SUBMITTED", 1.5), ("t1", "RUNNING", 2.0),
                                                          ("t1", "FINISHED", 2.5)]
    assert received[0].data == {"name": "g", "owner": "me", "job": "job1", "deps": ("obj1",)}
    assert received[2].data == {"name": "f", "owner": "me", "job": "job1", "node": "n", "worker": "w", "pid": 9,
                                "start": 2.0, "end": 2.5}


def test_a_batch_coalesced_from_its_rows_equals_its_events_coalesced():
    """``FeedBatch.coalesced()`` makes one Event for a task submitted and finished within the
    batch; whatever the mix, it must equal folding the batch's events one by one."""
    import random
    from nebula.state import Event, coalesce
    from nebula.state_events import FeedBatch
    rng = random.Random(7)
    for _ in range(300):
        ids = [f"t{i}" for i in range(rng.randint(1, 6))]
        submitted = [(t, "f", (f"o{t}",) if rng.random() < 0.3 else (), 1.0 + i) for i, t in enumerate(ids)
                     if rng.random() < 0.8]
        submitted += rng.sample(submitted, k=min(len(submitted), rng.randint(0, 1)))  # a resubmission
        finished = [(t, "f", 2.0, 3.0 + i, "n", "w", 9) for i, t in enumerate(ids) if rng.random() < 0.7]
        recorded = [Event("task", rng.choice(ids), rng.choice(["PENDING_NODE", "RUNNING", "FAILED"]), 1.5,
                          {"name": "f", "error": "x"}) for _ in range(rng.randint(0, 2))]
        recorded += [Event("object", "o1", "SEALED", 1.2, {"size": 8})] if rng.random() < 0.3 else []
        batch = FeedBatch(recorded, submitted, ("me", "job1"), finished)
        assert batch.coalesced() == coalesce(batch.events()), batch


def _without_empty_deps(events) -> list:
    """Events comparable whether they were folded or unfolded (an empty ``deps`` left out)."""
    from nebula.state import Event
    return sorted((Event(e.kind, e.id, e.state, e.time, {k: v for k, v in e.data.items() if k != "deps" or v})
                   for e in events), key=lambda e: (e.id, e.state))


def test_a_batch_with_stretches_folds_short_back_to_back_tasks_of_a_function_on_a_worker():
    """Two or more short tasks of one function that ran back to back on one worker become one
    FINISHED "tasks" event; a gap, another worker, a long run, ObjectRef arguments or another
    event of the task in the batch break a stretch. Submissions of tasks still to end come as
    one SUBMITTED stretch per function."""
    from nebula.state import STRETCH, Event, unfold
    from nebula.state_events import FeedBatch
    ids = [f"t{i}" for i in range(12)]
    submitted = [(t, "f", ("o1",) if t == "t9" else (), 1.0) for t in ids if t != "t11"]
    submitted += [("s1", "f", (), 1.1), ("s2", "g", (), 1.2), ("s3", "f", (), 1.3), ("s4", "f", ("o1",), 1.4)]
    at = [2.000, 2.002, 2.004, 2.006, 2.008, 2.060, 2.062, 2.000, 2.100, 2.102, 2.104, 2.106]
    finished = [(t, "f", start, start + (0.02 if t == "t8" else 0.001), "n", "w2" if t == "t7" else "w1",
                 8 if t == "t7" else 9) for t, start in zip(ids, at)]
    recorded = [Event("task", "t10", "PENDING_NODE", 1.5, {"name": "f"})]
    batch = FeedBatch(recorded, submitted, ("me", "job1"), finished)
    events = batch.with_stretches()
    stretches = [e for e in events if e.kind == STRETCH]
    assert [(e.state, e.id, e.data["count"]) for e in stretches] == [
        ("SUBMITTED", "s1", 2), ("FINISHED", "t0", 5), ("FINISHED", "t5", 2)]
    assert [row[0] for row in stretches[0].data["rows"]] == ["s1", "s3"] and stretches[0].time == 1.3
    ended = stretches[1]
    assert (ended.data["start"], ended.data["end"], ended.time) == (2.0, pytest.approx(2.009), pytest.approx(2.009))
    assert ended.data["busy"] == pytest.approx(0.005)
    assert (ended.data["owner"], ended.data["job"], ended.data["pid"]) == ("me", "job1", 9)
    assert _without_empty_deps(unfold(events)) == _without_empty_deps(batch.coalesced())


def test_a_batch_with_stretches_unfolds_to_its_coalesced_events():
    """Whatever the mix, a batch's stretches unfolded give exactly its coalesced events."""
    import collections
    import random
    from nebula.state import STRETCH, Event, unfold
    from nebula.state_events import FeedBatch
    rng, made = random.Random(11), collections.Counter()
    for _ in range(300):
        ids = [f"t{i}" for i in range(rng.randint(1, 12))]
        names = {t: rng.choice("ffg") for t in ids}
        submitted = [(t, names[t], ("o",) if rng.random() < 0.1 else (), 1.0) for t in ids if rng.random() < 0.8]
        submitted += rng.sample(submitted, k=min(len(submitted), int(rng.random() < 0.05)))  # a resubmission
        clock, finished = 2.0, []
        for t in ids:
            if rng.random() < 0.7:
                clock += rng.choice([0.001, 0.002, 0.03])
                took = rng.choice([0.0005, 0.001, 0.05])
                finished.append((t, names[t], clock, clock + took, "n", "w", rng.choice([1, 2])))
                clock += took
        recorded = [Event("task", rng.choice(ids), "RUNNING", 1.5, {"name": "f"})] if rng.random() < 0.2 else []
        batch = FeedBatch(recorded, submitted, ("me", "job1"), finished)
        stretched = batch.with_stretches()
        made.update(event.state for event in stretched if event.kind == STRETCH)
        assert _without_empty_deps(unfold(stretched)) == _without_empty_deps(batch.coalesced()), batch
    assert made["SUBMITTED"] > 50 and made["FINISHED"] > 50  # the mixes did make stretches of both kinds


def test_a_flush_keeps_the_rows_another_thread_appends_while_it_takes_them():
    """Submissions are appended on the calling thread while the I/O thread flushes: every row
    must be shipped exactly once (listing then clearing the queue dropped some)."""
    import collections
    import sys
    from nebula.events import _drain
    rows, shipped, done = collections.deque(), [], threading.Event()

    def submit():
        for i in range(200_000):
            rows.append(i)
        done.set()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        submitter = threading.Thread(target=submit)
        submitter.start()
        while not done.is_set():
            shipped.extend(_drain(rows))
        submitter.join()
    finally:
        sys.setswitchinterval(interval)
    shipped.extend(_drain(rows))
    assert shipped == list(range(200_000))
