"""Cluster information in Ray's shapes: nodes(), resources, GPU ids, the runtime context."""
from __future__ import annotations

import contextvars
import os
import pickle

from . import protocol as P
from .session import current_session

# The task id of the async actor call an asyncio task runs (set by the worker for each call).
ASYNC_CALL_TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("nebula_async_call", default=None)


def state_snapshot(session=None) -> dict:
    session = session or current_session()
    reply = session.request(lambda rid: P.StateQuery(rid, "snapshot")).result(30)
    return pickle.loads(reply.payload)


def nodes() -> list[dict]:
    """One dict per node: NodeID, Alive, NodeManagerAddress, Resources (Ray's keys)."""
    return [_ray_node(n) for n in state_snapshot()["nodes"]]


def _ray_node(node: dict) -> dict:
    return {"NodeID": node["node_id"], "Alive": node["alive"], "alive": node["alive"],
            "NodeManagerAddress": node["address"], "NodeManagerHostname": os.uname().nodename,
            "Resources": dict(node["resources_total"]), "ObjectStoreCapacity": node["store"]["capacity"]}


def cluster_resources() -> dict:
    return _sum_resources("resources_total")


def available_resources() -> dict:
    return _sum_resources("resources_available")


def _sum_resources(key: str) -> dict:
    total: dict = {}
    for node in state_snapshot()["nodes"]:
        if node["alive"]:
            for name, value in node[key].items():
                total[name] = total.get(name, 0.0) + value
    return {k: v for k, v in total.items() if v > 0 or key == "resources_total"}


def get_gpu_ids() -> list[int]:
    """GPU indices assigned to the current task or actor ([] in a driver or without GPUs)."""
    session = current_session()
    return list(getattr(session.current_task, "gpu_ids", []) or [])


class RuntimeContext:
    """Where the calling code runs: node, job, task and actor ids."""

    def __init__(self, session):
        self._session = session

    def get_node_id(self) -> str:
        return self._session.node_id

    def get_job_id(self) -> str:
        return getattr(self._session.current_task, "job_id", None) or self._session.job_id

    def get_task_id(self) -> str | None:
        """The running task's id; in an async actor method, that call's (calls interleave on
        one thread there, so each asyncio task carries its own)."""
        return ASYNC_CALL_TASK_ID.get() or getattr(self._session.current_task, "task_id", None)

    def get_actor_id(self) -> str | None:
        return getattr(self._session.current_task, "actor_id", None) or None

    def get_worker_id(self) -> str:
        return self._session.client_id

    def get_assigned_resources(self) -> dict:
        """What the running task (or this actor) was granted, e.g. ``{"CPU": 1.0}``; {} outside one."""
        return dict(getattr(self._session.current_task, "resources", None) or {})

    @property
    def namespace(self) -> str:
        return self._session.namespace

    node_id = property(get_node_id)
    job_id = property(get_job_id)
    task_id = property(get_task_id)
    actor_id = property(get_actor_id)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor that was restarted after its process died (incarnation > 0)."""
        return getattr(self._session, "actor_incarnation", 0) > 0

    def get(self) -> dict:
        return {"node_id": self.get_node_id(), "job_id": self.get_job_id(), "task_id": self.get_task_id(),
                "actor_id": self.get_actor_id(), "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(current_session())
