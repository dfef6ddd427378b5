"""Tasks started in the background stay referenced until they finish.

asyncio keeps only weak references to tasks: a task nobody holds can be garbage-collected
while it waits (a connection silently dropped mid-conversation). Every fire-and-forget
coroutine in Nebula starts here instead of with a bare ``create_task``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures

_running: set = set()


def start(loop: asyncio.AbstractEventLoop, coro) -> asyncio.Task:
    """``loop.create_task(coro)``, held until done (call on the loop's own thread)."""
    task = loop.create_task(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def start_threadsafe(loop: asyncio.AbstractEventLoop, coro) -> concurrent.futures.Future:
    """``run_coroutine_threadsafe(coro, loop)`` from another thread, held until done."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    _running.add(future)
    future.add_done_callback(_running.discard)
    return future
