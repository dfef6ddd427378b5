"""The state feed's record, ``Event``, a process's flush as it travels (``FeedBatch``), and the
folding of a batch's events of one task into one.

An ``Event`` is a msgspec struct that the garbage collector does not track (``gc=False``):
a process that subscribes may hold tens of thousands of them between flushes, and tracked
records would each make Python's collections walk them again. It is encoded as the array
``[kind, id, state, time, data]`` and decoded straight back into an ``Event``; the two events
every task costs travel as rows of a ``FeedBatch`` instead and are made into Events by the
receiver, so that the process submitting the tasks pays a tuple append for each.
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
    short task costs, its submission and its end, travel as rows, both recorded by the task's
    owner (the end when the result comes back, with where it ran): recording one is a tuple
    append, not an Event and a dict, in the process that submits the workload, and the
    workers running it record nothing. ``events()`` turns the rows back into Events where the
    batch is received, in an order that keeps each task's own: submissions first, the rest as
    recorded, ends last; ``coalesced()`` gives each task's events as one."""

    recorded: list[Event] = []
    submitted: list[tuple[str, str, tuple, float]] = []  # (task id, name, ObjectRef ids it takes, time)
    submitter: tuple[str, str] = ("", "")                # (owner, job) of every row
    finished: list[tuple[str, str, float, float, str, str, int]] = []  # (task id, name, start, end, node, worker, pid)

    def events(self) -> list[Event]:
        owner, job = self.submitter
        out = [Event("task", task_id, "SUBMITTED", at, {"name": name, "owner": owner, "job": job, "deps": deps})
               for task_id, name, deps, at in self.submitted]
        out += self.recorded
        out += _finished_events(self.finished, owner)
        return out

    def coalesced(self) -> list[Event]:
        """``coalesced_records(self.events())``, without making two Events for a task that was
        submitted and finished within the batch and recorded nothing else in it (the common
        case at high task rates): its one Event is made from its two rows."""
        ended = {row[0]: row for row in self.finished}
        if len(ended) < len(self.finished):  # a task ended twice (rebuilt): the general way
            return coalesced_records(self.events())
        for event in self.recorded:  # their tasks fold the general way
            ended.pop(event.id, None)
        owner, job = self.submitter
        out, paired = [], set()
        for task_id, name, deps, at in self.submitted:
            row = ended.pop(task_id, None)
            if row is None:
                out.append(Event("task", task_id, "SUBMITTED", at,
                                 {"name": name, "owner": owner, "job": job, "deps": deps}))
                continue
            paired.add(task_id)
            _, name, start, end, node, worker, pid = row
            out.append(Event("task", task_id, "FINISHED", end, {
                "name": name, "owner": owner, "job": job, "deps": deps, "node": node, "worker": worker,
                "pid": pid, "start": start, "end": end}))
        unpaired = [row for row in self.finished if row[0] not in paired]
        if not (self.recorded or unpaired) and len({row[0] for row in self.submitted}) == len(out):
            return out  # one event per task already
        out += self.recorded
        out += _finished_events(unpaired, owner)
        return coalesced_records(out)


def _finished_events(rows: list, owner: str) -> list[Event]:
    return [Event("task", task_id, "FINISHED", end, {"name": name, "owner": owner, "node": node, "worker": worker,
                                                     "pid": pid, "start": start, "end": end})
            for task_id, name, start, end, node, worker, pid in rows]


# How far along each task state is. A task's events come from its owner (submitted, waiting,
# ended) and from the worker running it (RUNNING, an actor call's end) by different paths, so
# one path's can arrive after the other's.
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
