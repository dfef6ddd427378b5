"""The object placement view model: per node, the objects its store holds, against its capacity.

Two tables: ``stores`` (one row per node: counts and bytes of primary copies, secondary
copies and spilled objects, as percentages of the store's capacity) and ``cells`` (one cell
per object copy in a per-node grid; a cell keeps its place until its object is freed, and
the lowest free place is reused, so the grid never reshuffles). ``transfers`` draws a copy
moving between nodes for a few seconds.

Object events come from the node agents: SEALED, SPILLED, RESTORED and FREED carry the
node they happened on; TRANSFERRED comes from the node that sent a copy (``node``) and names
the receiver (``to``), which then reports the copy SEALED. The first copy of an object is
its primary, later ones secondary. A client's own FREED (no node) only drops its reference
and is ignored here.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time

from nebula.state import STRETCH

from .tasks import BoundedMap, short, task_of_object, trim_all
from .update import RowTable, Update

PRIMARY, SECONDARY, SPILLED, FREED = "primary", "secondary", "spilled", "freed"
CATEGORIES = (PRIMARY, SECONDARY, SPILLED)
STORE_COLUMNS = ("key", "node", "capacity", "used", "used_pct", "primary_count", "primary_bytes",
                 "secondary_count", "secondary_bytes", "spilled_count", "spilled_bytes", "primary_pct",
                 "secondary_end", "spilled_pct", "label", "grid_x", "grid_y", "grid_width", "grid_height")
CELL_COLUMNS = ("key", "x", "y", "category", "alpha", "size", "object", "task", "bytes", "node")
TRANSFER_COLUMNS = ("key", "x0", "y0", "x1", "y1", "alpha", "object", "bytes")
GRID_WIDTH = 32
CELLS_PER_NODE = 256
BAND = CELLS_PER_NODE // GRID_WIDTH + 2   # grid rows per node, with a gap


class NodeStore:
    """One node's store as the view knows it."""

    def __init__(self, node_id: str, index: int):
        self.node_id, self.index = node_id, index
        self.capacity, self.used = 0, 0
        self.counts = dict.fromkeys(CATEGORIES, 0)
        self.bytes = dict.fromkeys(CATEGORIES, 0)
        self.free_slots: list[int] = []
        self.next_slot = 0
        self.undrawn = 0
        self.dirty = True

    def take_slot(self) -> int | None:
        if self.free_slots:
            return heapq.heappop(self.free_slots)
        if self.next_slot >= CELLS_PER_NODE:
            return None
        self.next_slot += 1
        return self.next_slot - 1

    def add(self, category: str, size: int, sign: int) -> None:
        self.counts[category] += sign
        self.bytes[category] += sign * size
        self.dirty = True

    def row(self) -> dict:
        cap = self.capacity or 1
        pct = {c: 100.0 * self.bytes[c] / cap for c in CATEGORIES}
        return {"key": self.node_id, "node": short(self.node_id), "capacity": self.capacity, "used": self.used,
                "used_pct": 100.0 * self.used / cap,
                **{f"{c}_count": self.counts[c] for c in CATEGORIES},
                **{f"{c}_bytes": self.bytes[c] for c in CATEGORIES},
                "primary_pct": pct[PRIMARY], "secondary_end": pct[PRIMARY] + pct[SECONDARY],
                "spilled_pct": pct[SPILLED], "label": self.label(), **self.grid()}

    def grid(self) -> dict:
        """Where this node's cells go: a GRID_WIDTH wide band, one per node, top to bottom."""
        rows = CELLS_PER_NODE // GRID_WIDTH
        return {"grid_x": (GRID_WIDTH - 1) / 2, "grid_y": -(self.index * BAND) - (rows - 1) / 2,
                "grid_width": GRID_WIDTH, "grid_height": rows}

    def label(self) -> str:
        held = self.counts[PRIMARY] + self.counts[SECONDARY]
        text = (f"{held} objects, {_size(self.bytes[PRIMARY] + self.bytes[SECONDARY])} of "
                f"{_size(self.capacity)}")
        if self.counts[SECONDARY]:
            text += f" ({self.counts[SECONDARY]} secondary copies)"
        if self.counts[SPILLED]:
            text += f"; {self.counts[SPILLED]} spilled ({_size(self.bytes[SPILLED])})"
        return text + (f"; {self.undrawn} not drawn" if self.undrawn else "")


class Copy:
    __slots__ = ("object_id", "node", "size", "category", "held_as", "slot", "owner")

    def __init__(self, object_id: str, node: str, size: int, category: str, owner: str):
        self.object_id, self.node, self.size, self.owner = object_id, node, size, owner
        self.category = self.held_as = category  # held_as: primary/secondary, kept while spilled
        self.slot: int | None = None


