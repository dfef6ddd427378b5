"""Tests for nebula.node_resources (detection, validation, child environments) and nebula.telemetry."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import types

import pytest

from nebula import node_resources
from nebula.node_resources import (
    NodeResources,
    detect_cpu_count,
    detect_gpus,
    detect_memory_limit,
    gpu_env_for,
    thread_limit_env,
)
from nebula.telemetry import NodeTelemetry


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """An empty fake cgroup root; /proc/self/cgroup points at a fake membership file."""
    membership = tmp_path / "proc_self_cgroup"
    membership.write_text("0::/\n")
    monkeypatch.setattr(node_resources, "PROC_SELF_CGROUP", membership)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    root = tmp_path / "cgroup"
    root.mkdir()
    return root


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------------------- CPU


def test_detect_cpu_count_on_this_machine():
    count = detect_cpu_count()
    assert 1 <= count <= len(os.sched_getaffinity(0))


def test_cpu_count_without_cgroup_files_is_the_affinity(cgroup):
    assert detect_cpu_count(cgroup) == 8


def test_cgroup_v2_quota_is_rounded_up(cgroup):
    write(cgroup / "cpu.max", "250000 100000\n")
    assert detect_cpu_count(cgroup) == 3


def test_cgroup_v2_unlimited_quota(cgroup):
    write(cgroup / "cpu.max", "max 100000\n")
    assert detect_cpu_count(cgroup) == 8


def test_tiny_quota_still_gives_one_cpu(cgroup):
    write(cgroup / "cpu.max", "10000 100000\n")
    assert detect_cpu_count(cgroup) == 1


def test_quota_above_affinity_is_capped_by_affinity(cgroup):
    write(cgroup / "cpu.max", "1600000 100000\n")
    assert detect_cpu_count(cgroup) == 8


def test_module_constant_is_the_default_root(cgroup, monkeypatch):
    write(cgroup / "cpu.max", "200000 100000\n")
    monkeypatch.setattr(node_resources, "CGROUP_ROOT", cgroup)
    assert detect_cpu_count() == 2


def test_cgroup_v1_cfs_quota(cgroup):
    write(cgroup / "cpu,cpuacct" / "cpu.cfs_quota_us", "150000\n")
    write(cgroup / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert detect_cpu_count(cgroup) == 2


def test_cgroup_v1_unlimited_quota(cgroup):
    write(cgroup / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(cgroup / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert detect_cpu_count(cgroup) == 8


def test_own_nested_cgroup_is_honoured(cgroup):
    node_resources.PROC_SELF_CGROUP.write_text("4:cpu,cpuacct:/docker/abc\n0::/user.slice/job\n")
    write(cgroup / "user.slice" / "job" / "cpu.max", "300000 100000\n")
    write(cgroup / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "500000\n")
    write(cgroup / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert detect_cpu_count(cgroup) == 3  # the tightest quota wins


def test_garbage_cgroup_files_are_ignored(cgroup):
    write(cgroup / "cpu.max", "lots of cpus\n")
    assert detect_cpu_count(cgroup) == 8


# -------------------------------------------------------------------------------------- memory


def test_memory_limit_on_this_machine():
    import psutil

    assert 0 < detect_memory_limit() <= psutil.virtual_memory().total


def test_cgroup_v2_memory_limit(cgroup):
    write(cgroup / "memory.max", f"{2**30}\n")
    assert detect_memory_limit(cgroup) == 2**30


def test_cgroup_v2_unlimited_memory(cgroup):
    import psutil

    write(cgroup / "memory.max", "max\n")
    assert detect_memory_limit(cgroup) == psutil.virtual_memory().total


def test_cgroup_v1_memory_limit_and_its_unlimited_marker(cgroup):
    import psutil

    write(cgroup / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert detect_memory_limit(cgroup) == psutil.virtual_memory().total
    write(cgroup / "memory" / "memory.limit_in_bytes", f"{3 * 2**20}\n")
    assert detect_memory_limit(cgroup) == 3 * 2**20


# ----------------------------------------------------------------------------------------- GPU


class FakeNVMLError(Exception):
    pass


def fake_pynvml(gpu_count=2, fail_init=False):
    """A stand-in `pynvml` module: `gpu_count` identical 16 GiB GPUs, bytes names like old NVML."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError
    module.calls = []

    def init():
        module.calls.append("init")
        if fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: gpu_count
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: b"Fake GPU"
    module.nvmlDeviceGetUUID = lambda h: f"GPU-0000{h}"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=16 * 2**30, used=2**30)
    module.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h, memory=5)
    return module


def test_detect_gpus_without_a_gpu_is_empty_and_quiet(caplog, capfd):
    caplog.set_level(logging.DEBUG)
    gpus = detect_gpus()
    assert isinstance(gpus, list)
    if not gpus:
        assert caplog.records == []
        assert capfd.readouterr() == ("", "")


def test_detect_gpus_when_nvml_init_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    assert detect_gpus() == []


def test_detect_gpus_when_pynvml_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert detect_gpus() == []


