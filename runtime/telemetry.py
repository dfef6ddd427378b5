"""Samples a node's CPU, memory, GPU and per-process memory usage cheaply, for dashboards."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

import psutil

from .node_resources import init_nvml, nvml_text, shutdown_nvml


class NodeTelemetry:
    """Cheap, repeatable snapshots of this node's load; keep one instance and call sample().

    CPU percentages are measured between consecutive sample() calls of this instance (the first
    one against __init__), independent of other psutil.cpu_percent() users and of the calling
    thread. Memory figures are the host's (psutil), GPUs are all the NVIDIA GPUs NVML sees.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_cpu_times = psutil.cpu_times(percpu=True)
        self._nvml = init_nvml()
        self._gpus = _gpu_handles(self._nvml)

    @property
    def has_gpu(self) -> bool:
        return bool(self._gpus)

    def sample(self) -> dict[str, Any]:
        """{time, cpu_percent_per_core, memory_total, memory_used, memory_percent, gpus, has_gpu}."""
        memory = psutil.virtual_memory()
        return {
            "time": time.time(),
            "cpu_percent_per_core": self._cpu_percent_per_core(),
            "memory_total": memory.total,
            "memory_used": memory.used,
            "memory_percent": memory.percent,
            "gpus": self._sample_gpus(),
            "has_gpu": self.has_gpu,
        }

    @staticmethod
    def process_rss(pids: Iterable[int]) -> dict[int, int]:
        """Resident memory in bytes of each pid still alive; vanished or foreign pids are skipped."""
        rss = {}
        for pid in pids:
            try:
                rss[pid] = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return rss

    def close(self) -> None:
        """Release NVML; sample() keeps working, without GPUs."""
        nvml, self._nvml, self._gpus = self._nvml, None, []
        shutdown_nvml(nvml)

    def __enter__(self) -> NodeTelemetry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cpu_percent_per_core(self) -> list[float]:
        now = psutil.cpu_times(percpu=True)
        with self._lock:
            before, self._last_cpu_times = self._last_cpu_times, now
        return [_busy_percent(b, a) for b, a in zip(before, now)]

    def _sample_gpus(self) -> list[dict[str, Any]]:
        nvml, gpus = self._nvml, self._gpus
        samples = [_gpu_sample(nvml, index, name, handle) for index, name, handle in gpus]
        return [sample for sample in samples if sample is not None]


def _busy_percent(before: Any, after: Any) -> float:
    """psutil's formula: busy share of the time between two cpu_times() of one core."""
    total = _total_time(after) - _total_time(before)
    idle = _idle_time(after) - _idle_time(before)
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * (total - idle) / total)), 1)


def _total_time(times: Any) -> float:
    # Linux counts guest time inside user time too; don't count it twice.
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _idle_time(times: Any) -> float:
    return times.idle + getattr(times, "iowait", 0.0)


def _gpu_handles(nvml: Any) -> list[tuple[int, str, Any]]:
    """(index, name, handle) per GPU, looked up once; [] without NVML."""
    try:
        count = nvml.nvmlDeviceGetCount() if nvml is not None else 0
    except Exception:
        return []
    handles = [_gpu_handle(nvml, index) for index in range(count)]
    return [handle for handle in handles if handle is not None]


def _gpu_handle(nvml: Any, index: int) -> tuple[int, str, Any] | None:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return index, nvml_text(nvml.nvmlDeviceGetName(handle)), handle
    except Exception:  # one broken GPU must not hide the others
        return None


def _gpu_sample(nvml: Any, index: int, name: str, handle: Any) -> dict[str, Any] | None:
    try:
        utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # GPU lost or NVML closed meanwhile: skip it this time
        return None
    return {
        "index": index,
        "name": name,
        "utilization_percent": float(utilization.gpu),
        "memory_used": int(memory.used),
        "memory_total": int(memory.total),
    }
