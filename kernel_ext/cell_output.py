"""Task output in the cell that submitted the task, also when it arrives after that cell ended.

    cell runs ── f.remote() ── context provider ──► CellOutput of the running cell
    worker prints ──► (nebula-io thread) sink(context, ...) ──► context.write(...)
        while the cell runs:  a stream message with the cell's parent header
        after it ended:       an update of a display the cell left behind (a display id)

ipykernel sends output written from a background thread to the *latest* cell, and frontends
drop stream messages for cells that finished; an ``update_display_data`` for a display id
reaches the cell that created the display in JupyterLab and nbclient alike. So a cell that
ends while its tasks still run leaves an (empty) display behind, and later lines update it.
``OutputBlock`` is that display; ``%%remote --all-nodes`` also uses one per node.
"""
from __future__ import annotations

import threading
import time
import uuid
import weakref

MAX_BLOCK_CHARS = 200_000
UPDATE_INTERVAL = 0.1


def format_lines(prefix: str, lines) -> str:
    return "".join(f"({prefix}) {line}\n" for line in lines)


class KernelIO:
    """Writes to this kernel's frontends for a given cell (parent header), from any thread."""

    def __init__(self, shell):
        import sys
        self.shell = shell
        self.streams = {"stdout": sys.stdout, "stderr": sys.stderr}

    def current_parent(self) -> dict:
        return self.shell.get_parent()

    def stream(self, parent: dict, name: str, text: str) -> None:
        out = self.streams[name]
        if not hasattr(out, "set_thread_parent"):  # ipykernel < 6.21: only the latest cell is reachable
            out.write(text)
            return
        token = out.set_thread_parent(parent)
        try:
            out.write(text)
        finally:
            out.reset_thread_parent(token)

    def display(self, bundle: dict, display_id: str, update: bool = False) -> None:
        from IPython.display import publish_display_data
        publish_display_data(bundle, transient={"display_id": display_id}, update=update)


class OutputBlock:
    """A display in one cell that collects lines of text; updates are coalesced (at most 10 a second)."""

    def __init__(self, io: KernelIO, header: str = ""):
        self.io, self.header = io, header
        self.display_id = uuid.uuid4().hex
        self.text, self.footer = "", ""
        self.lock = threading.Lock()
        self.last_update, self.timer = 0.0, None

    def show(self) -> "OutputBlock":
        """Create the display in the current cell (call from the cell's own thread)."""
        self.io.display(self._bundle(), self.display_id)
        self.last_update = time.monotonic()
        return self

    def write(self, prefix: str, stream: str, lines) -> None:
        self.append(format_lines(prefix, lines))

    def append(self, text: str) -> None:
        with self.lock:
            self.text = (self.text + text)[-MAX_BLOCK_CHARS:]
        self._schedule_update()

    def finish(self, footer: str) -> None:
        with self.lock:
            self.footer = footer
        self._update()

    def _schedule_update(self) -> None:
        with self.lock:
            if self.timer is not None:
                return
            delay = max(0.0, self.last_update + UPDATE_INTERVAL - time.monotonic())
            self.timer = threading.Timer(delay, self._update)
            self.timer.daemon = True
            self.timer.start()

    def _update(self) -> None:
        with self.lock:
            self.timer, self.last_update = None, time.monotonic()
            bundle = self._bundle()
        self.io.display(bundle, self.display_id, update=True)

    def _bundle(self) -> dict:
        parts = [p for p in (self.header and self.header + "\n", self.text, self.footer) if p]
        return {"text/plain": "".join(parts).rstrip("\n")}


class CellOutput:
    """Where the output of the tasks one cell submitted goes (see the module docstring)."""

    def __init__(self, io: KernelIO, parent: dict):
        self.io, self.parent = io, parent
        self.lock = threading.Lock()
        self.running = True
        self.late: OutputBlock | None = None

    def write(self, prefix: str, stream: str, lines) -> None:
        text = format_lines(prefix, lines)
        with self.lock:
            late = None if self.running else self.late
            if late is None:
                self.io.stream(self.parent, stream, text)
        if late is not None:
            late.append(text)

    def cell_ended(self, tasks_may_still_print: bool) -> None:
        """Called in the cell's thread as it ends: leave a display behind if tasks still run."""
        late = OutputBlock(self.io).show() if tasks_may_still_print else None
        with self.lock:
            self.running, self.late = False, late


class CellOutputRouter:
    """The runtime's output sink and context provider for one kernel, plus the cell hooks.

    Whether a finished cell's tasks may still print is read from the runtime holding on to
    the cell's context: it keeps a task's context until the task ends. So the router keeps
    only a weak reference once the cell is over.
    """

    def __init__(self, io: KernelIO):
        self.io = io
        self.running: CellOutput | None = None
        self.parent: dict | None = None
        self.redirect = threading.local()

    def pre_run_cell(self, *_info) -> None:
        self.parent, self.running = self.io.current_parent(), None

    def post_run_cell(self, *_result) -> None:
        cell, self.running, self.parent = self.running, None, None
        if cell is None:
            return
        still_held = weakref.ref(cell)
        del cell
        cell = still_held()
        if cell is not None:
            cell.cell_ended(tasks_may_still_print=True)

    def context(self):
        """Called by the runtime at every ``.remote()``, in the submitting thread."""
        target = getattr(self.redirect, "target", None)
        if target is not None:
            return target
        if self.parent is None:
            return None
        if self.running is None:
            self.running = CellOutput(self.io, self.parent)
        return self.running

    def sink(self, context, prefix: str, stream: str, lines) -> None:
        """Called by the runtime (on its I/O thread) with a task's output lines."""
        if context is None:
            from nebula.output import default_sink
            default_sink(None, prefix, stream, lines)
        else:
            context.write(prefix, stream, lines)

    def redirect_to(self, target):
        """``with router.redirect_to(block):`` tasks submitted in the block print into ``block``."""
        return _Redirect(self.redirect, target)


class _Redirect:
    def __init__(self, local: threading.local, target):
        self.local, self.target = local, target

    def __enter__(self):
        self.previous = getattr(self.local, "target", None)
        self.local.target = self.target
        return self.target

    def __exit__(self, *exc):
        self.local.target = self.previous
