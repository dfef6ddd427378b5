"""Detects what a node offers (CPUs, GPUs, memory) and the environment that pins work to it."""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

from .thread_limits import THREAD_LIMIT_VARS, thread_limit_env  # noqa: F401 - part of this module's API

# Where cgroup file systems are mounted and where this process's cgroup membership is listed.
# Module-level so tests (and unusual hosts) can point them elsewhere.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")

# Names that NodeResources.detect() fills in itself; custom resources may not use them.
RESERVED_RESOURCE_NAMES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


# ----------------------------------------------------------------------------------------- CPU


def detect_cpu_count(cgroup_root: Path | str | None = None) -> int:
    """CPUs this process may use: its affinity mask, capped by any cgroup CPU quota (ceil, >= 1)."""
    available = _affinity_cpu_count()
    quota = _cgroup_cpu_quota(_cgroup_root(cgroup_root))
    if quota is None:
        return available
    return max(1, min(available, math.ceil(quota)))


def _affinity_cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) of cgroup v2 `cpu.max` or v1 `cfs_quota/period`, or None."""
    ratios = [_cpu_max_ratio(d) for d in _v2_dirs(root)]
    ratios += [_cfs_ratio(d) for d in _v1_dirs(root, "cpu")]
    return min((r for r in ratios if r is not None), default=None)


def _cpu_max_ratio(directory: Path) -> float | None:
    """cgroup v2 `cpu.max` holds "<quota> <period>" or "max <period>"."""
    parts = (_read_text(directory / "cpu.max") or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _quota_ratio(parts[0], parts[1])


def _cfs_ratio(directory: Path) -> float | None:
    """cgroup v1 keeps quota and period in two files; a quota of -1 means unlimited."""
    quota = _read_text(directory / "cpu.cfs_quota_us")
    period = _read_text(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _quota_ratio(quota, period)


def _quota_ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


# -------------------------------------------------------------------------------------- memory


def detect_memory_limit(cgroup_root: Path | str | None = None) -> int:
    """Bytes of memory this process may use: total RAM, capped by any cgroup memory limit."""
    return min([total_ram(), *_cgroup_memory_limits(_cgroup_root(cgroup_root))])


def total_ram() -> int:
    """psutil.virtual_memory().total (MemTotal)."""
    total = meminfo_bytes(b"MemTotal")
    if total is None:
        import psutil
        total = psutil.virtual_memory().total
    return total


def meminfo_bytes(field: bytes) -> int | None:
    """A field of /proc/meminfo (b"MemTotal", b"MemAvailable") in bytes, as psutil reads it on
    Linux, without importing psutil (a node agent sizes its memory while its first worker
    starts); None where there is no such field."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(field + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_memory_limits(root: Path) -> list[int]:
    """cgroup v2 `memory.max` ("max" = none) and v1 `memory.limit_in_bytes` (huge = none)."""
    texts = [_read_text(d / "memory.max") for d in _v2_dirs(root)]
    texts += [_read_text(d / "memory.limit_in_bytes") for d in _v1_dirs(root, "memory")]
    return [limit for limit in map(_positive_int, texts) if limit is not None]


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if value > 0 else None


# -------------------------------------------------------------------------------------- cgroups


def _cgroup_root(cgroup_root: Path | str | None) -> Path:
    return Path(cgroup_root) if cgroup_root is not None else CGROUP_ROOT


def _v2_dirs(root: Path) -> list[Path]:
    """The unified hierarchy's root and this process's own cgroup below it."""
    own = _own_cgroup_paths().get("")
    return _unique([root] + ([root / own] if own else []))


def _v1_dirs(root: Path, controller: str) -> list[Path]:
    """Every v1 mount holding `controller` (e.g. cpu, cpu,cpuacct), plus our cgroup inside it."""
    own = _own_cgroup_paths().get(controller)
    dirs = []
    for mount in _v1_mounts(root, controller):
        dirs += [mount] + ([mount / own] if own else [])
    return _unique(dirs)


def _v1_mounts(root: Path, controller: str) -> list[Path]:
    try:
        return [d for d in root.iterdir() if controller in d.name.split(",") and d.is_dir()]
    except OSError:
        return []


def _own_cgroup_paths() -> dict[str, str]:
    """Controller -> relative cgroup path from /proc/self/cgroup ("" is the v2 hierarchy)."""
    paths = {}
    for line in (_read_text(PROC_SELF_CGROUP) or "").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.strip("/")
    return paths


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------------------- GPU


# Present wherever an NVIDIA driver can answer NVML (Linux, containers given GPUs, WSL2).
NVIDIA_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")


def init_nvml() -> ModuleType | None:
    """Import and initialise NVML; None, silently, when there is no usable NVIDIA driver."""
    if "pynvml" not in sys.modules and not any(os.path.exists(p) for p in NVIDIA_DRIVER_PATHS):
        return None  # no driver to talk to: importing pynvml (~10 ms) would only find that out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the old `pynvml` wrapper warns on import
            import pynvml
        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return None
    return pynvml


