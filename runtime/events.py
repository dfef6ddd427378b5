"""Per-process event recording: events in a bounded ring, shipped only while subscribed.

Each process records state transitions (tasks, objects, workers, actors, nodes) as ``Event``s
``(kind, id, state, time, data)``, ``data`` being a dict of the rest: recording costs one
untracked struct and one append, and nothing at all while nobody subscribes. The two events
every task costs, its submission and its end, are recorded by its owner as rows instead (a
tuple append) and become Events where they are received (``FeedBatch``): at thousands of tasks
a second this is most of what the feed costs the processes doing the work. The node agent tells every
client when someone subscribes (``FeedControl``); only then are batches shipped to it, every
``FLUSH_INTERVAL`` seconds, and fanned out to subscribers as ``EventBatch``es.

Each event is recorded where it is known first: a task's owner records its submission (and
its wait for a worker once its arguments are ready) and its end, which the result brings with
the run's start and end (the owner holds the lease, so it knows the node, worker and pid); the
worker running it records RUNNING, only for a run still going at its next flush. An actor's
worker records the calls it ran (start, end, error), the caller the calls that ended without
it (the actor died). So the driver records two rows per task, and a worker running short tasks
records nothing.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time

import msgspec

from . import protocol as P
from .state_events import STRETCH, Event, FeedBatch

log = logging.getLogger("nebula.events")
RING_SIZE = 20000
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FeedBatch)
FLUSH_INTERVAL = 0.1


class EventRecorder:
    """One session's ring of events plus delivery to this process's subscribers."""

    def __init__(self, session):
        self.session = session
        self.ring: collections.deque = collections.deque(maxlen=RING_SIZE)
        # The two events every task costs, as rows (see FeedBatch): submissions made here and
        # the ends of the tasks submitted here.
        self.submitted: collections.deque = collections.deque(maxlen=RING_SIZE)
        self.finished: collections.deque = collections.deque(maxlen=RING_SIZE)
        self.enabled = False
        self.ship = False  # another process subscribes: send our events to the node
        self._flush_scheduled = False
        self.subscribers: list = []
        self.flush_hooks: list = []  # called on the I/O thread before each flush
        self._deliveries: queue.Queue = queue.Queue()
        self._delivery_thread: threading.Thread | None = None

    def record(self, kind: str, object_id: str, state: str, **fields) -> None:
        if self.enabled:
            self.add(kind, object_id, state, fields)

    def add(self, kind: str, object_id: str, state: str, fields: dict, at: float | None = None) -> None:
        """Record one event (``at``: when it happened, if not now); hot paths call this directly,
        behind their own ``enabled`` check, so nothing is computed for the feed while nobody
        subscribes."""
        self.ring.append(Event(kind, object_id, state, time.time() if at is None else at, fields))
        self.flush_soon()

    def flush_soon(self) -> None:
        """Make sure a flush comes within ``FLUSH_INTERVAL`` (it runs the ``flush_hooks`` too)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.session.post(self._schedule_flush)

    def task_submitted(self, task_id: str, name: str, deps: tuple) -> None:
        """A submission (hot path: the caller checks ``enabled``); ``deps``: the ObjectRef ids it takes."""
        self.submitted.append((task_id, name, deps, time.time()))
        self.flush_soon()

    def task_returned(self, task_id: str, name: str, start: float, end: float, where: tuple) -> None:
        """A task submitted here (not an actor call) that returned; ``where``: (node, worker,
        pid) of its run (hot path: the caller checks ``enabled``)."""
        self.finished.append((task_id, name, start, end) + where)
        self.flush_soon()

    def task_ended(self, task_id: str, state: str, name: str, start: float, end: float, error: bytes = b"",
                   where: tuple = ()) -> None:
        """FINISHED or FAILED; a failure carries ``error``, one line naming what was raised;
        ``where``, if the run got that far: its (node, worker, pid)."""
        if self.enabled:
            fields = {"name": name, "owner": self.session.client_id, "start": start, "end": end}
            if where:
                fields.update(node=where[0], worker=where[1], pid=where[2])
            if error:
                fields["error"] = error_summary(error)
            self.add("task", task_id, state, fields)

    def object_created(self, object_id: str, size: int, in_store: bool) -> None:
        self.record("object", object_id, "CREATED", size=size, in_store=in_store,
                    owner=self.session.client_id, node=self.session.node_id)

    def object_freed(self, object_id: str) -> None:
        self.record("object", object_id, "FREED", owner=self.session.client_id)

    def _schedule_flush(self) -> None:
        self.session.loop.call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for hook in self.flush_hooks:  # events decided only now (what is still running, say)
            hook()
        recorded, submitted, finished = _drain(self.ring), _drain(self.submitted), _drain(self.finished)
        if recorded or submitted or finished:
            batch = FeedBatch(recorded, submitted, (self.session.client_id, self.session.job_id), finished)
            if self.ship:
                self.session.node.send(P.Events(_encoder.encode(batch)))
            if self.subscribers:
                self.deliver(batch)

    def set_enabled(self, enabled: bool, others: bool = True) -> None:
        self.ship = enabled and others
        self.enabled = self.ship or bool(self.subscribers)

    # ---- subscribers in this process ---------------------------------------------------------

    def add_subscriber(self, callback, kinds, form: str = "events") -> object:
        """``form``: what each batch becomes for ``callback``, the name of a ``FeedBatch``
        method ("events", "coalesced" or "with_stretches")."""
        if kinds and "task" in kinds:
            kinds = {*kinds, STRETCH}  # stretches are task events
        token = (callback, frozenset(kinds) if kinds else None, form)
        self.subscribers.append(token)
        self.enabled = True
        self._ensure_delivery_thread()
        self.session.send_node(P.Subscribe(sorted(kinds) if kinds else []))
        return token

    def remove_subscriber(self, token) -> None:
        if token in self.subscribers:
            self.subscribers.remove(token)
        self.enabled = self.ship or bool(self.subscribers)
        if not self.subscribers:
            self.session.send_node(P.Unsubscribe())

    def deliver(self, raw_events) -> None:
        """Recorded events: a FeedBatch from here, or one encoded (bytes) by another process."""
        self._deliveries.put(raw_events)

    def _ensure_delivery_thread(self) -> None:
        if self._delivery_thread is None:
            self._delivery_thread = threading.Thread(target=self._deliver_loop, name="nebula-events", daemon=True)
            self._delivery_thread.start()

    def _deliver_loop(self) -> None:
        while True:
            raw, forms = self._deliveries.get(), {}
            batch = _decoded(raw) if isinstance(raw, bytes) else raw
            for callback, kinds, form in list(self.subscribers):
                records = forms.get(form)
                if records is None:  # each form made once, for all who take it
                    records = forms[form] = _made(batch, form)
                records = records if kinds is None else [r for r in records if r.kind in kinds]
                if records:
                    _call_safely(callback, records)


