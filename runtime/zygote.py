"""A pre-imported process that forks workers in milliseconds instead of starting Python anew.

    node agent ──request (JSON line)──► zygote ──fork()──► worker (runs worker_main)
               ◄──"started ID PID" / "exit PID CODE"──┘  (the zygote reaps its children)

The zygote imports everything a worker needs (the runtime, cloudpickle, numpy) once, while
single-threaded, and forks a child per request; the child applies its environment, working
directory and log file, then runs the usual worker main. Workers it forks are its children:
they die with it (parent-death signal, lifeline inherited from the node), and it dies with the
node. Environments that need another interpreter are started the slow way by the node.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys


def main() -> None:
    from .child_process import install_parent_watch
    install_parent_watch()
    _preload()
    requests = int(os.environ.pop("NEBULA_ZYGOTE_IN"))
    replies = int(os.environ.pop("NEBULA_ZYGOTE_OUT"))
    os.write(replies, b"ready\n")
    pending = b""
    while True:
        ready, _, _ = select.select([requests], [], [], 0.05)
        _report_exits(replies)
        if not ready:
            continue
        data = os.read(requests, 65536)  # raw reads: a buffered reader would hide lines from select()
        if not data:
            os._exit(0)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            _fork_worker(json.loads(line), requests, replies)


def _preload() -> None:
    import cloudpickle  # noqa: F401
    import numpy  # noqa: F401
    from . import output_capture, session, worker, worker_main  # noqa: F401


def _fork_worker(request: dict, requests, replies: int) -> None:
    pid = os.fork()
    if pid == 0:
        os.close(requests)
        os.close(replies)
        _run_child(request)
    os.write(replies, f"started {request['worker_id']} {pid}\n".encode())


def _report_exits(replies: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        os.write(replies, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def _run_child(request: dict) -> None:
    """In the forked child: become a worker; never returns."""
    code = 1
    try:
        _become(request)
        from .worker_main import main as worker_main
        worker_main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported through the exit code and the log
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _become(request: dict) -> None:
    from .child_process import set_parent_death_signal
    set_parent_death_signal(signal.SIGKILL)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = extra


class ZygoteChild:
    """What the node holds for a worker the zygote forked: Popen's small interface.
    Its pid is known once the zygote answers (a few milliseconds, read without blocking)."""

    def __init__(self, zygote: "Zygote"):
        self.zygote, self.pid, self.returncode = zygote, 0, None
        self.kill_requested = False

    def poll(self):
        self.zygote.collect_exits()
        if self.returncode is None and self.pid and not self.zygote.alive() and not _running(self.pid):
            self.returncode = -signal.SIGKILL  # the zygote is gone, so nobody reports its exit
        return self.returncode

    def kill(self) -> None:
        if not self.pid:
            self.kill_requested = True
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    terminate = kill

    def wait(self, timeout: float | None = None):
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                import subprocess
                raise subprocess.TimeoutExpired("worker", timeout)
            time.sleep(0.01)
        return self.returncode


def _running(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Zygote:
    """The node's handle on its zygote process."""

    def __init__(self, env: dict):
        from .child_process import spawn_child
        to_zygote_r, self._to_zygote = os.pipe()
        self._from_zygote, from_zygote_w = os.pipe()
        env = {**env, "NEBULA_ZYGOTE_IN": str(to_zygote_r), "NEBULA_ZYGOTE_OUT": str(from_zygote_w)}
        self.popen = spawn_child([sys.executable, "-m", "nebula.zygote"], env=env,
                                 pass_fds=(to_zygote_r, from_zygote_w), name="zygote")
        os.close(to_zygote_r)
        os.close(from_zygote_w)
        os.set_blocking(self._from_zygote, False)
        self.children: dict[int, ZygoteChild] = {}
        self.ready = False  # until its imports are done, workers start the ordinary way (in parallel)
        self._pending = b""
        self._starting: dict[str, ZygoteChild] = {}

    def alive(self) -> bool:
        return self.popen.poll() is None

    def spawn(self, worker_id: str, env: dict, cwd: str | None, log: str) -> ZygoteChild:
        """Ask for a worker; returns at once (the pid arrives with a later collect_exits())."""
        request = {"worker_id": worker_id, "env": env, "cwd": cwd, "log": log}
        os.write(self._to_zygote, (json.dumps(request) + "\n").encode())
        child = self._starting[worker_id] = ZygoteChild(self)
        return child

    def collect_exits(self) -> None:
        try:
            self._pending += os.read(self._from_zygote, 65536)
        except (BlockingIOError, OSError):
            pass
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._handle(line.decode().split())

    def _handle(self, words: list[str]) -> None:
        if words[:1] == ["ready"]:
            self.ready = True
        elif words[:1] == ["started"]:
            child = self._starting.pop(words[1], None)
            if child is not None:
                child.pid = int(words[2])
                self.children[child.pid] = child
                if child.kill_requested:
                    child.kill()
        elif words[:1] == ["exit"]:
            child = self.children.pop(int(words[1]), None)
            if child is not None:
                child.returncode = int(words[2])

    def stop(self) -> None:
        self.collect_exits()
        for child in list(self.children.values()):
            child.kill()
        self.popen.kill()


if __name__ == "__main__":
    main()
