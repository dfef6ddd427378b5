"""The state feed's record, ``Event``, and the folding of a batch's events of one task into one.

An ``Event`` is a msgspec struct that the garbage collector does not track (``gc=False``):
a process that subscribes may hold tens of thousands of them between flushes, and tracked
records would each make Python's collections walk them again. It is encoded as the array
``[kind, id, state, time, data]`` and decoded straight back into an ``Event``, so a batch
that crossed processes costs one decoding call and no per-event Python code.
"""
from __future__ import annotations

import msgspec


class Event(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One state transition: ``kind`` ("task", "object", ...), the thing's ``id``, its new
    ``state``, when (``time``, seconds since the epoch) and the rest as ``data`` (a dict that
    subscribers share: read it, do not change it)."""

    kind: str
    id: str
    state: str
    time: float
    data: dict

    def get(self, key: str, default=None):
        return self.data.get(key, default)


def coalesced_records(events: list[Event]) -> list[Event]:
    """One event per task: its last state and time, the data of all its events in the batch
    merged (later ones win), where its first event was; other kinds as they are."""
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
        data = out[at].data if at in merged else dict(out[at].data)
        data.update(event.data)
        merged.add(at)
        out[at] = Event(event.kind, event.id, event.state, event.time, data)
    return out
