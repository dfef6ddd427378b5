"""Worker pools on a real cluster: a driver that keeps changing sys.path keeps running.

Workers are pooled per runtime_env, working directory and sys.path, so a notebook that
changes them makes a new pool each time. At the node's worker cap, the worker idle longest
in another pool is asked to exit to make room; one that still owns objects declines.
"""
from __future__ import annotations

import os
import sys

import psutil
import pytest

import nebula
from polling import wait_until

pytestmark = pytest.mark.timeout(90)


@nebula.remote
def pid():
    return os.getpid()


@nebula.remote
def keep_an_object():
    return os.getpid(), [nebula.put("kept by its owner")]  # this worker owns the inner object


@nebula.remote
def hoard():
    global HOARD
    HOARD = nebula.put(b"x" * 16)  # owned by this worker for as long as it lives
    return os.getpid()


@pytest.fixture
def capped_cluster():
    nebula.shutdown()
    saved = list(sys.path)
    nebula.init(num_cpus=1, object_store_memory="128MiB", _node_config={"max_workers": 2})
    yield
    nebula.shutdown()
    sys.path[:] = saved


def live_workers() -> list:
    return [w for w in nebula.state.snapshot().workers if w.get("state") != "DEAD"]


def test_new_pools_past_the_cap_retire_idle_workers_of_old_ones(capped_cluster, tmp_path):
    seen = []
    for index in range(5):
        folder = tmp_path / f"pool{index}"
        folder.mkdir()
        sys.path.append(str(folder))  # a new pool for the tasks submitted from now on
        seen.append(nebula.get(pid.remote(), timeout=30))
        assert len(live_workers()) <= 2
    assert len(set(seen)) == 5  # each pool had a worker of its own
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in seen[:-2]), 10)


def test_a_worker_holding_its_own_object_stays_and_a_retired_ones_objects_live_on(capped_cluster, tmp_path):
    """Pool A's worker keeps an object of its own in a global: asked to retire, it declines.
    Pool B's worker put an object the driver holds: it retires, and the object lives on in
    the store. Pool C gets B's slot."""
    folders = [tmp_path / f"pool{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
    sys.path.append(str(folders[0]))
    hoarder = nebula.get(hoard.remote(), timeout=30)
    sys.path.append(str(folders[1]))
    putter, [kept] = nebula.get(keep_an_object.remote(), timeout=30)
    sys.path.append(str(folders[2]))
    assert nebula.get(pid.remote(), timeout=30) not in (hoarder, putter)
    assert wait_until(lambda: not psutil.pid_exists(putter), 10)
    assert psutil.pid_exists(hoarder)
    assert nebula.get(kept, timeout=10) == "kept by its owner"
