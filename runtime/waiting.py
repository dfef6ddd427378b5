"""``nebula.wait``: block until enough refs are ready, keeping the input order in both lists."""
from __future__ import annotations

import threading
import time



def wait_for(session, refs: list, num_returns: int, timeout: float | None):
    futures = [session.readiness(ref) for ref in refs]
    done = threading.Event()
    counter = _ReadyCounter(num_returns, done)
    for fut in futures:
        fut.add_done_callback(counter.one_ready)
    deadline = None if timeout is None else time.monotonic() + timeout
    with session.blocked_in_get(), session.cancel_on_interrupt(refs):
        _wait_event(done, deadline, session.wait_observer, refs)
    ready_flags = [f.done() for f in futures]
    ready = [r for r, ok in zip(refs, ready_flags) if ok][:max(num_returns, 0) or None]
    if num_returns == 0:
        ready = []
    ready_set = set(id(r) for r in ready)
    not_ready = [r for r in refs if id(r) not in ready_set]
    return ready, not_ready


class _ReadyCounter:
    def __init__(self, needed: int, done: threading.Event):
        self.needed, self.done, self.lock = needed, done, threading.Lock()
        if needed <= 0:
            done.set()

    def one_ready(self, _fut) -> None:
        with self.lock:
            self.needed -= 1
            if self.needed <= 0:
                self.done.set()


def _wait_event(done: threading.Event, deadline, observer, refs) -> None:
    while not done.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        step = remaining if observer is None else min(0.1, remaining if remaining is not None else 0.1)
        if done.wait(step) or observer is None:
            continue
        observer(refs)
