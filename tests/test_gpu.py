"""GPUs on a machine that has them: detection through NVML, num_gpus, CUDA_VISIBLE_DEVICES, telemetry.

Every test here needs an NVIDIA GPU and its driver; elsewhere the module is skipped (the same
code paths run against a fake NVML in test_node_resources.py and test_widgets_models.py).
"""
from __future__ import annotations

import os
import threading
import time

import pytest

import nebula
from nebula.node_resources import detect_gpus
from clusters import private_cluster

GPUS = detect_gpus(environ={})
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not GPUS, reason="no NVIDIA GPU with a driver on this machine")]


@pytest.fixture(scope="module")
def gpu_cluster():
    yield from private_cluster(num_cpus=2, object_store_memory="256MiB")


@nebula.remote(num_gpus=1)
def what_the_task_sees():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), nebula.get_gpu_ids(), \
        nebula.get_runtime_context().get_assigned_resources()


@nebula.remote(num_gpus=1)
class GpuHolder:
    def devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES"), nebula.get_gpu_ids()


def test_the_cluster_counts_the_machines_gpus(gpu_cluster):
    assert nebula.cluster_resources().get("GPU") == len(GPUS)
    assert all(gpu["memory_total"] > 0 and gpu["name"] for gpu in GPUS)


def test_a_gpu_task_gets_one_gpu_and_cuda_visible_devices(gpu_cluster):
    visible, ids, assigned = nebula.get(what_the_task_sees.remote(), timeout=60)
    assert len(ids) == 1 and ids[0] in {gpu["index"] for gpu in GPUS}
    assert visible == str(ids[0]) and assigned.get("GPU") == 1.0
    torch = pytest.importorskip("torch")  # where a framework is there, it sees exactly that GPU

    @nebula.remote(num_gpus=1)
    def torch_devices():
        import torch as remote_torch
        return remote_torch.cuda.device_count(), float(remote_torch.ones(4, device="cuda").sum())
    assert nebula.get(torch_devices.remote(), timeout=120) == (1, 4.0)
    assert torch is not None


def test_an_actor_holding_every_gpu_makes_the_next_gpu_task_wait(gpu_cluster):
    holders = [GpuHolder.remote() for _ in GPUS]
    seen = nebula.get([h.devices.remote() for h in holders], timeout=60)
    assert sorted(ids[0] for _, ids in seen) == sorted(gpu["index"] for gpu in GPUS)
    waiting = what_the_task_sees.remote()
    ready, _ = nebula.wait([waiting], timeout=2.0)
    assert ready == []  # no GPU is free while the actors live
    nebula.kill(holders[0])
    visible, ids, _ = nebula.get(waiting, timeout=60)
    assert ids == seen[0][1] and visible == str(ids[0])
    for holder in holders[1:]:
        nebula.kill(holder)


def test_node_telemetry_reports_each_gpu(gpu_cluster):
    samples, got = [], threading.Event()

    def keep(batch):
        samples.extend(e for e in batch if e.state == "TELEMETRY")
        if samples:
            got.set()
    with nebula.state.subscribe(keep, kinds=["node"]):
        assert got.wait(30), "no telemetry within 30 s"
    sample = samples[-1]
    assert sample.get("has_gpu") is True and len(sample.get("gpus")) == len(GPUS)
    for gpu in sample.get("gpus"):
        assert gpu["memory_total"] > 0 and 0 <= gpu["utilization_percent"] <= 100
    assert time.time() - sample.time < 60


@nebula.remote(num_gpus=1)
def keep_the_gpu_busy(seconds: float) -> int:
    import torch as remote_torch
    a = remote_torch.randn(4096, 4096, device="cuda")
    until = time.time() + seconds
    while time.time() < until:
        a = remote_torch.tanh(a @ a)
        remote_torch.cuda.synchronize()
    return remote_torch.cuda.memory_allocated()


def test_the_resources_view_shows_a_busy_gpu_and_its_memory(gpu_cluster):
    pytest.importorskip("torch")
    from nebula.widgets.models import NodeResourcesModel
    model, busy, lock = NodeResourcesModel(), threading.Event(), threading.Lock()

    def gauges() -> dict:
        table = model.gauges.columns()
        return {factor[1]: value for factor, value in zip(table["factor"], table["value"])}

    def keep(batch):
        with lock:
            model.apply(batch)
            seen = gauges()
        if any(v > 0 for k, v in seen.items() if k.endswith(" util")) and \
                any(v > 0 for k, v in seen.items() if k.endswith(" memory") and k.startswith("GPU")):
            busy.set()
    with nebula.state.subscribe(keep, kinds=["node"]):
        running = keep_the_gpu_busy.remote(30)
        shown = busy.wait(40)
        with lock:
            last = gauges()
        nebula.cancel(running, force=True)
    assert shown, f"the resources view never showed a busy GPU holding memory: {last}"
    assert "GPU" not in last  # the 'no GPU on this node' row is absent where there is one
