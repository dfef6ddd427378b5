"""Ray-style utilities: ActorPool, a multiprocessing.Pool drop-in, a Queue, scheduling strategies."""
from __future__ import annotations

from .scheduling_strategies import NodeAffinitySchedulingStrategy

_LAZY = {"ActorPool": ".actor_pool", "Queue": ".queue"}
_NOT_IMPLEMENTED = {
    "placement_group": "placement groups", "remove_placement_group": "placement groups",
    "get_placement_group": "placement groups", "placement_group_table": "placement groups",
    "PlacementGroup": "placement groups", "get_current_placement_group": "placement groups",
    "inspect_serializability": "inspect_serializability", "list_named_actors": "list_named_actors",
    "collective": "collective communication", "dask": "Dask-on-Ray", "spark": "Spark-on-Ray",
    "joblib": "the joblib backend", "metrics": "custom metrics", "tracing": "tracing",
    "state": "ray.util.state (use nebula.state)", "accelerators": "accelerator types",
}


def __getattr__(name: str):
    import importlib
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in ("multiprocessing", "queue", "actor_pool", "scheduling_strategies"):
        return importlib.import_module(f".{name}", __name__)
    if name in _NOT_IMPLEMENTED:
        raise NotImplementedError(f"Nebula does not implement {_NOT_IMPLEMENTED[name]} (nebula.util.{name})")
    raise AttributeError(f"module 'nebula.util' has no attribute {name!r}")


def get_node_ip_address() -> str:
    """The address this process's node advertises to the cluster (127.0.0.1 when single-node)."""
    from ..session import current_session
    tcp = current_session().config.get("tcp_address", "")
    return tcp.rpartition(":")[0] if tcp else "127.0.0.1"
