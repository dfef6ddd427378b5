"""The dashboard's views under load (models and Bokeh in one process, as the page has them): synthetic state
events at 1,000 tasks/s; prints figures, asserts nothing.

    producer thread ──(batches every 0.1 s, like the state feed)──► ClusterFeed
    DocumentThread ──every 0.2 s──► Board.tick: all four views (both filters), Bokeh sources,
                                    and each document change serialized as jupyter_bokeh sends it

Two phases, no cluster and no browser needed:
1. real time: ``--seconds`` of 1,000 tasks/s (each task: submitted, waiting, running,
   finished; half return a stored object, freed 2 s later; two nodes' telemetry every
   second; some objects copied between nodes). Reports how far the views lag behind the
   feed (event made -> applied to the document) and how long a tick takes. Goal: under 250 ms.
2. fast forward: ``--tasks`` tasks as fast as the views take them, reporting the kernel's
   memory (tracemalloc) and the rows the browser would hold, at intervals: both stay bounded.

    python benchmarks/bench_widgets.py [--seconds 10] [--tasks 100000]
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import statistics
import time
import tracemalloc

from bokeh.document import Document
from bokeh.protocol import Protocol

from nebula.state import Event
from nebula.widgets.board import Board
from nebula.widgets.feed import ClusterFeed
from nebula.widgets.pump import DocumentThread
from nebula.widgets.views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView

RATE = 1000            # tasks per second
DELIVERY = 0.1         # seconds between feed batches (the runtime's flush interval)
PERIOD = 0.2           # seconds between view updates
NODES = ["a" * 28, "b" * 28]
WORKERS = {node: [(f"{node[:4]}w{i:012d}", 1000 * n + i) for i in range(8)] for n, node in enumerate(NODES)}
CLIENTS = ["me" * 10, "other" * 4]
FUNCTIONS = [f"stage_{i}" for i in range(10)]


def event(kind, event_id, state, t, **data) -> Event:
    return Event(kind, event_id, state, t, data)


class SyntheticCluster:
    """Events of a busy two-node cluster, task by task, on a clock it is given."""

    def __init__(self, seed: int = 1):
        self.random = random.Random(seed)
        self.ids = itertools.count()
        self.recent: list[str] = []
        self.to_free: list[tuple] = []   # (when, object id, node)

    def task(self, t: float) -> list[Event]:
        task_id = f"{next(self.ids):024x}"
        name, owner = self.random.choice(FUNCTIONS), self.random.choice(CLIENTS)
        deps = [f"{d}0000" for d in self.random.sample(self.recent, min(len(self.recent), 2))]
        node = self.random.choice(NODES)
        worker, pid = self.random.choice(WORKERS[node])
        events = [event("task", task_id, "SUBMITTED", t, name=name, owner=owner, job="1", deps=deps),
                  event("task", task_id, "PENDING_NODE", t + 0.001, name=name),
                  event("task", task_id, "RUNNING", t + 0.002, name=name, node=node, worker=worker, pid=pid),
                  event("task", task_id, "FINISHED", t + 0.01, name=name, start=t + 0.002, end=t + 0.009)]
        if self.random.random() < 0.5:
            events += self._stored_result(task_id, owner, node, t)
        self.recent = (self.recent + [task_id])[-50:]
        return events

    def _stored_result(self, task_id: str, owner: str, node: str, t: float) -> list[Event]:
        object_id, size = f"{task_id}0000", self.random.randint(100_000, 4_000_000)
        events = [event("object", object_id, "SEALED", t + 0.01, size=size, owner=owner, node=node)]
        self.to_free.append((t + 2.0, object_id, node))
        if self.random.random() < 0.05:
            other = NODES[1 - NODES.index(node)]
            events += [event("object", object_id, "TRANSFERRED", t + 0.02, size=size, to=other, node=node),
                       event("object", object_id, "SEALED", t + 0.03, size=size, owner="", node=other)]
            self.to_free.append((t + 2.0, object_id, other))
        return events

    def frees_due(self, t: float) -> list[Event]:
        due = [f for f in self.to_free if f[0] <= t]
        self.to_free = [f for f in self.to_free if f[0] > t]
        return [event("object", object_id, "FREED", when, size=1, node=node) for when, object_id, node in due]

    def telemetry(self, t: float) -> list[Event]:
        return [event("node", node, "TELEMETRY", t, node=node, cpu_percent_per_core=[self.random.uniform(0, 100)] * 16,
                      memory_total=64 * 2**30, memory_used=20 * 2**30, memory_percent=31.0, gpus=[], has_gpu=False,
                      store={"capacity": 8 * 2**30, "used": 2**30, "objects": 100, "spilled": 0,
                             "spilled_bytes": 0, "pinned": 0})
                for node in NODES]


class TimedFeed(ClusterFeed):
    """A ClusterFeed that remembers when each batch arrived and how old its events were then."""

    def __init__(self):
        super().__init__()
        self.arrivals: list[tuple[float, float, int]] = []   # (arrived, oldest event's time, events)
        self.taken: list[tuple[float, float, int]] = []      # the batches the last poll took
        self.events = 0

    def receive(self, batch) -> None:
        with self._lock:
            self.arrivals.append((time.time(), min(e.time for e in batch), len(batch)))
        super().receive(batch)

    def poll(self):
        with self._lock:
            self.taken, self.arrivals = self.arrivals, []
        start_over, events = super().poll()  # a batch arriving in between is counted a tick late
        self.events += len(events)
        return start_over, events


def new_board() -> tuple[Board, TimedFeed, list]:
    """A dashboard's board in a document whose changes are serialized as jupyter_bokeh sends them."""
    board = Board([TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()])
    board.feed = TimedFeed()
    for view in board.views:  # as after a connection: both filters (whole cluster, this client's)
        view.reset(CLIENTS[0])
    document, sent = Document(), [0]
    document.add_root(board.layout)
    protocol = Protocol()

    def serialize(change) -> None:
        message = protocol.create("PATCH-DOC", [change])
        sent[0] += len(message.content_json) + sum(len(b.to_bytes()) for b in message.buffers)
    document.on_change(serialize)
    return board, board.feed, sent


