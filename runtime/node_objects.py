"""The node's object directory: where each store object lives, who holds it, spilling, freeing.

An object is kept while anything holds it: a process's references (one hold per process,
however many refs it has), or another object that contains a ref to it. A *pin* is a
zero-copy view some process still has: a pinned extent is never spilled, freed or reused.

    PENDING ──alloc+seal──► SEALED ──spill──► SPILLED ──restore──► SEALED
       └──fail──► FAILED             (no holds and no pins) ──► freed
"""
from __future__ import annotations

import collections
import logging
import time

from .store_allocator import ExtentAllocator
from .store_spill import SpillDirectory

log = logging.getLogger("nebula.node.objects")


class ObjectRecord:
    __slots__ = ("object_id", "state", "offset", "size", "owner", "holders", "pins", "contained",
                 "error", "waiters", "spilled", "sealed_at", "created_at")

    def __init__(self, object_id: str, owner: str = ""):
        self.object_id, self.owner = object_id, owner
        self.state = "PENDING"
        self.offset, self.size = -1, 0
        self.holders: collections.Counter = collections.Counter()
        self.pins: collections.Counter = collections.Counter()
        self.contained: list[str] = []
        self.error = b""
        self.waiters: list = []
        self.spilled = False
        self.sealed_at = 0.0
        self.created_at = time.time()


class ObjectDirectory:
    """See the module docstring. ``emit(kind, object_id, state, **fields)`` records events."""

    def __init__(self, capacity: int, store_view: memoryview, spill_dir: str, emit):
        self.allocator = ExtentAllocator(capacity)
        self.view = store_view
        self.spill = SpillDirectory(spill_dir)
        self.records: dict[str, ObjectRecord] = {}
        self.emit = emit

    def record(self, object_id: str, owner: str = "") -> ObjectRecord:
        rec = self.records.get(object_id)
        if rec is None:
            rec = self.records[object_id] = ObjectRecord(object_id, owner)
            if owner:
                rec.holders[owner] += 1
        elif owner and not rec.owner:
            rec.owner = owner
            rec.holders[owner] += 1
        return rec

    # ---- allocation and spilling ----------------------------------------------------------

    def allocate(self, object_id: str, size: int, owner: str) -> int | str:
        """An offset for a new object, or an error text when it cannot fit even after spilling."""
        rec = self.record(object_id, owner)
        offset = self._allocate_bytes(size, exclude=object_id)
        if offset is None:
            return self._full_message(size)
        rec.offset, rec.size = offset, size
        return offset

    def _allocate_bytes(self, size: int, exclude: str) -> int | None:
        offset = self.allocator.allocate(size)
        while offset is None and self._spill_one(exclude):
            offset = self.allocator.allocate(size)
        return offset

    def _spill_one(self, exclude: str) -> bool:
        victims = [r for r in self.records.values()
                   if r.state == "SEALED" and not r.spilled and not r.pins and r.object_id != exclude]
        if not victims:
            return False
        victim = min(victims, key=lambda r: r.sealed_at)
        self.spill.spill(victim.object_id, self.view[victim.offset:victim.offset + victim.size])
        self.allocator.free(victim.offset)
        victim.offset, victim.spilled = -1, True
        self.emit("object", victim.object_id, "SPILLED", size=victim.size)
        return True

    def _full_message(self, size: int) -> str:
        pinned = sum(r.size for r in self.records.values() if r.pins and not r.spilled)
        return (f"an object of {size / 2**20:.1f} MiB cannot fit in the object store "
                f"(capacity {self.allocator.capacity / 2**20:.1f} MiB, {pinned / 2**20:.1f} MiB held by "
                "zero-copy views that cannot be spilled). Raise object_store_memory= in nebula.init(), "
                "or drop references to large arrays you got from nebula.get()")

    def restore(self, rec: ObjectRecord) -> str:
        """Bring a spilled object back into memory; returns an error text or ''."""
        offset = self._allocate_bytes(rec.size, exclude=rec.object_id)
        if offset is None:
            return self._full_message(rec.size)
        self.spill.restore_into(rec.object_id, self.view[offset:offset + rec.size])
        self.spill.delete(rec.object_id)
        rec.offset, rec.spilled = offset, False
        self.emit("object", rec.object_id, "RESTORED", size=rec.size)
        return ""

    # ---- state changes --------------------------------------------------------------------

    def seal(self, object_id: str, contained: list[str]) -> ObjectRecord | None:
        rec = self.records.get(object_id)
        if rec is None or rec.offset < 0:
            return None
        rec.state, rec.sealed_at, rec.contained = "SEALED", time.time(), list(contained)
        for child in contained:
            self.record(child).holders["obj:" + object_id] += 1
        self.emit("object", object_id, "SEALED", size=rec.size, owner=rec.owner)
        return rec

    def fail(self, object_id: str, error: bytes) -> ObjectRecord:
        rec = self.record(object_id)
        rec.state, rec.error = "FAILED", error
        return rec

    def add_hold(self, object_id: str, holder: str) -> None:
        self.record(object_id).holders[holder] += 1

    def remove_hold(self, object_id: str, holder: str) -> None:
        rec = self.records.get(object_id)
        if rec is None or rec.holders[holder] <= 0:
            return
        rec.holders[holder] -= 1
        if rec.holders[holder] == 0:
            del rec.holders[holder]
        self._maybe_free(rec)

    def pin(self, rec: ObjectRecord, client: str) -> None:
        rec.pins[client] += 1

    def unpin(self, object_id: str, client: str) -> None:
        rec = self.records.get(object_id)
        if rec is None or rec.pins[client] <= 0:
            return
        rec.pins[client] -= 1
        if rec.pins[client] == 0:
            del rec.pins[client]
        self._maybe_free(rec)

    def drop_client(self, client: str) -> list[ObjectRecord]:
        """A process went away: release its holds and pins; returns objects it owned."""
        owned = []
        for rec in list(self.records.values()):
            if rec.owner == client and rec.state == "PENDING":
                owned.append(rec)
            rec.pins.pop(client, None)
            if rec.holders.pop(client, None):
                self._maybe_free(rec)
            elif not rec.pins:
                self._maybe_free(rec)
        return owned

    def _maybe_free(self, rec: ObjectRecord) -> None:
        if rec.holders or rec.pins or rec.waiters or self.records.get(rec.object_id) is not rec:
            return
        del self.records[rec.object_id]
        if rec.offset >= 0:
            self.allocator.free(rec.offset)
        if rec.spilled:
            self.spill.delete(rec.object_id)
        self.emit("object", rec.object_id, "FREED", size=rec.size)
        for child in rec.contained:
            self.remove_hold(child, "obj:" + rec.object_id)

    # ---- reading --------------------------------------------------------------------------

    def stats(self) -> dict:
        in_memory = [r for r in self.records.values() if r.offset >= 0]
        return {"capacity": self.allocator.capacity, "used": self.allocator.used,
                "objects": len(self.records), "in_memory": len(in_memory),
                "spilled": sum(1 for r in self.records.values() if r.spilled),
                "spilled_bytes": self.spill.total_bytes,
                "pinned": sum(1 for r in self.records.values() if r.pins)}

    def snapshot(self, node_id: str) -> list[dict]:
        return [{"object_id": r.object_id, "state": r.state, "size": r.size, "owner": r.owner,
                 "node": node_id, "pinned": bool(r.pins), "spilled": r.spilled,
                 "holders": len(r.holders), "created_at": r.created_at}
                for r in self.records.values()]
