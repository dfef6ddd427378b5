"""Shared fixtures: a fresh embedded cluster per test module, and a leak check."""
from __future__ import annotations

import os

import pytest

import nebula


@pytest.fixture(scope="module")
def cluster():
    """An embedded 2-CPU cluster for the module; shut down afterwards."""
    nebula.shutdown()
    info = nebula.init(num_cpus=2, object_store_memory="512MiB")
    yield info
    nebula.shutdown()


@pytest.fixture
def fresh_cluster():
    """A private embedded cluster for one test."""
    nebula.shutdown()
    info = nebula.init(num_cpus=2, object_store_memory="256MiB")
    yield info
    nebula.shutdown()


def nebula_processes() -> list:
    """Processes running nebula's entry points (node agents, workers) on this machine."""
    import psutil
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if any(m in cmd for m in ("nebula.node_main", "nebula.worker_main", "nebula.zygote")) and proc.info["status"] != "zombie":
            found.append(proc)
    return found
