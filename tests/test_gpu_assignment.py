"""Which GPUs a task or an actor is given, on a node with logical GPUs (``init(num_gpus=2)``)."""
from __future__ import annotations

import os

import pytest

import nebula
from clusters import private_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def two_gpus():
    yield from private_cluster(num_cpus=2, num_gpus=2, object_store_memory="256MiB")


def _seen():
    return os.environ.get("CUDA_VISIBLE_DEVICES"), nebula.get_gpu_ids()


gpu_task = nebula.remote(num_gpus=1)(_seen)
cpu_task = nebula.remote(_seen)


@nebula.remote(num_gpus=1)
def device_order():
    return os.environ.get("CUDA_DEVICE_ORDER")


@nebula.remote(num_gpus=1)
class GpuHolder:
    def seen(self):
        return _seen()


def test_a_gpu_task_gets_a_gpu_of_its_own_and_cuda_visible_devices(two_gpus):
    assert nebula.cluster_resources()["GPU"] == 2
    holder = GpuHolder.remote()
    held_env, held = nebula.get(holder.seen.remote(), timeout=60)
    assert len(held) == 1 and held[0] in (0, 1) and held_env == str(held[0])
    env, ids = nebula.get(gpu_task.remote(), timeout=60)
    assert ids == [1 - held[0]] and env == str(ids[0])  # the one the actor does not hold
    assert nebula.get(device_order.remote(), timeout=60) == "PCI_BUS_ID"  # CUDA numbers GPUs as NVML does
    nebula.kill(holder)


def test_tasks_without_gpus_do_not_see_a_previous_tasks_gpu(two_gpus):
    nebula.get([gpu_task.remote() for _ in range(10)], timeout=60)
    seen = nebula.get([cpu_task.remote() for _ in range(20)], timeout=60)
    assert all(ids == [] for _, ids in seen)
    assert {env for env, _ in seen} == {os.environ.get("CUDA_VISIBLE_DEVICES")}  # what the worker started with
