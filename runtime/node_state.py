"""The node agent's part of ``nebula.state.snapshot()``: plain dicts, built on request."""
from __future__ import annotations

import time


def node_snapshot(node) -> dict:
    return {
        "time": time.time(),
        "nodes": _nodes(node),
        "workers": [_worker_record(w) for w in node.workers.values()],
        "objects": node.objects.snapshot(node.node_id),
        "actors": node.actors.snapshot(),
        "clients": [{"client_id": c.client_id, "kind": c.kind, "pid": c.pid, "job_id": c.job_id}
                    for c in node.clients.values()],
        "pending_leases": len(node.leases),
    }


def _nodes(node) -> list[dict]:
    own = _node_record(node)
    if node.cluster is None:
        return [own]
    others = [n for n in node.cluster.snapshot_nodes() if n["node_id"] != node.node_id]
    for other in others:
        other["store"] = {"capacity": 0, "objects": 0, "spilled": 0, "spilled_bytes": 0, "pinned": 0,
                          "in_memory": 0, **other["store"]}
    return [own] + others


def _node_record(node) -> dict:
    return {"node_id": node.node_id, "alive": True, "draining": node.draining, "address": node.address,
            "resources_total": dict(node.pool.total), "resources_available": dict(node.pool.available),
            "store": node.objects.stats(), "session_dir": node.session_dir}


def _worker_record(worker) -> dict:
    state = "DEAD" if worker.dead else "ACTOR" if worker.actor_id else "LEASED" if worker.lease else (
        "IDLE" if worker.client is not None else "STARTING")
    return {"worker_id": worker.worker_id, "pid": worker.popen.pid, "state": state,
            "actor_id": worker.actor_id, "blocked": worker.blocked, "env_key": worker.env_key,
            "lease_client": worker.lease["client"] if worker.lease else ""}
