"""Shared fixtures: a fresh embedded cluster per test module, and a leak check."""
from __future__ import annotations

import os

import pytest

import nebula


MODULE_CLUSTER = {"num_cpus": 2, "object_store_memory": "512MiB"}
_module_cluster: dict = {}  # "info": the module cluster's, while one is up


@pytest.fixture(scope="module")
def cluster():
    """An embedded 2-CPU cluster for the module; shut down afterwards."""
    nebula.shutdown()
    info = _module_cluster["info"] = nebula.init(**MODULE_CLUSTER)
    yield info
    _module_cluster.clear()
    nebula.shutdown()


@pytest.fixture
def fresh_cluster():
    """A private embedded cluster for one test. The module's cluster, if one was up, is started
    again after it: the next test would otherwise get a default cluster with every core."""
    nebula.shutdown()
    info = nebula.init(num_cpus=2, object_store_memory="256MiB")
    yield info
    nebula.shutdown()
    if "info" in _module_cluster:
        _module_cluster["info"].update(nebula.init(**MODULE_CLUSTER))


def nebula_processes() -> list:
    """Processes running nebula's entry points (node agents, workers) on this machine."""
    import psutil
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(m in cmd for m in ("nebula.node_main", "nebula.worker_main", "nebula.zygote")) and proc.info["status"] != "zombie":
            found.append(proc)
    return found
