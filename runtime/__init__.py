"""Nebula: notebook-first distributed Python with Ray's programming model.

    import nebula
    nebula.init()                      # embedded default: a local cluster, no setup

    @nebula.remote
    def add(a, b): return a + b

    nebula.get(add.remote(1, 2))       # 3

The public API is re-exported here; ``import nebula`` loads no notebook library.
"""
from __future__ import annotations

from . import exceptions
from .actor import method
from .api import cancel, get, get_actor, init, is_initialized, kill, put, remote, shutdown, wait
from .cluster_info import available_resources, cluster_resources, get_gpu_ids, get_runtime_context, nodes
from .object_ref import ObjectRef
from .state import timeline

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
    if name in ("actor", "util", "state", "widgets", "kernel_ext"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name in _NOT_IMPLEMENTED:
        raise NotImplementedError(f"Nebula does not implement {_NOT_IMPLEMENTED[name]} (nebula.{name})")
    raise AttributeError(f"module 'nebula' has no attribute {name!r}")


def load_ipython_extension(ipython):
    from .kernel_ext import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython):
    from .kernel_ext import unload_ipython_extension as unload
    unload(ipython)


def _jupyter_server_extension_points():
    from .kernel_ext import _jupyter_server_extension_points as points
    return points()
