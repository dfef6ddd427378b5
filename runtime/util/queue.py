"""A FIFO queue shared by the driver, tasks and actors, held by an async actor (Ray's util.queue)."""
from __future__ import annotations

import asyncio
import queue as stdlib_queue
from collections.abc import Iterable

from ..api import get, kill, remote, wait


class Empty(stdlib_queue.Empty):
    """The queue had no item to give (also a ``queue.Empty``)."""


class Full(stdlib_queue.Full):
    """The queue had no room for the item (also a ``queue.Full``)."""


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in, first-out queue that any task or actor can use (pass it as an argument).

        q = Queue(maxsize=100)
        producer.remote(q)            # q.put(x) inside
        q.get(timeout=5)              # raises nebula.util.queue.Empty after 5 s

    The items live in one actor; ``actor_options`` are its ``.options()`` (e.g. ``num_cpus``).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        self.maxsize = maxsize
        self.actor = remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def _queue_actor(self):
        if self.actor is None:
            raise RuntimeError("This queue was shut down (Queue.shutdown()); create a new Queue")
        return self.actor

    # ---- size ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds now."""
        return get(self._queue_actor().qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return get(self._queue_actor().empty.remote())

    def full(self) -> bool:
        return get(self._queue_actor().full.remote())

    # ---- put -----------------------------------------------------------------------------

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; when full, wait up to ``timeout`` s (forever if None), then raise Full."""
        actor = self._queue_actor()
        if not block:
            stored = get(actor.put_nowait.remote(item))
        else:
            _check_timeout(timeout)
            stored = get(actor.put.remote(item, timeout))
        if not stored:
            raise Full(f"the queue is full (maxsize={self.maxsize})")

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items) -> None:
        """Add all ``items`` at once, or none of them (Full) when they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        items = list(items)
        stored, size = get(self._queue_actor().put_nowait_batch.remote(items))
        if not stored:
            raise Full(f"Cannot add {len(items)} items to queue of size {size} and maxsize {self.maxsize}.")

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.put, item, block, timeout)

    # ---- get -----------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the oldest item; when empty, wait up to ``timeout`` s, then raise Empty."""
        actor = self._queue_actor()
        if not block:
            found, item = get(actor.get_nowait.remote())
        else:
            _check_timeout(timeout)
            found, item = get(actor.get.remote(timeout))
        if not found:
            raise Empty("the queue is empty" if timeout is None else f"no item arrived within {timeout} s")
        return item

    def get_nowait(self):
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return ``num_items`` items, or none (Empty) when fewer are queued."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        found, items = get(self._queue_actor().get_nowait_batch.remote(num_items))
        if not found:
            raise Empty(f"Cannot get {num_items} items from queue of size {items}.")
        return items

    async def get_async(self, block: bool = True, timeout: float | None = None):
        return await asyncio.to_thread(self.get, block, timeout)

    # ---- end -----------------------------------------------------------------------------

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the queue's actor; unless ``force``, calls already sent get ``grace_period_s`` to land."""
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if not force:
            wait([actor.qsize.remote()], timeout=grace_period_s)
        kill(actor)


class _QueueActor:
    """Holds the items; blocking calls wait on the actor's event loop, never on a thread."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout=None) -> bool:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def get(self, timeout=None) -> tuple:
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    def put_nowait(self, item) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def put_nowait_batch(self, items: list) -> tuple:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False, self.queue.qsize()
        for item in items:
            self.queue.put_nowait(item)
        return True, self.queue.qsize()

    def get_nowait(self) -> tuple:
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    def get_nowait_batch(self, num_items: int) -> tuple:
        if num_items > self.queue.qsize():
            return False, self.queue.qsize()
        return True, [self.queue.get_nowait() for _ in range(num_items)]
