"""Task and actor options: one frozen dataclass each, validated once, merged by ``options()``."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

_UNSUPPORTED_TASK = {
    "placement_group": "placement groups",
    "placement_group_bundle_index": "placement groups",
    "placement_group_capture_child_tasks": "placement groups",
    "accelerator_type": "accelerator types",
    "_metadata": "task metadata",
    "enable_task_events": "per-task event switches",
    "label_selector": "label selectors",
}


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict = dataclasses.field(default_factory=dict)
    memory: float = 0
    num_returns: int = 1
    max_retries: int = 3
    retry_exceptions: Any = False
    scheduling_strategy: Any = "DEFAULT"
    name: str = ""
    runtime_env: dict | None = None
    max_calls: int = 0


@dataclasses.dataclass(frozen=True)
class ActorOptions:
    num_cpus: float | None = None
    num_gpus: float = 0
    resources: dict = dataclasses.field(default_factory=dict)
    memory: float = 0
    name: str = ""
    namespace: str | None = None
    get_if_exists: bool = False
    lifetime: str | None = None
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int | None = None
    scheduling_strategy: Any = "DEFAULT"
    runtime_env: dict | None = None
    max_pending_calls: int = -1


def make_options(cls, base=None, **kwargs):
    """``cls`` options from ``kwargs`` over ``base``; unknown or bad values raise at once."""
    for key, feature in _UNSUPPORTED_TASK.items():
        if kwargs.get(key) is not None:
            raise NotImplementedError(f"Nebula does not support {feature} (option {key}=) yet")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known - set(_UNSUPPORTED_TASK))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
    clean = {k: v for k, v in kwargs.items() if k in known}
    merged = dataclasses.replace(base, **clean) if base is not None else cls(**clean)
    _validate(merged)
    return merged


def _validate(opts) -> None:
    for field in ("num_cpus", "num_gpus", "memory"):
        value = getattr(opts, field)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"{field} must be a non-negative number, got {value!r}")
    for key, value in (opts.resources or {}).items():
        if key in ("CPU", "GPU", "memory"):
            raise ValueError(f"use num_cpus/num_gpus/memory instead of resources={{'{key}': ...}}")
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"resource {key!r} must be a non-negative number, got {value!r}")
    if isinstance(opts, TaskOptions):
        _validate_task(opts)
    else:
        _validate_actor(opts)


def _validate_task(opts: TaskOptions) -> None:
    if opts.num_returns == "dynamic" or opts.num_returns == "streaming":
        raise NotImplementedError(f'num_returns="{opts.num_returns}" (generators) is not supported by Nebula yet')
    if not isinstance(opts.num_returns, int) or opts.num_returns < 0:
        raise ValueError(f"num_returns must be a non-negative integer, got {opts.num_returns!r}")
    if not isinstance(opts.max_retries, int) or opts.max_retries < -1:
        raise ValueError(f"max_retries must be an integer >= -1, got {opts.max_retries!r}")
    _validate_runtime_env(opts.runtime_env)


def _validate_actor(opts: ActorOptions) -> None:
    if opts.lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f'lifetime must be "detached" or None, got {opts.lifetime!r}')
    if opts.max_concurrency is not None and opts.max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    if not isinstance(opts.max_restarts, int) or opts.max_restarts < -1:
        raise ValueError(f"max_restarts must be an integer >= -1, got {opts.max_restarts!r}")
    _validate_runtime_env(opts.runtime_env)


def _validate_runtime_env(env) -> None:
    if env is None:
        return
    if not isinstance(env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(env).__name__}")
    for key in ("pip", "conda", "uv", "container", "image_uri"):
        if env.get(key):
            raise NotImplementedError(
                f"runtime_env['{key}'] is not supported: Nebula clusters often run offline, so it "
                "cannot install packages per task; install them on every node beforehand")
    unknown = set(env) - {"env_vars", "working_dir", "pip", "conda", "uv", "container", "image_uri", "py_modules"}
    if unknown:
        raise ValueError(f"unsupported runtime_env keys: {', '.join(sorted(unknown))} (supported: env_vars, working_dir)")
    if env.get("py_modules"):
        raise NotImplementedError("runtime_env['py_modules'] is not supported yet; use working_dir")
    if env.get("env_vars") and not all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items()):
        raise TypeError("runtime_env['env_vars'] must map str to str")


def runtime_env_key(env: dict | None) -> str:
    """A stable key of a runtime_env: workers are pooled per key."""
    if not env:
        return ""
    return hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


def resource_shape(num_cpus, num_gpus, resources, memory=0) -> dict:
    shape = {"CPU": float(num_cpus or 0)}
    if num_gpus:
        shape["GPU"] = float(num_gpus)
    if memory:
        shape["memory"] = float(memory)
    for key, value in (resources or {}).items():
        shape[key] = float(value)
    return {k: v for k, v in shape.items() if v}


def strategy_fields(strategy) -> tuple[str, str, bool]:
    """(kind, node_id, soft) of a scheduling strategy value."""
    if strategy in (None, "DEFAULT"):
        return "DEFAULT", "", True
    if strategy == "SPREAD":
        return "SPREAD", "", True
    node_id = getattr(strategy, "node_id", None)
    if node_id is not None:
        return "NODE_AFFINITY", str(node_id), bool(getattr(strategy, "soft", False))
    if "PlacementGroup" in type(strategy).__name__:
        raise NotImplementedError("placement group scheduling strategies are not supported by Nebula yet")
    raise ValueError(f'scheduling_strategy must be "DEFAULT", "SPREAD" or NodeAffinitySchedulingStrategy, got {strategy!r}')
