"""Waiting for a condition in tests without fixed sleeps."""
from __future__ import annotations

import time


def wait_until(predicate, timeout=5.0, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