class Measurements:
    """Per tick and per event timings; ``clear()`` drops the warm-up."""

    def __init__(self, board: Board, feed: TimedFeed):
        self.board, self.feed = board, feed
        self.clear()

    def clear(self) -> None:
        self.wall, self.cpu = [], []
        self.behind: list[float] = []   # per event: delivered by the feed -> in the document
        self.age: list[float] = []      # per event: made -> in the document (adds the runtime's batching)
        self.events_before = self.feed.events

    def tick(self) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        self.board.tick()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(time.thread_time() - cpu)
        shown = time.time()
        for arrived, made, count in self.feed.taken:
            self.behind.extend([shown - arrived] * count)
            self.age.extend([shown - made] * count)


def produce(feed: ClusterFeed, cluster: SyntheticCluster, seconds: float) -> int:
    """Deliver ``seconds`` of RATE tasks/s to ``feed`` in DELIVERY-spaced batches; returns the task count."""
    produced, begin = 0, time.time()
    next_batch = begin
    while time.time() - begin < seconds:
        next_batch += DELIVERY
        now = time.time()
        batch = []
        for i in range(int(RATE * DELIVERY)):
            batch += cluster.task(now - DELIVERY + i / RATE)
        batch += cluster.frees_due(now)
        if int(now) != int(now - DELIVERY):
            batch += cluster.telemetry(now)
        produced += int(RATE * DELIVERY)
        feed.receive(batch)
        time.sleep(max(0.0, next_batch - time.time()))
    return produced


def real_time(seconds: float, warm_up: float = 3.0) -> None:
    board, feed, sent = new_board()
    measured = Measurements(board, feed)
    pump = DocumentThread(measured.tick, PERIOD, name="bench-views")
    pump.start()
    cluster = SyntheticCluster()
    produce(feed, cluster, warm_up)  # nodes appear, the graph switches to groups: one-off costs
    first = max(measured.wall)
    measured.clear()
    sent[0] = 0
    produced = produce(feed, cluster, seconds)
    time.sleep(2 * PERIOD)
    pump.stop()
    events = feed.events - measured.events_before
    print(f"real time: {produced} tasks in {seconds:.0f} s after {warm_up:.0f} s of warm-up "
          f"({produced / seconds:.0f} tasks/s, {events / seconds:.0f} events/s), {len(measured.wall)} ticks")
    print(f"  lag behind the feed (delivered -> in the document), per event: {_spread(measured.behind)} "
          "(goal < 250 ms)")
    print(f"  age of an event when shown (made -> in the document): {_spread(measured.age)}")
    print(f"  tick (drain + 4 views x 2 filters + Bokeh + serializing): median "
          f"{1e3 * statistics.median(measured.wall):.1f} ms wall, {1e3 * statistics.median(measured.cpu):.1f} ms "
          f"CPU, max {1e3 * max(measured.wall):.1f} ms wall; slowest warm-up tick (new nodes' history lines) "
          f"{1e3 * first:.0f} ms; {sent[0] / seconds / 1024:.0f} KiB/s to the browser; events dropped: {feed.dropped}")
    print(f"  machine load (1 min average) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times include "
          "waiting for a CPU")


def _spread(seconds: list) -> str:
    ordered = sorted(seconds)
    pick = lambda q: 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"median {pick(0.5):.0f} ms, p95 {pick(0.95):.0f} ms, max {1e3 * ordered[-1]:.0f} ms"


def fast_forward(total: int, report_every: int) -> None:
    board, feed, _ = new_board()
    cluster = SyntheticCluster(seed=2)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t, started = 1_000_000.0, time.perf_counter()
    batch_tasks = int(RATE * PERIOD)
    print(f"fast forward: {total} tasks, {batch_tasks} per tick")
    for done in range(batch_tasks, total + 1, batch_tasks):
        batch = []
        for _ in range(batch_tasks):
            t += 1 / RATE
            batch += cluster.task(t)
        batch += cluster.frees_due(t) + cluster.telemetry(t)
        feed.receive(batch)
        board.tick(now=t)
        if done % report_every == 0:
            gc.collect()
            memory = tracemalloc.get_traced_memory()[0] - base
            rows = sum(len(next(iter(s.data.values()), [])) for v in board.views for s in v.sources.values())
            print(f"  {done:>7} tasks: kernel memory {memory / 2**20:6.1f} MiB, rows held for the browser {rows:>6}, "
                  f"{done / (time.perf_counter() - started):,.0f} tasks/s through the views")
    tracemalloc.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the real-time phase")
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in the fast-forward phase")
    args = parser.parse_args(argv)
    real_time(args.seconds)
    fast_forward(args.tasks, report_every=max(args.tasks // 10, 1000))


if __name__ == "__main__":
    main()
