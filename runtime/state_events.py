"""The state feed's record, ``Event``, a process's flush as it travels (``FeedBatch``), and the
folding of a batch's events of one task into one.

An ``Event`` is a msgspec struct that the garbage collector does not track (``gc=False``):
a process that subscribes may hold tens of thousands of them between flushes, and tracked
records would each make Python's collections walk them again. It is encoded as the array
``[kind, id, state, time, data]`` and decoded straight back into an ``Event``; the two events
every task costs travel as rows of a ``FeedBatch`` instead and are made into Events by the
receiver, so that the processes running the tasks pay a tuple append for each.
"""
from __future__ import annotations

from typing import Union

import msgspec

# What an event's data holds: sequences arrive as tuples, which the garbage collector stops
# tracking, so a data dict without nested dicts is untracked too (a view keeps thousands).
Value = Union[str, int, float, bool, None, tuple, dict]


class Event(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One state transition: ``kind`` ("task", "object", ...), the thing's ``id``, its new
    ``state``, when (``time``, seconds since the epoch) and the rest as ``data`` (a dict that
    subscribers share: read it, do not change it; its sequences are tuples)."""

    kind: str
    id: str
    state: str
    time: float
    data: dict[str, Value]

    def get(self, key: str, default=None):
        return self.data.get(key, default)


class FeedBatch(msgspec.Struct, array_like=True, gc=False):
    """One process's flush, as it crosses to other processes. The two per-task events a
    short task costs, its submission (owner) and its end (worker), travel as rows: recording
    one is a tuple append, not an Event and a dict, in the processes that run the workload.
    ``events()`` turns the rows back into Events where the batch is received, in an order that
    keeps each task's own: submissions first, the rest as recorded, run ends last."""

    recorded: list[Event] = []
    submitted: list[tuple[str, str, tuple, float]] = []  # (task id, name, ObjectRef ids it takes, time)
    submitter: tuple[str, str] = ("", "")                # (owner, job) of every submission
    finished: list[tuple[str, str, str, float, float]] = []  # (task id, name, owner, start, end)
    runner: tuple[str, str, int] = ("", "", 0)           # (node, worker, pid) of every run

    def events(self) -> list[Event]:
        owner, job = self.submitter
        out = [Event("task", task_id, "SUBMITTED", at, {"name": name, "owner": owner, "job": job, "deps": deps})
               for task_id, name, deps, at in self.submitted]
        out += self.recorded
        node, worker, pid = self.runner
        out += [Event("task", task_id, "FINISHED", end, {"name": name, "owner": task_owner, "node": node,
                                                         "worker": worker, "pid": pid, "start": start, "end": end})
                for task_id, name, task_owner, start, end in self.finished]
        return out


# How far along each task state is. A task's events come from its owner (submitted, waiting)
# and from the worker that ran it (running, ended) by different paths, so the owner's can
# arrive after the worker's.
TASK_PROGRESS = {"SUBMITTED": 0, "PENDING_NODE": 1, "RUNNING": 2, "FINISHED": 3, "FAILED": 3, "CANCELLED": 3}


def coalesced_records(events: list[Event]) -> list[Event]:
    """One event per task: its furthest state (of equally far ones, the last) with that
    event's time, the data of all its events merged (later ones win), where its first event
    was; other kinds as they are."""
    out: list[Event] = []
    index: dict[str, int] = {}
    merged: set[int] = set()  # positions whose data dict is this function's own copy
    for event in events:
        if event.kind != "task":
            out.append(event)
            continue
        at = index.get(event.id)
        if at is None:
            index[event.id] = len(out)
            out.append(event)
            continue
        earlier = out[at]
        if at in merged:
            data = earlier.data
            data.update(event.data)
        else:
            data = {**earlier.data, **event.data}
            merged.add(at)
        last = event if TASK_PROGRESS.get(event.state, 0) >= TASK_PROGRESS.get(earlier.state, 0) else earlier
        out[at] = Event(event.kind, event.id, last.state, last.time, data)
    return out
