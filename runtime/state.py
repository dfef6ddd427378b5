"""The one public window on the cluster: ``snapshot()``, ``subscribe()`` and ``timeline()``.

``snapshot()`` returns frozen records of nodes, workers, actors, objects (size, owner,
locations, pinned/spilled) and tasks by state. ``subscribe(callback, kinds=...)`` calls
``callback(list[Event])`` with batches of typed events (task transitions with timestamps,
worker and node; objects created/sealed/spilled/restored/freed; node telemetry) for as long
as the subscription lives. ``nebula status``, the REST API, reprs and widgets read these.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import types

from .session import current_session
from .state_events import SHORT_RUN, STRETCH, Event, coalesced_records, unfold  # noqa: F401 - public here

EVENT_KINDS = ("task", "object", "worker", "actor", "node")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    time: float
    nodes: tuple
    workers: tuple
    actors: tuple
    objects: tuple
    tasks_by_state: types.MappingProxyType
    tasks: tuple
    clients: tuple
    local_objects: tuple = ()

    def to_dict(self) -> dict:
        return {"time": self.time, "nodes": list(self.nodes), "workers": list(self.workers),
                "actors": list(self.actors), "objects": list(self.objects),
                "tasks_by_state": dict(self.tasks_by_state), "tasks": list(self.tasks),
                "clients": list(self.clients), "local_objects": list(self.local_objects)}


def snapshot() -> Snapshot:
    """The cluster as it is now (tasks: those of this process, live and recently finished)."""
    from .cluster_info import state_snapshot
    session = current_session()
    raw = state_snapshot(session)
    tasks = _task_records(session)
    counts = collections.Counter(t["state"] for t in tasks)
    freeze = lambda rows: tuple(types.MappingProxyType(r) for r in rows)  # noqa: E731
    return Snapshot(raw["time"], freeze(raw["nodes"]), freeze(raw["workers"]), freeze(raw["actors"]),
                    freeze(raw["objects"]), types.MappingProxyType(dict(counts)), freeze(tasks),
                    freeze(raw["clients"]), freeze(_local_objects(session)))


def _local_objects(session) -> list[dict]:
    """Objects this process owns: inline ones live only here, so only this process can list them."""
    rows = []
    for object_id, entry in list(session.owned.items()):
        state = "FAILED" if entry.error is not None else "READY" if entry.ready.done() else "PENDING"
        rows.append({"object_id": object_id, "state": state, "size": entry.size, "in_store": entry.in_store,
                     "task_id": entry.task_id, "local_refs": session.refs.get(object_id, 0)})
    return rows


def _task_records(session) -> list[dict]:
    live = [{"task_id": t.spec.task_id, "name": t.name,
             "state": "RUNNING" if t.lease is not None else "PENDING"}
            for t in list(session.tasks.tasks.values())]
    done = [{"task_id": r[0], "name": r[1], "state": r[2], "start": r[3], "end": r[4], "node": r[5], "worker": r[6],
             "pid": r[7]}
            for r in list(session.task_log)[-1000:]]
    return live + done


class Subscription:
    """A live subscription; ``close()`` (or leaving a ``with`` block) ends it."""

    def __init__(self, session, token):
        self._session, self._token = session, token

    def close(self) -> None:
        if self._token is not None:
            self._session.events.remove_subscriber(self._token)
            self._token = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def subscribe(callback, kinds=None, coalesce: bool = False, stretches: bool = False) -> Subscription:
    """Call ``callback(list[Event])`` with batches of events of ``kinds`` (all kinds if None).

    ``coalesce=True`` folds each batch's events of one task into one (see ``coalesce``): a
    live view draws only the latest state anyway, and takes fewer events at high task rates.
    ``stretches=True`` (which implies ``coalesce``) also gives each batch's short tasks of one
    function that ran back to back on one worker as one FINISHED ``"tasks"`` event, a
    *stretch*, and the batch's other submissions of a function as one SUBMITTED stretch: its
    ``data`` as its tasks' events have it plus ``count``, ``rows`` (one per task) and, when
    finished, ``busy`` (see ``unfold``), for views that draw such tasks together anyway;
    ``kinds`` with "task" takes them too."""
    if not callable(callback):
        raise TypeError("subscribe() needs a callable taking a list of Event")
    bad = sorted(set(kinds or ()) - set(EVENT_KINDS))
    if bad:
        raise ValueError(f"unknown event kinds {bad}; choose from {list(EVENT_KINDS)}")
    session = current_session()
    form = "with_stretches" if stretches else "coalesced" if coalesce else "events"
    return Subscription(session, session.events.add_subscriber(callback, kinds, form))


def coalesce(events: list[Event]) -> list[Event]:
    """``events`` with each task's folded into one: its furthest state (of equally far ones,
    the last) and that event's time, with the data of all of them (later ones win), where its
    first event was. Events of other kinds are kept as they are. A view that polls every few
    hundred milliseconds can fold all it received since the last poll at once."""
    return coalesced_records(events)


def timeline(filename: str | None = None):
    """Finished tasks of this process as a Chrome trace (open in chrome://tracing or Perfetto)."""
    session = current_session()
    events = [_trace_event(r) for r in list(session.task_log) if r[3] and r[4]]
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None


def _trace_event(record) -> dict:
    task_id, name, state, start, end, node, _, pid = record
    return {"name": name, "cat": "task", "ph": "X", "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6,
            "pid": f"node {node[:8]}", "tid": f"worker {pid}", "args": {"task_id": task_id, "state": state}}
