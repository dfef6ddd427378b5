"""The kernel's side of a board whose view models run in their own process (see ``model_process_main``).

``ModelProcess`` starts that process (``subprocess`` with ``sys.executable``; it joins the
cluster through ``nebula.api.join_env()`` in its environment, never its command line),
sends it commands and hands back what it sent, without blocking. ``close()`` ends it and
waits for it, so no process outlives its board.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

from nebula import api

EXIT_WAIT = 2.0


class ModelProcess:
    def __init__(self, keys: list[str], owner: str, period: float):
        self.conn, child_end = multiprocessing.Pipe(duplex=True)
        env = {**os.environ, **api.join_env()}
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "nebula.widgets.model_process_main", str(child_end.fileno())],
                pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        self.conn.send(("start", {"keys": keys, "owner": owner, "period": period}))

    def send(self, *message) -> None:
        try:
            self.conn.send(message)
        except OSError:
            pass  # it exited: ``exit_status`` says so at the next tick

    def messages(self) -> list:
        """Everything it sent since the last call (never blocks)."""
        out = []
        try:
            while self.conn.poll():
                out.append(self.conn.recv())
        except (EOFError, OSError):
            pass
        return out

    @property
    def exit_status(self) -> int | None:
        return self.popen.poll()

    def close(self) -> None:
        self.conn.close()  # it sees end-of-file and leaves the cluster
        try:
            self.popen.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def describe_exit(code: int) -> str:
    """'was killed by signal 9 (SIGKILL)' or 'exited with code 1'."""
    if code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name}: out of memory, or killed from outside)"
    return f"exited with code {code} (its error is in the kernel's log)"
