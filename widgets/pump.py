"""A thread that owns a notebook widget's Bokeh document: it ticks the board and runs browser changes.

A notebook cell may block for minutes in ``nebula.get()``, so the kernel's own loop cannot
be what updates a live view. Instead each widget's document belongs to one thread: it calls
``tick`` every ``period`` seconds and runs, in between, the calls other threads hand it
(changes the browser made, such as the switch), so only that thread ever touches the document.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger("nebula.widgets")


class DocumentThread:
    def __init__(self, tick, period: float = 0.2, name: str = "nebula-widget"):
        self._tick, self.period = tick, period
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, function, *args) -> None:
        """Run ``function(*args)`` on the document's thread (from any thread)."""
        self._calls.put((function, args))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop ticking; waits (up to ``timeout``) for a tick in progress to end."""
        self._stopped.set()
        self._calls.put((None, ()))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stopped.is_set():
            now = time.monotonic()
            if now >= due:
                due = now + self.period
                _guarded(self._tick)
                continue
            try:
                function, args = self._calls.get(timeout=due - now)
            except queue.Empty:
                continue
            if function is not None:
                _guarded(function, *args)


def _guarded(function, *args) -> None:
    try:
        function(*args)
    except Exception:  # one bad update must not stop the view
        log.exception("a live view's update failed")
