"""A worker's stdout/stderr, captured at the file-descriptor level and sent to the task's owner.

fd 1 and 2 are replaced by pipes, so output of C extensions and subprocesses is caught too.
A reader thread per stream appends everything to the worker's log file and forwards whole
lines, prefixed like ``(f pid=1234 node=ab12)``, to the owner of the task running now. A
flood is rate-limited: past ``LINES_PER_SECOND`` lines are dropped with a note saying how
many and where the full log is.
"""
from __future__ import annotations

import fcntl
import os
import select
import sys
import termios
import threading
import time

LINES_PER_SECOND = 500


class OutputTarget:
    """Where lines go while one task runs: ``send(stream, lines)`` and a prefix."""

    def __init__(self, task_id: str, prefix: str, send):
        self.task_id, self.prefix, self.send = task_id, prefix, send


class StreamCapture:
    def __init__(self, fd: int, name: str, capture: "OutputCapture"):
        self.name, self.capture = name, capture
        self.log_fd = os.dup(fd)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, fd)
        os.close(write_fd)
        self.read_fd = read_fd
        self.busy = threading.Lock()
        self.partial = b""
        threading.Thread(target=self._pump, name=f"nebula-{name}", daemon=True).start()

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        while True:
            poller.poll()
            with self.busy:  # read and forward as one step, so drain() never misses bytes in hand
                data = os.read(self.read_fd, 65536)
                if not data:
                    return
                os.write(self.log_fd, data)
                self._split(data)

    def _split(self, data: bytes) -> None:
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        if lines:
            self.capture.forward(self.name, [line.decode(errors="replace") for line in lines])

    def drain(self, timeout: float = 0.2) -> None:
        """Wait until everything written so far went through the reader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.busy:
                if _pending_bytes(self.read_fd) == 0:
                    if self.partial:
                        self.capture.forward(self.name, [self.partial.decode(errors="replace")])
                        self.partial = b""
                    return
            time.sleep(0.0005)


def _pending_bytes(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


class OutputCapture:
    """Both streams of this worker, the current target and the flood limiter."""

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.target: OutputTarget | None = None
        self.active: dict[str, OutputTarget] = {}  # calls running now (several on concurrent actors)
        self.active_lock = threading.Lock()
        self.window_start, self.window_lines, self.dropped = time.monotonic(), 0, 0
        sys.stdout.flush()
        sys.stderr.flush()
        self.streams = [StreamCapture(1, "stdout", self), StreamCapture(2, "stderr", self)]

    def forward(self, stream: str, lines: list[str]) -> None:
        target = self.target
        if target is None:
            return
        allowed = self._admit(len(lines))
        if allowed:
            target.send(stream, lines[:allowed])

    def _admit(self, count: int) -> int:
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self._report_dropped()
            self.window_start, self.window_lines = now, 0
        allowed = max(0, min(count, LINES_PER_SECOND - self.window_lines))
        self.window_lines += count
        self.dropped += count - allowed
        return allowed

    def _report_dropped(self) -> None:
        if self.dropped and self.target is not None:
            self.target.send("stderr", [f"[nebula: {self.dropped} lines dropped (more than {LINES_PER_SECOND}/s); "
                                        f"the full output is in {self.log_path}]"])
        self.dropped = 0

    def begin(self, target: OutputTarget) -> None:
        with self.active_lock:
            self.active[target.task_id] = target
            self.target = target

    def end(self, task_id: str | None = None) -> None:
        """The call ``task_id`` finished: output goes to the latest call still running, if any."""
        sys.stdout.flush()
        sys.stderr.flush()
        for stream in self.streams:
            stream.drain()
        self._report_dropped()
        with self.active_lock:
            self.active.pop(task_id, None) if task_id is not None else self.active.clear()
            self.target = next(reversed(self.active.values()), None)
