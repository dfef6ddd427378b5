"""The state feed's record, ``Event``, a process's flush as it travels (``FeedBatch``), and the
folding of a batch's events of one task into one.

An ``Event`` is a msgspec struct that the garbage collector does not track (``gc=False``):
a process that subscribes may hold tens of thousands of them between flushes, and tracked
records would each make Python's collections walk them again. It is encoded as the array
``[kind, id, state, time, data]`` and decoded straight back into an ``Event``; the two events
every task costs travel as rows of a ``FeedBatch`` instead and are made into Events by the
receiver, so that the process submitting the tasks pays a tuple append for each.

A subscriber that takes stretches (``with_stretches()``) gets the short tasks of one function that
ran back to back on one worker as one ``"tasks"`` event (a *stretch*), and the other
submissions of a function as one: at thousands of tasks a second, a few events per batch
instead of one or two per task. ``unfold()`` turns stretches back into their tasks' events.
"""
from __future__ import annotations

from typing import Union

import msgspec

# What an event's data holds: sequences arrive as tuples, which the garbage collector stops
# tracking, so a data dict without nested dicts is untracked too (a view keeps thousands).
Value = Union[str, int, float, bool, None, tuple, dict]
# A stretch holds runs shorter than this, each starting less than this after the one before.
SHORT_RUN = 0.01  # seconds
STRETCH = "tasks"  # the kind of a stretch's event


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
        out += _finished_events(self.finished, owner, job)
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
        out += _finished_events(unpaired, owner, job)
        return coalesced_records(out)

    def with_stretches(self) -> list[Event]:
        """``coalesced()``, with the batch's short tasks taken together as stretches
        (``"tasks"`` events, see ``stretch_event``): each run of two or more short tasks of one
        function back to back on one worker (under ``SHORT_RUN`` each, less than that apart)
        as one FINISHED stretch, and the other submissions of each function as one SUBMITTED
        stretch. Only tasks without ObjectRef arguments and with nothing else recorded of them
        in this batch are taken; a task submitted and finished here is in a FINISHED stretch
        only. Order: SUBMITTED stretches, the rest as ``coalesced()`` gives it, FINISHED ones."""
        barred = self._barred()
        if barred is None:
            return self.coalesced()
        ends = self._end_stretches(barred)
        ended = {row[0] for rows in ends for row in rows}
        not_open = {row[0] for row in self.finished}  # ended here, or barred
        not_open.update(barred)
        open_ = [row for row in self.submitted if row[0] not in not_open and not row[2]]  # to end later
        starts: dict[str, list] = {}
        for row in open_:
            starts.setdefault(row[1], []).append(row)
        starts = {name: rows for name, rows in starts.items() if len(rows) > 1}
        if not (ends or starts):
            return self.coalesced()
        folded = ended.union(*({row[0] for row in rows} for rows in starts.values()))
        rest = FeedBatch(self.recorded, [row for row in self.submitted if row[0] not in folded], self.submitter,
                         [row for row in self.finished if row[0] not in ended])
        owner, job = self.submitter
        return [stretch_event("SUBMITTED", rows, owner, job) for rows in starts.values()] + rest.coalesced() + \
            [stretch_event("FINISHED", rows, owner, job) for rows in ends]

    def _barred(self) -> set | None:
        """Ids of the tasks that may not go into stretches (submitted with ObjectRef arguments,
        or with something else recorded of them here); None when none may, a task having been
        submitted or ended twice in this batch (rebuilt)."""
        if len({row[0] for row in self.submitted}) < len(self.submitted) or \
                len({row[0] for row in self.finished}) < len(self.finished):
            return None
        barred = {row[0] for row in self.submitted if row[2]}
        barred.update([event.id for event in self.recorded])
        return barred

    def _end_stretches(self, barred: set) -> list[list[tuple]]:
        lanes: dict[tuple, list] = {}
        stretches = []
        for row in self.finished:
            start, end = row[2], row[3]
            if not 0 <= end - start < SHORT_RUN or row[0] in barred:
                continue
            lane = (row[1], row[4], row[6])  # function, node, pid
            rows = lanes.get(lane)
            if rows is None or not 0 <= start - rows[-1][3] < SHORT_RUN:
                rows = lanes[lane] = [row]
                stretches.append(rows)
            else:
                rows.append(row)
        return [rows for rows in stretches if len(rows) > 1]


def stretch_event(state: str, rows: list[tuple], owner: str, job: str) -> Event:
    """One ``"tasks"`` event for rows of tasks of one function, in order: its id the first
    task's, ``data["rows"]`` the rows and ``data["count"]`` how many. A SUBMITTED stretch
    (rows: task id, name, ObjectRef ids, time; its time the last submission's) has the fields
    of a task's SUBMITTED event, without ``deps``. A FINISHED stretch (rows: task id, name,
    start, end, node, worker, pid; the runs of one worker, back to back) has those of a task's
    FINISHED event, ``start`` the first run's and ``end`` (and its time) the last one's, and
    ``busy``, the seconds its runs took together."""
    first, last = rows[0], rows[-1]
    data = {"name": first[1], "owner": owner, "job": job, "count": len(rows), "rows": tuple(rows)}
    if state == "FINISHED":
        data.update(node=first[4], worker=first[5], pid=first[6], start=first[2], end=last[3],
                    busy=sum(row[3] - row[2] for row in rows))
    return Event(STRETCH, first[0], state, last[3], data)


def unfold(events: list[Event]) -> list[Event]:
    """``events`` with each stretch replaced by the events of its tasks (SUBMITTED or
    FINISHED, as ``coalesced()`` would have made them, less an empty ``deps``); other events
    as they are."""
    out: list[Event] = []
    for event in events:
        if event.kind != STRETCH:
            out.append(event)
            continue
        owner, job = event.data.get("owner"), event.data.get("job")
        if event.state == "SUBMITTED":
            out += [Event("task", task_id, "SUBMITTED", at, {"name": name, "owner": owner, "job": job, "deps": deps})
                    for task_id, name, deps, at in event.data["rows"]]
        else:
            out += _finished_events(event.data["rows"], owner, job)
    return out


def _finished_events(rows: list, owner: str, job: str) -> list[Event]:
    return [Event("task", task_id, "FINISHED", end, {"name": name, "owner": owner, "job": job, "node": node,
                                                     "worker": worker, "pid": pid, "start": start, "end": end})
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
