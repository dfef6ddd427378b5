"""Nebula: notebook-first distributed Python with Ray's programming model.

    import nebula
    nebula.init()                      # embedded default: a local cluster, no setup

    @nebula.remote
    def add(a, b): return a + b

    nebula.get(add.remote(1, 2))       # 3

The public API is re-exported here; ``import nebula`` loads no notebook library. It is
loaded on first use (PEP 562): ``import nebula`` itself imports nothing else, so the node
agent and worker processes (``python -m nebula.node_main``) and ``init()`` start quickly.
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from . import exceptions
    from .actor import method
    from .api import cancel, get, get_actor, init, is_initialized, kill, put, remote, shutdown, wait
    from .cluster_info import available_resources, cluster_resources, get_gpu_ids, get_runtime_context, nodes
    from .object_ref import ObjectRef
    from .state import timeline
del TYPE_CHECKING

# Public name -> the module that defines it (imported on first access, then cached here).
_EXPORTS = {
    "cancel": "api", "get": "api", "get_actor": "api", "init": "api", "is_initialized": "api",
    "kill": "api", "put": "api", "remote": "api", "shutdown": "api", "wait": "api",
    "method": "actor",
    "available_resources": "cluster_info", "cluster_resources": "cluster_info", "get_gpu_ids": "cluster_info",
    "get_runtime_context": "cluster_info", "nodes": "cluster_info",
    "ObjectRef": "object_ref", "timeline": "state",
}

__version__ = "0.1.0"

__all__ = [
    "init", "is_initialized", "shutdown", "remote", "method", "get", "put", "wait", "cancel", "kill",
    "get_actor", "nodes", "cluster_resources", "available_resources", "get_gpu_ids", "get_runtime_context",
    "timeline", "ObjectRef", "exceptions", "actor", "util", "state", "__version__",
]

# Ray-core names Nebula does not offer (yet): reaching them says so instead of AttributeError.
_NOT_IMPLEMENTED = {
    "ObjectRefGenerator": "generator tasks (num_returns='dynamic'/'streaming')",
    "DynamicObjectRefGenerator": "generator tasks (num_returns='dynamic')",
    "ObjectID": "ObjectID (use ObjectRef)",
    "java_function": "cross-language (Java) calls", "java_actor_class": "cross-language (Java) calls",
    "cpp_function": "cross-language (C++) calls", "Language": "cross-language calls",
    "cross_language": "cross-language calls",
    "client": "Ray Client (use nebula.init(address=...) instead)", "ClientBuilder": "Ray Client",
    "show_in_dashboard": "show_in_dashboard (use nebula.widgets.Dashboard)",
    "autoscaler": "the autoscaler", "data": "Ray Data", "train": "Ray Train", "tune": "Ray Tune",
    "serve": "Ray Serve", "workflow": "Ray Workflows", "dag": "task DAGs (.bind())",
    "experimental": "Ray experimental APIs", "runtime_env": "the runtime_env module (pass runtime_env= dicts)",
    "LOCAL_MODE": "local mode", "SCRIPT_MODE": "worker modes", "WORKER_MODE": "worker modes",
    "placement_group": "placement groups", "get_placement_group": "placement groups",
    "cpp": "cross-language calls", "job_config": "job configs", "JobConfig": "job configs",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _NOT_IMPLEMENTED:
        raise NotImplementedError(f"Nebula does not implement {_NOT_IMPLEMENTED[name]} (nebula.{name})")
    if not name.startswith("_"):  # a submodule not imported yet (nebula.exceptions, nebula.session, ...)
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'nebula' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(__all__))


def load_ipython_extension(ipython):
    from .kernel_ext import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython):
    from .kernel_ext import unload_ipython_extension as unload
    unload(ipython)


def _jupyter_server_extension_points():
    from .kernel_ext import _jupyter_server_extension_points as points
    return points()
