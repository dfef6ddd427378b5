"""The cluster a Jupyter server shares with its kernels: started by the server, or attached to.

    jupyter server ── ClusterKeeper ── start_local_cluster() ──► node agent (+ workers)
          │  os.environ: NEBULA_ADDRESS, NEBULA_TOKEN_FILE  (inherited by every kernel it starts)
          └── kernels: plain nebula.init() joins the cluster

The keeper's methods block (starting a node agent takes a moment, a snapshot is a request
to it), so the server extension calls them on a worker thread, one at a time. A cluster it
starts is multi-node capable (``num_nodes`` local node agents joined over 127.0.0.1), so
``scale`` can add nodes or drain added ones: idle ones first; busy ones take no new work and
get a grace period to finish theirs (``LocalCluster.remove_node``). The node agent
is spawned by the runtime's long-lived spawner thread with a parent-death signal, so even a
SIGKILL of the server leaves no agent or worker behind.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

import nebula
import nebula.state
from nebula.local_cluster import start_local_cluster
from nebula.session_files import current_cluster_file

ADDRESS_ENV, TOKEN_FILE_ENV = "NEBULA_ADDRESS", "NEBULA_TOKEN_FILE"
MAX_LOCAL_NODES = 64
DRAIN_GRACE_S = 30.0
LEAVE_WAIT_S = 3.0  # how long a scale-down answer waits for idle nodes to be gone


class ClusterConflict(RuntimeError):
    """The request cannot apply to this server's cluster (e.g. stopping one it only attached to)."""


class ClusterUnreachable(RuntimeError):
    """The cluster this server points its kernels at does not answer."""


