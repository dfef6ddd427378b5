"""Runs one command in a fresh subprocess with a timeout, leaving no process of it behind."""

import os
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from suite import strays

BENCH_DIR = Path(__file__).resolve().parents[1]
PYCACHE_DIR = "/tmp/nebula-bench-pycache"


@dataclass
class Finished:
    """What a launched command did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    left_behind: int


def child_env(token):
    """Our environment, plus the workloads on PYTHONPATH, a marker, and bytecode caching on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    env[strays.MARKER_VAR] = token
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's imports come from cached bytecode
    env["PYTHONPYCACHEPREFIX"] = PYCACHE_DIR  # caches kept outside the repo
    return env


def kill_group(process):
    """Kill the command's whole process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_or_kill(process, timeout_s):
    """Wait for the command; kill its group at the timeout. True if it timed out."""
    try:
        process.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.wait()
        return True


def read_back(stream):
    stream.seek(0)
    return stream.read()


def launch(argv, timeout_s):
    """Run argv from the benchmarks folder; kill it at the timeout; reap anything it started.

    Output goes to files, not pipes, so a leftover process holding them cannot stall the wait.
    """
    token = uuid.uuid4().hex
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            argv, cwd=BENCH_DIR, env=child_env(token), text=True,
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            timed_out = wait_or_kill(process, timeout_s)
        finally:
            left_behind = strays.reap(token)
        return Finished(process.returncode, read_back(out), read_back(err), timed_out, left_behind)
