"""A progress bar for ``nebula.get``/``nebula.wait`` on many refs, once they have waited about a second.

The runtime calls ``observe(refs)`` about every 0.1 s while a get/wait blocks. After
``DELAY`` seconds on the same call, a bar appears (an ipywidgets progress bar in a kernel
that has ipywidgets, text elsewhere) and a small thread keeps it current until every ref is
ready or the cell ends, so the bar also completes when get() returns.
"""
from __future__ import annotations

import sys
import threading
import time

import nebula

DELAY = 1.0
MIN_REFS = 2
REFRESH = 0.2


def count_ready(refs: list) -> int:
    ready, _ = nebula.wait(refs, num_returns=len(refs), timeout=0)
    return len(ready)


class WidgetBar:
    def __init__(self, total: int):
        import ipywidgets
        from IPython.display import display
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=total, description="nebula.get",
                                          bar_style="info")
        self.label = ipywidgets.Label(f"0/{total} ready")
        display(ipywidgets.HBox([self.bar, self.label]))

    def show(self, done: int, total: int, final: bool) -> None:
        self.bar.value = done
        self.label.value = f"{done}/{total} ready" + ("" if not final or done == total else " (stopped)")
        if final:
            self.bar.bar_style = "success" if done == total else "warning"


class TextBar:
    """A text bar: a display updated in place in a kernel, a carriage-return line in a terminal."""

    def __init__(self, total: int, in_kernel: bool):
        self.handle = None
        if in_kernel:
            from IPython.display import display
            self.handle = display({"text/plain": _text_bar(0, total)}, raw=True, display_id=True)

    def show(self, done: int, total: int, final: bool) -> None:
        text = _text_bar(done, total)
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        else:
            sys.stderr.write("\r" + text + ("\n" if final else ""))
            sys.stderr.flush()


def _text_bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return f"nebula.get [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ready"


def make_bar(total: int, in_kernel: bool):
    if in_kernel:
        try:
            return WidgetBar(total)
        except ImportError:
            pass
    return TextBar(total, in_kernel)


class _TrackedWait:
    """One blocking get/wait call: its refs, when it started, and its bar once shown."""

    def __init__(self, refs):
        self.call = refs
        self.refs = list(dict.fromkeys(refs))
        self.started = time.monotonic()
        self.bar = None
        self.done = threading.Event()


class ProgressObserver:
    """The runtime's wait observer; ``cell_ended`` finishes the bar of the cell's last wait."""

    def __init__(self, in_kernel: bool):
        self.in_kernel = in_kernel
        self.tracked: _TrackedWait | None = None
        self.lock = threading.Lock()

    def observe(self, refs) -> None:
        if threading.current_thread() is not threading.main_thread() or len(refs) < MIN_REFS:
            return
        tracked = self.tracked
        if tracked is None or tracked.call is not refs:
            self.finish()
            tracked = self.tracked = _TrackedWait(refs)
        if tracked.bar is None and time.monotonic() - tracked.started >= DELAY:
            tracked.bar = make_bar(len(tracked.refs), self.in_kernel)
            threading.Thread(target=self._refresh, args=(tracked,), name="nebula-progress", daemon=True).start()

    def _refresh(self, tracked: _TrackedWait) -> None:
        total = len(tracked.refs)
        while not tracked.done.is_set():
            done = count_ready(tracked.refs)
            with self.lock:
                if tracked.done.is_set():
                    return
                tracked.bar.show(done, total, final=done == total)
            if done == total:
                tracked.refs = []
                return
            tracked.done.wait(REFRESH)

    def finish(self, *_info) -> None:
        """The wait being tracked is over (the cell ended, or another wait began)."""
        tracked, self.tracked = self.tracked, None
        if tracked is None or tracked.bar is None:
            return
        with self.lock:
            if not tracked.done.is_set() and tracked.refs:
                tracked.done.set()
                tracked.bar.show(count_ready(tracked.refs), len(tracked.refs), final=True)
            tracked.done.set()
        tracked.refs = []
