"""Turning values into bytes and back: cloudpickle with protocol-5 out-of-band buffers.

One layout serves inline values (bytes in a message) and store objects (an extent of the
shared arena), so a numpy array read from the store is a read-only view of shared memory:

    [magic u32][n_buffers u32][meta_len u64][(offset u64, length u64) * n][meta][pad][buf0][pad][buf1]...

``meta`` is the pickle stream; buffers start on 64-byte boundaries. ObjectRefs met while
pickling are collected (``contained``) so the owner can keep them alive while they are
inside another object or in flight.
"""
from __future__ import annotations

import io
import pickle
import struct
import threading

import cloudpickle

MAGIC = 0x4E45424C  # "NEBL"
ALIGN = 64
INLINE_ARG_LIMIT = 100 * 1024
_HEAD = struct.Struct("<IIQ")
_SPAN = struct.Struct("<QQ")
_context = threading.local()


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class SerializedObject:
    """A pickled value: its pickle stream, its raw buffers and the refs inside it."""

    __slots__ = ("meta", "buffers", "contained", "spans", "total_size")

    def __init__(self, meta: bytes, buffers: list, contained: list):
        self.meta, self.buffers, self.contained = meta, buffers, contained
        head = _HEAD.size + _SPAN.size * len(buffers)
        pos, spans = _align(head + len(meta)) if buffers else head + len(meta), []
        for buf in buffers:
            spans.append((pos, buf.nbytes))
            pos = _align(pos + buf.nbytes)
        self.spans = spans
        self.total_size = spans[-1][0] + spans[-1][1] if spans else head + len(meta)

    def write_into(self, dest: memoryview) -> None:
        """Copy the whole object into ``dest`` (at least ``total_size`` bytes)."""
        _HEAD.pack_into(dest, 0, MAGIC, len(self.buffers), len(self.meta))
        pos = _HEAD.size
        for span in self.spans:
            _SPAN.pack_into(dest, pos, *span)
            pos += _SPAN.size
        dest[pos:pos + len(self.meta)] = self.meta
        for (offset, length), buf in zip(self.spans, self.buffers):
            dest[offset:offset + length] = buf.cast("B") if buf.ndim != 1 or buf.format != "B" else buf

    def to_bytes(self) -> bytes:
        if not self.buffers:
            return _HEAD.pack(MAGIC, 0, len(self.meta)) + self.meta
        out = bytearray(self.total_size)
        self.write_into(memoryview(out))
        return bytes(out)


class _RefCollector:
    def __init__(self):
        self.refs: list = []


def note_serialized_ref(ref) -> None:
    """Called by ObjectRef.__reduce__: remember the ref if a serialization is under way."""
    collector = getattr(_context, "collector", None)
    if collector is not None:
        collector.refs.append(ref)


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _plain(value, depth: int = 0) -> bool:
    """None, bool, int, float, str, bytes, and small tuples/lists/str-keyed dicts of them: plain
    pickle writes these as cloudpickle would (no refs, no out-of-band buffers), only faster."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if (kind is not tuple and kind is not list and kind is not dict) or depth > 2 or len(value) > 8:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return all(_plain(v, depth + 1) for v in value)


def serialize(value) -> SerializedObject:
    if _plain(value):  # the common small values (None results, no-argument calls) skip cloudpickle
        return SerializedObject(pickle.dumps(value, protocol=5), [], [])
    buffers: list = []
    collector = _RefCollector()
    previous = getattr(_context, "collector", None)
    _context.collector = collector
    try:
        meta = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    finally:
        _context.collector = previous
    raw = [b.raw() for b in buffers]
    return SerializedObject(meta, raw, collector.refs)


def dumps_function(fn) -> bytes:
    return cloudpickle.dumps(fn, protocol=5)


def _parse(view: memoryview):
    magic, nbuf, meta_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a Nebula object (bad magic): the store or message is corrupt")
    pos = _HEAD.size
    spans = [_SPAN.unpack_from(view, pos + i * _SPAN.size) for i in range(nbuf)]
    meta_start = pos + nbuf * _SPAN.size
    return view[meta_start:meta_start + meta_len], spans


def deserialize(data, holder_factory=None):
    """Rebuild a value from ``data``; ``holder_factory(buffer_view)`` may wrap each buffer."""
    view = memoryview(data)
    if view.readonly is False:
        view = view.toreadonly()
    meta, spans = _parse(view)
    buffers = [view[o:o + n] for o, n in spans]
    if holder_factory is not None:
        buffers = [holder_factory(b) for b in buffers]
    return pickle.loads(meta, buffers=buffers)


def find_unpicklable(named_values) -> tuple[str, object, Exception] | None:
    """First (name, value, error) in ``named_values`` that cannot be pickled, if any."""
    for name, value in named_values:
        try:
            cloudpickle.dump(value, io.BytesIO(), protocol=5, buffer_callback=lambda b: None)
        except Exception as exc:  # noqa: BLE001 - any failure names the culprit
            return name, value, exc
    return None
