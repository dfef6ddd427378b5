"""Offset bookkeeping for the object store arena: which byte ranges are used and which are free."""

from __future__ import annotations

import bisect
import operator


class ExtentAllocator:
    """Best-fit allocator over the byte range ``[0, capacity)``; pure bookkeeping, no I/O.

    Every extent handed out starts at a multiple of ``alignment`` and is ``size`` rounded up to
    ``alignment`` (at least ``alignment`` bytes, so a zero-byte object still gets a unique
    offset). Freed extents merge with free neighbours, so fragmentation only lasts while the
    objects between holes are alive.

    Free extents live in two sorted lists of ints: start offsets (to find neighbours when
    freeing) and ``size << shift | start`` keys, i.e. ``(size, start)`` packed into one int so
    best fit is a single ``bisect`` with fast comparisons. Lookups are O(log n); list inserts
    and deletes are memmoves, which stay fast for hundreds of thousands of extents.
    """

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        capacity, alignment = operator.index(capacity), operator.index(alignment)
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 bytes, got {capacity}")
        if alignment <= 0:
            raise ValueError(f"alignment must be a positive number of bytes, got {alignment}")
        self._capacity = capacity
        self._alignment = alignment
        self._used = 0
        self._allocated: dict[int, int] = {}  # start -> size of every live allocation
        self._free_size: dict[int, int] = {}  # start -> size of every free extent
        self._free_by_start: list[int] = []
        self._free_by_size: list[int] = []  # size << self._shift | start, sorted
        self._shift = capacity.bit_length()
        self._add_free(0, capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def alignment(self) -> int:
        return self._alignment

    @property
    def used(self) -> int:
        """Bytes held by live allocations, counting alignment padding."""
        return self._used

    def largest_free(self) -> int:
        """Size of the largest free extent (0 when full)."""
        return self._free_by_size[-1] >> self._shift if self._free_by_size else 0

    def allocated_size(self, offset: int) -> int:
        """Bytes reserved for the allocation at ``offset`` (the request rounded up)."""
        try:
            return self._allocated[offset]
        except KeyError:
            raise ValueError(f"offset {offset} is not a live allocation") from None

    def allocate(self, size: int) -> int | None:
        """Reserve ``size`` bytes and return their offset, or None if no free extent fits."""
        size = self._rounded(size)
        index = bisect.bisect_left(self._free_by_size, self._size_key(size, 0))
        if index == len(self._free_by_size):
            return None
        key = self._free_by_size[index]
        extent_size, start = key >> self._shift, key & ((1 << self._shift) - 1)
        self._remove_free(start)
        if extent_size > size:
            self._add_free(start + size, extent_size - size)
        self._allocated[start] = size
        self._used += size
        return start

    def free(self, offset: int) -> None:
        """Return the allocation at ``offset``; ValueError for unknown offsets or double frees."""
        size = self._allocated.pop(offset, None)
        if size is None:
            raise ValueError(
                f"offset {offset} is not a live allocation (already freed, or never allocated): "
                "this is a bookkeeping bug in the caller"
            )
        self._used -= size
        start, end = offset, offset + size
        following = self._free_size.get(end)
        if following is not None:
            self._remove_free(end)
            end += following
        preceding = self._preceding_free(start)
        if preceding is None:
            self._add_free(start, end - start)
        else:
            self._resize_free(preceding, end - preceding)

    def _rounded(self, size: int) -> int:
        size = operator.index(size)
        if size < 0:
            raise ValueError(f"cannot allocate a negative size ({size} bytes)")
        return max(1, -(-size // self._alignment)) * self._alignment

    def _preceding_free(self, start: int) -> int | None:
        """Start of the free extent ending exactly at ``start``, if there is one."""
        index = bisect.bisect_left(self._free_by_start, start)
        if index == 0:
            return None
        candidate = self._free_by_start[index - 1]
        return candidate if candidate + self._free_size[candidate] == start else None

    def _add_free(self, start: int, size: int) -> None:
        if size <= 0:
            return
        self._free_size[start] = size
        bisect.insort(self._free_by_start, start)
        bisect.insort(self._free_by_size, self._size_key(size, start))

    def _resize_free(self, start: int, size: int) -> None:
        """Grow a free extent in place (its start, hence its spot by start, is unchanged)."""
        old_key = self._size_key(self._free_size[start], start)
        del self._free_by_size[bisect.bisect_left(self._free_by_size, old_key)]
        self._free_size[start] = size
        bisect.insort(self._free_by_size, self._size_key(size, start))

    def _remove_free(self, start: int) -> None:
        size = self._free_size.pop(start)
        del self._free_by_start[bisect.bisect_left(self._free_by_start, start)]
        del self._free_by_size[bisect.bisect_left(self._free_by_size, self._size_key(size, start))]

    def _size_key(self, size: int, start: int) -> int:
        """``(size, start)`` packed into one int that sorts the same way."""
        return size << self._shift | start

    def __repr__(self) -> str:
        return (
            f"ExtentAllocator(capacity={self._capacity}, used={self._used}, "
            f"allocations={len(self._allocated)}, free_extents={len(self._free_size)})"
        )