def test_detect_gpus_describes_each_gpu(monkeypatch):
    fake = fake_pynvml(gpu_count=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = detect_gpus(environ={})
    assert gpus == [
        {"index": 0, "name": "Fake GPU", "uuid": "GPU-00000", "memory_total": 16 * 2**30},
        {"index": 1, "name": "Fake GPU", "uuid": "GPU-00001", "memory_total": 16 * 2**30},
    ]
    assert fake.calls == ["init", "shutdown"]


def test_detect_gpus_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpu_count=3))
    assert [g["index"] for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "2,0"})] == [0, 2]
    assert [g["index"] for g in detect_gpus({"CUDA_VISIBLE_DEVICES": "GPU-00001"})] == [1]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_gpu_env_for():
    assert gpu_env_for([0, 2]) == {"CUDA_VISIBLE_DEVICES": "0,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert gpu_env_for([])["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError, match="non-negative integers"):
        gpu_env_for([-1])
    with pytest.raises(ValueError, match="non-negative integers"):
        gpu_env_for(["0"])


# ------------------------------------------------------------------------------------- threads


def test_thread_limit_env_fills_in_what_the_user_did_not_set():
    assert thread_limit_env(4, {}) == {
        "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}


def test_thread_limit_env_respects_user_settings():
    env = thread_limit_env(4, {"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": ""})
    assert env == {"OPENBLAS_NUM_THREADS": "4"}


def test_thread_limit_env_rounds_down_but_never_below_one():
    assert thread_limit_env(0.5, {})["OMP_NUM_THREADS"] == "1"
    assert thread_limit_env(0, {})["OMP_NUM_THREADS"] == "1"
    assert thread_limit_env(2.9, {})["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="num_cpus"):
        thread_limit_env(-1, {})


# ------------------------------------------------------------------------------ NodeResources


def test_detect_with_overrides_and_custom_resources():
    resources = NodeResources.detect(num_cpus=4, num_gpus=0, resources={"accel": 2}, memory=1000)
    assert resources.total == {"CPU": 4, "memory": 1000, "accel": 2}


def test_detect_includes_gpus_only_when_there_are_some():
    assert NodeResources.detect(num_cpus=1, num_gpus=2, memory=10).total["GPU"] == 2
    assert "GPU" not in NodeResources.detect(num_cpus=1, num_gpus=0, memory=10).total


def test_detect_defaults_come_from_this_machine():
    total = NodeResources.detect().total
    assert total["CPU"] == detect_cpu_count()
    assert total["memory"] == detect_memory_limit()
    assert total.get("GPU", 0) == len(detect_gpus())


def test_node_resources_is_frozen():
    resources = NodeResources.detect(num_cpus=1, memory=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resources.total = {}


@pytest.mark.parametrize("kwargs, message", [
    ({"num_cpus": -1}, "num_cpus must be a finite number >= 0"),
    ({"num_cpus": "4"}, "num_cpus must be a number"),
    ({"num_gpus": -2}, "num_gpus must be a finite number >= 0"),
    ({"num_gpus": 1.5}, "whole number"),
    ({"memory": -5}, "memory must be a finite number >= 0"),
    ({"resources": {"accel": "two"}}, "custom resource 'accel' must be a number"),
    ({"resources": {"accel": True}}, "custom resource 'accel' must be a number"),
    ({"resources": {"accel": float("nan")}}, "finite"),
    ({"resources": {"accel": -1}}, ">= 0"),
    ({"resources": {"CPU": 2}}, "'CPU' is a reserved resource name"),
    ({"resources": {"GPU": 1}}, "'GPU' is a reserved resource name"),
    ({"resources": {"memory": 1}}, "'memory' is a reserved resource name"),
    ({"resources": {"": 1}}, "non-empty strings"),
    ({"resources": {3: 1}}, "non-empty strings"),
    ({"resources": [("accel", 1)]}, "resources must be a dict"),
])
def test_detect_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NodeResources.detect(**{"num_cpus": 1, "memory": 1, **kwargs})


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match="resource 'CPU' must be a finite number >= 0"):
        NodeResources(total={"CPU": -1})


# ---------------------------------------------------------------------------------- telemetry


def test_telemetry_sample_has_every_key():
    with NodeTelemetry() as telemetry:
        time.sleep(0.05)
        sample = telemetry.sample()
    assert set(sample) == {"time", "cpu_percent_per_core", "memory_total", "memory_used",
                           "memory_percent", "gpus", "has_gpu"}
    assert len(sample["cpu_percent_per_core"]) == os.cpu_count()
    assert all(0.0 <= p <= 100.0 for p in sample["cpu_percent_per_core"])
    assert 0 < sample["memory_used"] <= sample["memory_total"]
    assert sample["has_gpu"] == bool(sample["gpus"])
    assert abs(sample["time"] - time.time()) < 60


def test_first_sample_measures_since_init_not_since_boot():
    telemetry = NodeTelemetry()
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:  # keep a core busy so the interval is not empty
        pass
    assert sum(telemetry.sample()["cpu_percent_per_core"]) > 0


def test_telemetry_reports_fake_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpu_count=2))
    telemetry = NodeTelemetry()
    sample = telemetry.sample()
    assert sample["has_gpu"] is True
    assert sample["gpus"][1] == {"index": 1, "name": "Fake GPU", "utilization_percent": 41.0,
                                 "memory_used": 2**30, "memory_total": 16 * 2**30}
    telemetry.close()
    assert telemetry.sample()["gpus"] == []


def test_process_rss_skips_vanished_pids():
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rss = NodeTelemetry.process_rss([os.getpid(), gone.pid])
    assert list(rss) == [os.getpid()]
    assert rss[os.getpid()] > 0