class ObjectPlacementModel:
    """Feed it ``nebula.state`` events; ``owner`` set keeps only objects that client owns."""

    def __init__(self, owner: str | None = None, transfer_linger: float = 3.0, memory: int = 20_000):
        self.owner, self.transfer_linger = owner, transfer_linger
        self.stores_table = RowTable(STORE_COLUMNS)
        self.cells = RowTable(CELL_COLUMNS)
        self.transfers = RowTable(TRANSFER_COLUMNS, rollover=100)
        self.nodes: dict[str, NodeStore] = {}
        self.objects: dict[str, dict[str, Copy]] = {}   # object id -> {node: its copy there}
        self.names = BoundedMap(memory)             # task id -> function name
        self.unnamed = BoundedMap(memory)           # task id -> cells waiting for its name
        self.recent_transfers: list = []            # (time, key)
        self._nodes_changed = False
        self._transfer_count = 0

    def apply(self, events, now: float | None = None) -> Update:
        names = self.names
        for event in events:
            kind = event.kind
            if kind == "task":
                if event.id not in names:  # a task's first event names it
                    self._learn_name(event.id, event.data.get("name"))
            elif kind == STRETCH:
                self._learn_names(event.data["rows"], event.data.get("name"))
            elif kind == "object":
                self._on_object(event)
            elif kind == "node":
                self._on_node(event)
        trim_all(self.names, self.unnamed)
        self._fade_transfers(time.time() if now is None else now)
        return self._update()

    def columns(self) -> dict:
        return {"stores": self.stores_table.columns(), "cells": self.cells.columns(),
                "transfers": self.transfers.columns()}

    def props(self) -> dict:
        return {"nodes": [short(n) for n in self.nodes],
                "bands": {s.grid()["grid_y"]: short(s.node_id) for s in self.nodes.values()}}

    def totals(self, node_id: str) -> dict:
        """Counts and bytes held on one node, by category (what the view shows)."""
        store = self.nodes[node_id]
        return {"counts": dict(store.counts), "bytes": dict(store.bytes), "capacity": store.capacity,
                "used": store.used}

    def _update(self) -> Update:
        for store in self.nodes.values():
            if store.dirty:
                store.dirty = False
                if store.node_id in self.stores_table:
                    self.stores_table.set(store.node_id, **store.row())
                else:
                    self.stores_table.add(store.node_id, store.row())
        update = Update()
        for name, table in (("stores", self.stores_table), ("cells", self.cells), ("transfers", self.transfers)):
            update.add_table(name, table)
        if self._nodes_changed:
            update.props.update(self.props())
            self._nodes_changed = False
        return update

    # ---- nodes ------------------------------------------------------------------------------------

    def _store(self, node_id: str) -> NodeStore:
        store = self.nodes.get(node_id)
        if store is None:
            store = self.nodes[node_id] = NodeStore(node_id, len(self.nodes))
            self._nodes_changed = True
        return store

    def _on_node(self, event) -> None:
        if event.state == "DEAD":  # what its store held is gone with it
            for object_id in [o for o, copies in self.objects.items() if event.id in copies]:
                self._freed(object_id, event.id)
            return
        stats = event.get("store")
        if not stats:
            return
        store = self._store(event.id)
        capacity, used = stats.get("capacity", store.capacity), stats.get("used", store.used)
        if (capacity, used) != (store.capacity, store.used):
            store.capacity, store.used, store.dirty = capacity, used, True

    # ---- objects ----------------------------------------------------------------------------------

    def _on_object(self, event) -> None:
        node = event.get("node")
        if not node:
            return  # a client's own bookkeeping (inline values, dropped references): no store copy
        if event.state == "SEALED" or (event.state == "CREATED" and event.get("in_store")):
            self._sealed(event, node)
        elif event.state == "TRANSFERRED":
            self._transferred(event, source=node, destination=event.get("to") or "")
        elif event.state in ("SPILLED", "RESTORED"):
            self._spilled(event, node, event.state == "SPILLED")
        elif event.state == "FREED":
            self._freed(event.id, node)

    def _sealed(self, event, node: str) -> None:
        copies = self.objects.get(event.id, {})
        owner = event.get("owner") or next((c.owner for c in copies.values()), "")
        if node in copies or (self.owner is not None and owner != self.owner):
            return  # seen already (the snapshot and the feed can both report it), or not shown
        self._add_copy(event.id, node, int(event.get("size") or 0), SECONDARY if copies else PRIMARY, owner)

    def _transferred(self, event, source: str, destination: str) -> None:
        origin = self.objects.get(event.id, {}).get(source)
        if origin is None or not destination:
            return  # an object this view does not show (another client's, with the switch on)
        if destination not in self.objects[event.id]:
            self._add_copy(event.id, destination, origin.size, SECONDARY, origin.owner)
        self._draw_transfer(event, source, destination, origin.size)

    def _spilled(self, event, node: str, spilled: bool) -> None:
        copy = self.objects.get(event.id, {}).get(node)
        if copy is None:
            return
        category = SPILLED if spilled else copy.held_as
        if category != copy.category:
            self._recategorize(copy, category)

    def _freed(self, object_id: str, node: str) -> None:
        copies = self.objects.get(object_id, {})
        copy = copies.pop(node, None)
        if copy is None:
            return
        if not copies:
            del self.objects[object_id]
        store = self.nodes[node]
        store.add(copy.category, copy.size, -1)
        if copy.slot is None:
            store.undrawn -= 1
        else:  # off the plot (x NaN: neither drawn nor hovered) until the place is taken again
            self.cells.set((node, copy.slot), x=math.nan, category=FREED)
            heapq.heappush(store.free_slots, copy.slot)

    # ---- cells ------------------------------------------------------------------------------------

    def _add_copy(self, object_id: str, node: str, size: int, category: str, owner: str) -> None:
        store = self._store(node)
        copy = self.objects.setdefault(object_id, {})[node] = Copy(object_id, node, size, category, owner)
        store.add(category, size, +1)
        copy.slot = store.take_slot()
        if copy.slot is None:
            store.undrawn += 1
            return
        key = (node, copy.slot)
        row = {"key": f"{short(node)}:{copy.slot}", "x": copy.slot % GRID_WIDTH,
               "y": -(store.index * BAND) - copy.slot // GRID_WIDTH, "category": category, "alpha": 0.85,
               "size": _cell_size(size), "object": short(object_id), "task": self._task_label(object_id, key),
               "bytes": _size(size), "node": short(node)}
        if key in self.cells:
            self.cells.set(key, **row)
        else:
            self.cells.add(key, row)

    def _recategorize(self, copy: Copy, category: str) -> None:
        store = self.nodes[copy.node]
        store.add(copy.category, copy.size, -1)
        store.add(category, copy.size, +1)
        copy.category = category
        if copy.slot is not None:
            self.cells.set((copy.node, copy.slot), category=category)

    def _task_label(self, object_id: str, cell_key: tuple) -> str:
        task_id = task_of_object(object_id)
        name = self.names.get(task_id)
        if name is None:
            self.unnamed.setdefault(task_id, []).append((cell_key, object_id))
            return f"put or unknown task ({short(object_id)})"
        return f"{name} (task {short(task_id)})"

    def _learn_name(self, task_id: str, name: str | None) -> None:
        if not name:
            return
        self.names[task_id] = name
        for cell_key, object_id in self.unnamed.pop(task_id, ()):
            row = self.cells.get(cell_key)
            if row is not None and row["object"] == short(object_id):
                self.cells.set(cell_key, task=f"{name} (task {short(task_id)})")

    def _learn_names(self, rows: tuple, name: str | None) -> None:
        """``_learn_name`` for the tasks of a stretch (rows whose first item is a task id), in
        one step for those whose objects are not drawn yet."""
        new = list(itertools.filterfalse(self.names.__contains__, [row[0] for row in rows]))
        if not (new and name):
            return
        self.names.update(dict.fromkeys(new, name))
        for task_id in self.unnamed.keys() & set(new) if self.unnamed else ():
            self._learn_name(task_id, name)

    # ---- transfers --------------------------------------------------------------------------------

    def _draw_transfer(self, event, source: str, node: str, size: int) -> None:
        src, dst = self._store(source), self._store(node)
        self._transfer_count += 1
        key = self._transfer_count
        self.transfers.add(key, {"key": str(key), "x0": GRID_WIDTH + 1, "y0": -(src.index * BAND) - 2,
                                 "x1": GRID_WIDTH + 1, "y1": -(dst.index * BAND) - 2, "alpha": 0.9,
                                 "object": short(event.id), "bytes": _size(size)})
        self.recent_transfers.append((event.time, key))

    def _fade_transfers(self, now: float) -> None:
        while self.recent_transfers and now - self.recent_transfers[0][0] > self.transfer_linger:
            _, key = self.recent_transfers.pop(0)
            self.transfers.set(key, alpha=0.0)


def _cell_size(size: int) -> float:
    """A cell's side in grid units: 0.35 for 1 KiB or less, growing with the log of the bytes to 0.95 at 1 GiB."""
    share = min(1.0, max(0.0, (math.log2(max(size, 1)) - 10) / 20))
    return round(0.35 + 0.6 * share, 2)


def _size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
