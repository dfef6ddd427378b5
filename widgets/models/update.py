"""What a view model hands its view (``Update``), and ``RowTable``, one data source as the browser holds it.

A view applies an ``Update`` to each named source in this order: ``replace`` (new data for
the whole source), else ``patch`` (cells of rows the browser already has, indexed as before
this update), then ``stream`` (new rows appended, the oldest dropped past the source's
rollover, given per source in ``rollover``). ``props`` carries view settings that changed
(axis factors, labels), by name.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Hashable


@dataclasses.dataclass
class Update:
    stream: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    patch: dict[str, dict[str, list[tuple[int, Any]]]] = dataclasses.field(default_factory=dict)
    replace: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    props: dict[str, Any] = dataclasses.field(default_factory=dict)
    rollover: dict[str, int] = dataclasses.field(default_factory=dict)  # source -> rows the browser keeps

    def __bool__(self) -> bool:
        return bool(self.stream or self.patch or self.replace or self.props)

    def add_table(self, name: str, table: RowTable) -> None:
        """Take ``table``'s pending changes into this update under source ``name``."""
        if table.replaced:
            self.replace[name] = table.columns()
            table.settle()
            return
        patch, stream = table.flush()
        if patch:
            self.patch[name] = patch
        if stream:
            self.stream[name] = stream
            if table.rollover is not None:
                self.rollover[name] = table.rollover


class RowTable:
    """Rows in browser order, keyed; changes are collected until ``flush()`` turns them into patch + stream.

    Keys of rows dropped by rollover are forgotten, so memory stays bounded by ``rollover``.
    A change to a row not yet streamed edits the pending row instead of patching it, and
    several changes to one cell in one period become one patch.
    """

    def __init__(self, columns: tuple[str, ...], rollover: int | None = None):
        self.names = columns
        self.rollover = rollover
        self.rows: collections.deque = collections.deque()  # (key, row dict), live in the browser
        self.pending: list = []                              # (key, row dict), not streamed yet
        self.index: dict[Hashable, int] = {}                 # key -> absolute row number
        self.first = 0                                       # absolute number of rows[0]
        self.patches: dict[tuple[int, str], Any] = {}
        self.replaced = False

    def __len__(self) -> int:
        return len(self.rows) + len(self.pending)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.index

    def add(self, key: Hashable, row: dict) -> None:
        """Append a row; ``key`` None for rows never changed later (history samples)."""
        if key is not None:
            self.index[key] = self.first + len(self)
        self.pending.append((key, row))

    def get(self, key: Hashable) -> dict | None:
        at = self.index.get(key)
        return None if at is None else self._row(at)

    def set(self, key: Hashable, /, **values) -> None:
        at = self.index.get(key)
        if at is None:
            return
        row = self._row(at)
        live = at < self.first + len(self.rows) and not self.replaced
        for column, value in values.items():
            if live and row[column] != value:  # only what changed reaches the browser
                self.patches[(at - self.first, column)] = value
            row[column] = value

    def reset(self, keyed_rows) -> None:
        """New contents for the whole source: the browser gets them as one replace."""
        self.rows.clear()
        self.pending, self.index, self.patches = [], {}, {}
        self.first = 0
        for key, row in keyed_rows:
            self.add(key, row)
        self.settle()
        self.replaced = True

    def flush(self) -> tuple[dict, dict]:
        patch: dict[str, list] = {}
        for (row, column), value in self.patches.items():
            patch.setdefault(column, []).append((row, value))
        stream = {name: [row[name] for _, row in self.pending] for name in self.names} if self.pending else {}
        self.settle()
        return patch, stream

    def settle(self) -> None:
        """Mark everything as delivered: pending rows become live, the oldest rolling over."""
        self.rows.extend(self.pending)
        self.pending, self.patches, self.replaced = [], {}, False
        while self.rollover is not None and len(self.rows) > self.rollover:
            key, _ = self.rows.popleft()
            if key is not None and self.index.get(key) == self.first:
                del self.index[key]
            self.first += 1

    def columns(self) -> dict[str, list]:
        everything = list(self.rows) + self.pending
        return {name: [row[name] for _, row in everything] for name in self.names}

    def _row(self, at: int) -> dict:
        offset = at - self.first
        return self.rows[offset][1] if offset < len(self.rows) else self.pending[offset - len(self.rows)][1]
