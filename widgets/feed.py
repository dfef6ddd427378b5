"""The views' one source of data: ``nebula.state`` events, buffered off the delivery thread.

    nebula.state.subscribe() ──(delivery thread)──► ClusterFeed buffer (bounded, locked)
                                                   │ poll(), on the thread or loop that owns
                                                   ▼ the document, every update period
        (start_over, events): the snapshot as seed events first, then the feed's events since
        the last poll, each task's folded into one (nebula.state.coalesce), short back-to-back
        tasks of one function on one worker as stretches ("tasks" events)

``poll()`` follows the process's connection: before ``nebula.init()`` it returns nothing;
after an init (or a re-init: a new client id) it subscribes, takes a snapshot and says to
start over, so views rebuild their models from the seed events.
"""
from __future__ import annotations

import collections
import logging
import threading

import nebula
from nebula.state import STRETCH, Event

log = logging.getLogger("nebula.widgets")
BUFFER_LIMIT = 200_000


class ClusterFeed:
    """Events for one set of views; ``poll()`` from one thread, delivery from another."""

    def __init__(self, limit: int = BUFFER_LIMIT):
        self._lock = threading.Lock()
        self._buffer: collections.deque = collections.deque()
        self._limit = limit
        self._held = 0  # events in the buffer, a stretch counting as its tasks
        self._subscription = None
        self.client_id: str | None = None
        self.node_id: str | None = None
        self.dropped = 0

    @property
    def connected(self) -> bool:
        return self._subscription is not None

    def poll(self) -> tuple[bool, list[Event]]:
        """(start_over, events): start_over is True when the views must reset before applying ``events``."""
        client = current_client_id()
        if client != self.client_id:
            self._unsubscribe()
            self.client_id = client
            return True, (self._connect() if client else [])
        with self._lock:
            events, self._buffer, self._held = list(self._buffer), collections.deque(), 0
        return False, nebula.state.coalesce(events)  # a task's events of the whole period as one

    def close(self) -> None:
        self._unsubscribe()
        self.client_id = None

    def receive(self, batch: list[Event]) -> None:
        """The subscription's callback (the delivery thread): buffer ``batch`` for the next poll
        (at most ``limit`` events, a stretch counting as one per task it holds)."""
        with self._lock:
            self._buffer.extend(batch)
            self._held += events_in(batch)
            while self._held > self._limit:  # the views fell far behind: drop the oldest events, and say so
                dropped = events_in((self._buffer.popleft(),))
                self._held -= dropped
                self.dropped += dropped

    def _connect(self) -> list[Event]:
        try:
            # poll() folds across batches; short back-to-back tasks come as stretches (the views
            # draw those together anyway)
            self._subscription = nebula.state.subscribe(self.receive, stretches=True)
            snapshot = nebula.state.snapshot()
        except Exception:  # the cluster went away meanwhile: try again on the next poll
            log.warning("could not subscribe to the cluster's state feed", exc_info=True)
            self._unsubscribe()
            self.client_id = None
            return []
        self.node_id = nebula.get_runtime_context().get_node_id()
        return seed_events(snapshot, self.client_id)

    def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        with self._lock:
            self._buffer.clear()
            self._held = 0
        if subscription is not None:
            try:
                subscription.close()
            except Exception:  # the session may be gone already
                log.debug("closing a state subscription failed", exc_info=True)


def events_in(events) -> int:
    """How many events ``events`` stand for, a stretch counting as one per task it holds."""
    return len(events) + sum(event.data["count"] - 1 for event in events if event.kind == STRETCH)


def current_client_id() -> str | None:
    """This process's client id in the cluster, or None before ``nebula.init()``."""
    if not nebula.is_initialized():
        return None
    try:
        return nebula.get_runtime_context().get_worker_id()
    except Exception:  # shut down meanwhile
        return None


def seed_events(snapshot, client_id: str | None) -> list[Event]:
    """The cluster as ``snapshot`` saw it, as events the view models take like any other."""
    t = snapshot.time
    node_ids = [n["node_id"] for n in snapshot.nodes]
    only_node = node_ids[0] if len(node_ids) == 1 else ""
    events = [_event("node", n["node_id"], "SNAPSHOT", t, store=dict(n["store"]), alive=n["alive"])
              for n in snapshot.nodes]
    events += _actor_events(snapshot, t, only_node)
    events += _object_events(snapshot, t)
    events += _task_events(snapshot, t, client_id, only_node)
    return events


def _actor_events(snapshot, t: float, only_node: str) -> list[Event]:
    workers = {w["actor_id"]: w["worker_id"] for w in snapshot.workers if w.get("actor_id")}
    return [_event("actor", a["actor_id"], a["state"], t, pid=a.get("pid"), class_name=a.get("class_name", ""),
                   name=a.get("name", ""), worker=workers.get(a["actor_id"], ""), node=a.get("node", only_node))
            for a in snapshot.actors]


def _object_events(snapshot, t: float) -> list[Event]:
    events = []
    for o in snapshot.objects:
        if o["state"] != "SEALED":
            continue
        events.append(_event("object", o["object_id"], "SEALED", t, size=o["size"], owner=o["owner"], node=o["node"]))
        if o.get("spilled"):
            events.append(_event("object", o["object_id"], "SPILLED", t, size=o["size"], node=o["node"]))
    return events


def _task_events(snapshot, t: float, client_id: str | None, only_node: str) -> list[Event]:
    """The snapshot's tasks are this process's own (live and recently finished)."""
    feed_state = {"PENDING": "PENDING_NODE", "RUNNING": "RUNNING", "FINISHED": "FINISHED", "FAILED": "FAILED"}
    events = []
    for task in snapshot.tasks:
        state = feed_state.get(task["state"])
        events.append(_event("task", task["task_id"], "SUBMITTED", t, name=task["name"], owner=client_id, deps=[]))
        if state is not None:
            events.append(_event("task", task["task_id"], state, t, name=task["name"], owner=client_id,
                                 start=task.get("start"), end=task.get("end"), node=task.get("node") or only_node,
                                 worker=task.get("worker") or "", pid=task.get("pid") or None))
    return events


def _event(kind: str, event_id: str, state: str, time: float, **data) -> Event:
    return Event(kind, event_id, state, time, data)
