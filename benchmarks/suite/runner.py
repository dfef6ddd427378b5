"""Runs one workload on one system in a fresh process and turns what it printed into a record."""

import json
import os
import time
from dataclasses import asdict, dataclass, field

from suite.launch import launch
from workloads.child import RESULT_PREFIX


@dataclass
class Record:
    """One run of one workload on one system."""

    workload: str
    system: str
    repeat: int
    ok: bool
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    left_behind: int = 0
    load_after: float = 0.0  # 1-minute load average when it ended: others' work skews numbers

    def as_json(self):
        return asdict(self)


def parse_metrics(stdout):
    """The metrics dict from the child's result line, or None if it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def error_text(done, timeout_s):
    """Why a run produced no metrics, for the log and the JSON."""
    if done.timed_out:
        return f"timed out after {timeout_s} s and was killed"
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    return f"exited {done.returncode} without a result:\n{tail}"


def run_once(system, workload, repeat, quick, timeout_s):
    """Launch `python -m workloads.child SYSTEM WORKLOAD` and record the outcome."""
    argv = [system.python, "-m", "workloads.child", system.name, workload]
    start = time.monotonic()
    done = launch(argv + (["--quick"] if quick else []), timeout_s)
    metrics = None if done.timed_out else parse_metrics(done.stdout)
    return Record(
        workload, system.name, repeat, ok=metrics is not None, metrics=metrics or {},
        error=None if metrics is not None else error_text(done, timeout_s),
        timed_out=done.timed_out, wall_s=time.monotonic() - start, left_behind=done.left_behind,
        load_after=os.getloadavg()[0],
    )
