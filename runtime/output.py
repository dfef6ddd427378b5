"""Plug points through which the notebook layer hooks in, without the runtime importing it.

- the output sink: where task output lines go (default: this process's stdout/stderr);
- the context provider: called when a task is submitted; its value comes back with the
  task's output lines (a notebook uses it to print into the submitting cell);
- the wait observer: called about every 0.1 s while get()/wait() block (progress bars,
  interrupts).
"""
from __future__ import annotations

import sys

_hooks = {"sink": None, "context": None, "observer": None}


def default_sink(context, prefix: str, stream: str, lines: list[str]) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write("".join(f"({prefix}) {line}\n" for line in lines))
    out.flush()


def set_output_sink(sink, context_provider=None) -> None:
    """``sink(context, prefix, stream, lines)``; None restores the default."""
    _hooks["sink"], _hooks["context"] = sink, context_provider


def set_wait_observer(observer) -> None:
    """``observer(refs)`` is called periodically while get()/wait() block; None removes it."""
    _hooks["observer"] = observer


def wait_observer():
    return _hooks["observer"]


def submit_context():
    provider = _hooks["context"]
    return provider() if provider is not None else None


def deliver(context, prefix: str, stream: str, lines: list[str]) -> None:
    sink = _hooks["sink"] or default_sink
    try:
        sink(context, prefix, stream, lines)
    except Exception:  # noqa: BLE001 - a broken sink must not lose output silently
        default_sink(None, prefix, stream, lines)
