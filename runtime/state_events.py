"""The state feed's record: ``Event``, and turning events that crossed the wire back into them."""
from __future__ import annotations

import types
import typing


class Event(typing.NamedTuple):
    """One state transition: ``kind`` ("task", "object", ...), the thing's ``id``, its new
    ``state``, when (``time``, seconds since the epoch) and the rest as read-only ``data``."""

    kind: str
    id: str
    state: str
    time: float
    data: types.MappingProxyType

    def get(self, key: str, default=None):
        return self.data.get(key, default)


def to_records(raw_events) -> list[Event]:
    """Events from the recorded form ``(kind, id, state, time, fields)`` (lists after the wire)."""
    make, proxy = Event._make, types.MappingProxyType
    return [make((kind, event_id, state, at, proxy(fields))) for kind, event_id, state, at, fields in raw_events]


class _Merged(tuple):
    """A task's events of one batch folded together (its fields dict is this batch's own copy)."""


def coalesced_records(raw_events) -> list[Event]:
    """Like ``to_records``, but one event per task: its last state and time, the fields of all
    its events in the batch merged (later ones win), where its first event was."""
    out: list = []
    index: dict[str, int] = {}
    for raw in raw_events:
        if raw[0] != "task":
            out.append(raw)
            continue
        at = index.get(raw[1])
        if at is None:
            index[raw[1]] = len(out)
            out.append(raw)
            continue
        earlier = out[at]
        fields = earlier[4] if type(earlier) is _Merged else dict(earlier[4])
        fields.update(raw[4])
        out[at] = _Merged((raw[0], raw[1], raw[2], raw[3], fields))
    return to_records(out)