def _made(batch: FeedBatch, form: str) -> list[Event]:
    """``batch`` in ``form``; a batch that cannot be made into it costs itself only (the
    delivery thread goes on)."""
    try:
        return getattr(batch, form)()
    except Exception:  # noqa: BLE001 - malformed rows from a process of this cluster
        log.exception("dropped a state-feed batch that could not be made into %s", form)
        return []


def _drain(rows: collections.deque) -> list:
    """What ``rows`` holds now, taken out of it; rows appended meanwhile by another thread stay
    for the next flush (listing then clearing could drop them)."""
    return [rows.popleft() for _ in range(len(rows))]


def encode_events(events: list[Event]) -> bytes:
    """Events as ``Events``/``EventBatch`` carry them (encoded once, passed on as they are)."""
    return _encoder.encode(FeedBatch(events))


def _decoded(raw: bytes) -> FeedBatch:
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # a bad batch costs itself only
        log.warning("dropped a state-feed batch that could not be decoded: %s", exc)
        return FeedBatch()


def error_summary(payload: bytes) -> str:
    """'ValueError: boom' for an encoded task error (what the feed's FAILED events carry)."""
    from .session import decode_error
    try:
        error = decode_error(payload)
    except Exception as exc:  # noqa: BLE001 - a summary must never fail the task's completion
        return f"an error that could not be decoded here ({type(exc).__name__})"
    if getattr(error, "cause_cls_name", None):
        line = f"{error.cause_cls_name}: {error.cause_text or ''}"
    else:
        line = f"{type(error).__name__}: {error}"
    return line.strip().split("\n", 1)[0][:300]


def _call_safely(callback, batch) -> None:
    try:
        callback(batch)
    except Exception:  # a subscriber's bug must not stop the feed
        log.exception("state subscriber %r raised", callback)
