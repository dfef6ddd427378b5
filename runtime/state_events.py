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