def shutdown_nvml(nvml: ModuleType | None) -> None:
    """Undo one init_nvml(); NVML counts inits, so this never disturbs other users."""
    if nvml is None:
        return
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def nvml_text(value: str | bytes) -> str:
    """NVML returns bytes in older nvidia-ml-py releases and str in newer ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """NVIDIA GPUs visible to this process: [{index, name, uuid, memory_total}], [] without NVML.

    `index` is NVML's (PCI bus order) index. If CUDA_VISIBLE_DEVICES is set (in `environ`,
    default os.environ), only the GPUs it names are returned, as Ray does.
    """
    nvml = init_nvml()
    if nvml is None:
        return []
    try:
        gpus = [_gpu_info(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    except Exception:
        gpus = []
    finally:
        shutdown_nvml(nvml)
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    return [gpu for gpu in gpus if gpu is not None and _is_visible(gpu, visible)]


def _gpu_info(nvml: ModuleType, index: int) -> dict[str, Any] | None:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        return {
            "index": index,
            "name": nvml_text(nvml.nvmlDeviceGetName(handle)),
            "uuid": nvml_text(nvml.nvmlDeviceGetUUID(handle)),
            "memory_total": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        }
    except Exception:  # one broken GPU must not hide the others
        return None


def _is_visible(gpu: dict[str, Any], cuda_visible_devices: str | None) -> bool:
    if cuda_visible_devices is None:
        return True
    entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
    return any(e == str(gpu["index"]) or (e.startswith("GPU-") and gpu["uuid"].startswith(e))
               for e in entries)


def gpu_env_for(gpu_ids: Sequence[int]) -> dict[str, str]:
    """Environment that makes exactly `gpu_ids` (NVML indices) visible to CUDA in a child.

    An empty list hides every GPU. CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA number devices the
    way NVML (and so detect_gpus) does; CUDA's default order is "fastest first".
    """
    for gpu_id in gpu_ids:
        if not isinstance(gpu_id, numbers.Integral) or isinstance(gpu_id, bool) or gpu_id < 0:
            raise ValueError(f"GPU ids must be non-negative integers, got {gpu_id!r} in {gpu_ids!r}")
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(str(int(gpu_id)) for gpu_id in gpu_ids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


# ------------------------------------------------------------------------------------- threads


# thread_limit_env and THREAD_LIMIT_VARS live in thread_limits.py (imported above).


# ------------------------------------------------------------------------------ NodeResources


@dataclass(frozen=True)
class NodeResources:
    """What one node offers the scheduler: {"CPU": n, "GPU": g (only if > 0), "memory": bytes, ...}."""

    total: dict[str, float]

    def __post_init__(self) -> None:
        if not isinstance(self.total, Mapping):
            raise TypeError(f"NodeResources.total must be a dict of name -> amount, got {self.total!r}")
        checked = {_checked_name(name): _checked_amount(f"resource {name!r}", amount)
                   for name, amount in self.total.items()}
        object.__setattr__(self, "total", checked)

    @classmethod
    def detect(
        cls,
        num_cpus: float | None = None,
        num_gpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        memory: int | None = None,
    ) -> NodeResources:
        """Detected CPUs, GPUs and memory, each overridable, plus custom `resources`."""
        custom = _checked_custom_resources(resources)
        cpus = detect_cpu_count() if num_cpus is None else _checked_amount("num_cpus", num_cpus)
        gpus = len(detect_gpus()) if num_gpus is None else _checked_gpu_count(num_gpus)
        mem = detect_memory_limit() if memory is None else _checked_amount("memory", memory)
        total = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {}), "memory": mem}
        return cls(total={**total, **custom})


def _checked_custom_resources(resources: Mapping[str, float] | None) -> dict[str, float]:
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise ValueError(f"resources must be a dict like {{'accelerator': 2}}, got {resources!r}")
    for name in resources:
        if _checked_name(name) in RESERVED_RESOURCE_NAMES:
            raise ValueError(
                f"{name!r} is a reserved resource name; pass it as num_cpus=/num_gpus=/memory= "
                f"instead of inside resources= (reserved: {sorted(RESERVED_RESOURCE_NAMES)})")
    return {name: _checked_amount(f"custom resource {name!r}", amount)
            for name, amount in resources.items()}


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"resource names must be non-empty strings, got {name!r}")
    return name


def _checked_amount(what: str, amount: object) -> int | float:
    """A finite, non-negative real number, as a plain int or float (numpy scalars included)."""
    if not isinstance(amount, numbers.Real) or isinstance(amount, bool):
        raise ValueError(f"{what} must be a number, got {amount!r} ({type(amount).__name__})")
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {amount!r}")
    return int(amount) if isinstance(amount, numbers.Integral) else float(amount)


def _checked_gpu_count(num_gpus: object) -> int:
    count = _checked_amount("num_gpus", num_gpus)
    if count != int(count):
        raise ValueError(f"num_gpus must be a whole number of GPUs for a node, got {num_gpus!r}")
    return int(count)
