"""Identifiers of jobs, tasks, objects, actors, nodes and workers: random hex strings."""
from __future__ import annotations

import os


def new_id(nbytes: int = 12) -> str:
    return os.urandom(nbytes).hex()


def return_id(task_id: str, index: int) -> str:
    """The id of a task's ``index``-th return value (derived, so retries reuse it)."""
    return f"{task_id}{index:04x}"


def short(any_id: str) -> str:
    return any_id[:8]