class ClusterKeeper:
    """Starts, stops and describes the server's cluster; see the module docstring."""

    def __init__(self, *, num_cpus=None, num_nodes: int = 1, address: str = "", token_file: str = "",
                 log: logging.Logger | None = None):
        self.num_cpus, self.num_nodes = num_cpus, num_nodes
        self.address, self.token_file = address, token_file
        self.log = log or logging.getLogger("nebula.jupyter")
        self.cluster = None
        self.lock = threading.RLock()

    @property
    def attached(self) -> bool:
        return bool(self.address)

    @property
    def running(self) -> bool:
        return self.attached or (self.cluster is not None and self.cluster.popen.poll() is None)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the embedded cluster (or point kernels at the attached one); idempotent."""
        with self.lock:
            if self.attached:
                _export(*self._attached_target())
            elif not self.running:  # never started, or its node agent died
                nebula.shutdown()
                self.cluster = start_local_cluster(num_cpus=self.num_cpus, num_nodes=self.num_nodes, multi_node=True)
                _export(self.cluster.address, os.path.join(self.cluster.session_dir, "token"))
                self.log.info("Nebula: cluster started at %s for this server's kernels", self.cluster.address)

    def stop(self) -> None:
        """Stop the cluster this server started; kernels started later get a new one."""
        with self.lock:
            if self.attached:
                raise ClusterConflict(f"this server is attached to the cluster at {self.address}, which it does "
                                      "not manage; stop that cluster where it was started")
            nebula.shutdown()
            cluster, self.cluster = self.cluster, None
            if cluster is not None:
                _clear_export()
                cluster.stop()
                self.log.info("Nebula: cluster stopped")

    def scale(self, nodes: int, grace_s: float = DRAIN_GRACE_S) -> dict:
        """Add local nodes, or drain added ones, until ``nodes`` run; returns ``describe()``."""
        with self.lock:
            if self.attached:
                raise ClusterConflict(f"this server is attached to the cluster at {self.address}, which it does "
                                      "not manage; scale that cluster where it was started")
            self.num_nodes = nodes
            if not self.running:
                self.start()  # starts with the requested number of nodes
                return self.describe()
            running = 1 + sum(1 for p in self.cluster.extra_nodes if p.poll() is None)
            for _ in range(nodes - running):
                self.cluster.add_node(num_cpus=self.num_cpus)
            leaving = [self.cluster.remove_node(grace_s=grace_s) for _ in range(running - nodes)]
            self.log.info("Nebula: scaled from %d to %d local nodes", running, nodes)
            self._wait_until_gone(leaving)
            return self.describe()

    def _wait_until_gone(self, node_ids: list) -> None:
        """Give drained idle nodes a moment to exit, so the answer lists them as gone."""
        deadline = time.monotonic() + LEAVE_WAIT_S
        while node_ids and time.monotonic() < deadline:
            alive = {n["node_id"] for n in self._snapshot().nodes if n.get("alive")}
            if not alive & set(node_ids):
                return
            time.sleep(0.1)

    def close(self) -> None:
        """The server is stopping: disconnect, and stop the cluster if this server started it."""
        with self.lock:
            if self.attached:
                nebula.shutdown()
            else:
                self.stop()

    def _attached_target(self) -> tuple:
        if self.address != "auto":
            return self.address, self.token_file or os.environ.get(TOKEN_FILE_ENV, "")
        try:
            with open(current_cluster_file()) as f:
                info = json.load(f)
        except (OSError, ValueError):
            raise ClusterConflict("address='auto' found no running cluster of this user on this machine: start "
                                  "one with `nebula start --head`") from None
        return info["address"], info["token_file"]

    # ---- what GET cluster answers -----------------------------------------------------------------

    def describe(self) -> dict:
        """The cluster as JSON-ready data; connects this process as a client on first use."""
        with self.lock:
            base = {"running": self.running, "managed": not self.attached, "address": self._address(),
                    "num_nodes_requested": self.num_nodes}
            if not self.running:
                return base
            return {**base, **snapshot_summary(self._snapshot())}

    def _address(self) -> str:
        if self.cluster is not None:
            return self.cluster.address
        return self.address if self.attached else ""

    def _snapshot(self):
        try:
            if not nebula.is_initialized():
                nebula.init()
            return nebula.state.snapshot()
        except Exception as exc:  # noqa: BLE001 - any failure to connect or ask means the same
            nebula.shutdown()  # reconnect next time
            raise ClusterUnreachable(f"the cluster at {self._address()} does not answer ({exc}); if it was "
                                     "stopped outside this server, POST nebula/api/cluster/start") from exc


def snapshot_summary(snapshot) -> dict:
    """Nodes, summed resources, worker/task counts, actors and objects of a state snapshot."""
    nodes = [dict(n) for n in snapshot.nodes]
    workers = collections.Counter(w["state"] for w in snapshot.workers)
    return {
        "nodes": nodes,
        "resources": {"total": _summed(nodes, "resources_total"), "available": _summed(nodes, "resources_available")},
        "tasks": {"running": sum(1 for w in snapshot.workers if w["state"] == "LEASED" and not w.get("blocked"))},
        "workers": dict(workers),
        "actors": dict(collections.Counter(a["state"] for a in snapshot.actors)),
        "objects": {"count": len(snapshot.objects), "bytes": sum(o.get("size", 0) for o in snapshot.objects)},
        "clients": len(snapshot.clients),
    }


def _summed(nodes: list, key: str) -> dict:
    total: dict = {}
    for node in nodes:
        if node.get("alive"):
            for name, amount in node.get(key, {}).items():
                total[name] = total.get(name, 0) + amount
    return total


def _export(address: str, token_file: str) -> None:
    os.environ[ADDRESS_ENV], os.environ[TOKEN_FILE_ENV] = address, token_file


def exported_env() -> dict:
    """The cluster variables this server exports to its kernels (none while it has no cluster)."""
    return {k: os.environ[k] for k in (ADDRESS_ENV, TOKEN_FILE_ENV) if k in os.environ}


def _clear_export() -> None:
    os.environ.pop(ADDRESS_ENV, None)
    os.environ.pop(TOKEN_FILE_ENV, None)
