"""A small thread-safe future for the per-object and per-get bookkeeping of an owner.

``concurrent.futures.Future`` allocates a Condition, an RLock, a deque, two lists and five
bound methods: ten objects the garbage collector tracks. An owner keeps one future per
object it owns and makes one per ref it reads, so a burst of 10,000 tasks kept 100,000 such
objects alive, and Python's full collections, which walk every tracked object, took a fifth
of the driver's time. ``LightFuture`` is one object until a thread actually blocks on it
(then it makes a ``threading.Event``).

It has the part of ``concurrent.futures.Future``'s interface the runtime uses: ``done``,
``result``, ``exception``, ``add_done_callback``, ``set_result``, ``set_exception``.
Callbacks run once, in the thread that completes the future (or at once, in the caller's,
when it is already done), and are dropped after they ran: a callback that holds an
ObjectRef must not keep it alive as long as the future. A callback that raises is logged.
"""
from __future__ import annotations

import concurrent.futures
import threading

_lock = threading.Lock()  # shared: each critical section is a few attribute moves


class LightFuture:
    __slots__ = ("_done", "_value", "_error", "_callbacks", "_event")

    def __init__(self) -> None:
        self._done = False
        self._value = None
        self._error: BaseException | None = None
        self._callbacks: list | None = None
        self._event: threading.Event | None = None

    @classmethod
    def completed(cls, value) -> LightFuture:
        """A future that is already done with ``value``."""
        future = cls()
        future._value, future._done = value, True
        return future

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def result(self, timeout: float | None = None):
        if not self._done:
            self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._done:
            self._wait(timeout)
        return self._error

    def add_done_callback(self, fn) -> None:
        with _lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = [fn]
                else:
                    self._callbacks.append(fn)
                return
        _call(fn, self)

    def set_result(self, value) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value, error: BaseException | None) -> None:
        with _lock:
            if self._done:
                raise concurrent.futures.InvalidStateError(f"{self!r} is already done")
            self._value, self._error, self._done = value, error, True
            callbacks, self._callbacks, event = self._callbacks, None, self._event
        if event is not None:
            event.set()
        for fn in callbacks or ():
            _call(fn, self)

    def _wait(self, timeout: float | None) -> None:
        with _lock:
            if self._done:
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise concurrent.futures.TimeoutError()

    def __repr__(self) -> str:
        state = ("failed" if self._error is not None else "done") if self._done else "pending"
        return f"<LightFuture {state}>"


def _call(fn, future: LightFuture) -> None:
    try:
        fn(future)
    except Exception:  # as concurrent.futures does: one bad callback must not stop the rest
        import logging
        logging.getLogger("nebula.session").exception("a callback of %r raised", future)
