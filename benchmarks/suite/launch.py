"""Runs one command in a fresh subprocess with a timeout, leaving no process of it behind."""

import os
import signal
import subprocess
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


def launch(argv, timeout_s):
    """Run argv from the benchmarks folder; kill it at the timeout; reap anything it started."""
    token = uuid.uuid4().hex
    process = subprocess.Popen(
        argv, cwd=BENCH_DIR, env=child_env(token), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(process)
        stdout, stderr = process.communicate()
        timed_out = True
    finally:
        left_behind = strays.reap(token)
    return Finished(process.returncode, stdout, stderr, timed_out, left_behind)
