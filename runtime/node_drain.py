"""Draining a node: it takes no new work, lets running tasks finish for a grace period, then exits.

    LocalCluster.remove_node ──DrainNode(grace_s) (one-shot authenticated link)──► node D
    D: draining=True in its heartbeat ──► head ──ClusterView──► every node: spill, SPREAD and
       actor placement skip D; affinity to D is refused (hard) or placed elsewhere (soft)
    D: forwarded requests queued or arriving ──LeaseDeclined──► their sender places them elsewhere
       D's own clients' requests ──forwarded──► a node that is not draining
       holders of D's leases ◄──LeaseRevoked── D: they finish what runs there, send no more, return it
    D: no leased worker left (or the grace period over) ──► stops its workers and exits (status 0)
    head: the link of a draining node closes ──► it is marked dead at once (no heartbeat timeout)

The caller reaches the node over its Unix socket with the cluster token, as any local client
does: no signal conventions or side files, and the node learns the grace period in the same
message. Actors on the node end with it (and restart elsewhere if their max_restarts allows,
as when a node dies); objects whose only copy was there are rebuilt from lineage on access.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time

from . import background
from . import protocol as P
from . import wire

log = logging.getLogger("nebula.node.drain")
IDLE_POLL = 0.1

# ---- the caller's side: one-shot requests to a node agent ------------------------------------------


def node_load(address: str, token: bytes) -> int:
    """How much work a node runs: leased and actor workers plus queued lease requests."""
    snapshot = pickle.loads(_ask(address, token, P.StateQuery(1, "snapshot"), P.StateReply).payload)
    busy = sum(1 for w in snapshot["workers"] if w["state"] in ("LEASED", "ACTOR"))
    return busy + int(snapshot.get("pending_leases", 0))


def send_drain(address: str, token: bytes, grace_s: float) -> str:
    """Tell the node at ``address`` to drain; returns its node id."""
    return _ask(address, token, P.DrainNode(float(grace_s)), None)


def _ask(address: str, token: bytes, msg: P.Msg, reply_type):
    sock, welcome, fds = wire.connect(address, token, "driver")
    for fd in fds:
        os.close(fd)
    try:
        sock.settimeout(10.0)
        sock.sendall(wire.encode_frame(msg))
        if reply_type is None:
            return welcome.node_id
        while True:
            (length,) = wire._LEN.unpack(wire._recv_exact(sock, 4))
            reply = wire.decode_message(wire._recv_exact(sock, length))
            if isinstance(reply, reply_type):
                return reply
    finally:
        sock.close()


# ---- the node's side -----------------------------------------------------------------------------------


def start(node, grace_s: float) -> None:
    """Begin draining ``node`` (a NodeAgent); it exits once idle or after ``grace_s`` seconds."""
    cluster = node.cluster
    if node.draining:
        return
    if cluster is None or cluster.is_head:
        log.warning("ignoring a drain request: %s", "the head node cannot be drained (stop the cluster instead)"
                    if cluster is not None else "a single-node cluster cannot be drained (stop it instead)")
        return
    node.draining = True
    log.warning("draining: no new work; exiting when running tasks end (at most %.0f s)", grace_s)
    head = getattr(cluster, "head_link", None)
    if head is not None:
        objects = node.objects
        head.conn.send(P.NodeHeartbeat(dict(node.pool.available), objects.allocator.used, draining=True,
                                       store_capacity=objects.allocator.capacity, store_objects=len(objects.records)))
    _requeue_pending(node)
    _revoke_leases(node)
    background.start(node.loop, _exit_when_idle(node, time.monotonic() + max(0.0, grace_s)))


def redirect(node, client, request, msg: P.RequestLease) -> bool:
    """A request reaching a draining node: decline forwarded ones, send local ones elsewhere."""
    if request.forwarded:
        client.conn.send(P.LeaseDeclined(request.request_id))
        return True
    if msg.strategy == "NODE_AFFINITY" and (msg.node_affinity != node.node_id or not msg.soft):
        return False  # pinned to another node (routed as usual), or here: it runs here while the node is up
    target = _target(node, request)
    if target:
        node.cluster.forward(request, target)
    return bool(target)


def _target(node, request) -> str:
    """A node that is not draining and fits ``request`` now, else one that could run it at all."""
    target = node.cluster.spill_target(request)
    if target:
        return target
    able = [n for n in node.cluster.alive_nodes() if n.node_id != node.node_id and not n.draining
            and all(n.resources_total.get(k, 0.0) + 1e-9 >= v for k, v in request.shape.items())]
    return able[0].node_id if able else ""


def _requeue_pending(node) -> None:
    for request in list(node.leases.pending()):
        peer = node.clients.get(request.client)
        if request.forwarded:
            node.leases.cancel(request.client, request.request_id)
            if peer is not None:
                peer.conn.send(P.LeaseDeclined(request.request_id))
            continue
        target = _target(node, request)
        if target and node.leases.cancel(request.client, request.request_id):
            node.cluster.forward(request, target)


def _revoke_leases(node) -> None:
    for worker in list(node.workers.values()):
        if worker.lease is not None and not worker.dead:
            holder = node.clients.get(worker.lease["client"])
            if holder is not None:
                holder.conn.send(P.LeaseRevoked(worker.lease["lease_id"]))


def busy(node) -> bool:
    return len(node.leases) > 0 or any(w.lease is not None and not w.dead for w in node.workers.values())


async def _exit_when_idle(node, deadline: float) -> None:
    await asyncio.sleep(IDLE_POLL)  # lets the draining heartbeat reach the head first
    while busy(node) and time.monotonic() < deadline:
        await asyncio.sleep(IDLE_POLL)
    if busy(node):
        log.warning("drain grace period over with work still running: stopping it (owners retry their tasks)")
    else:
        log.warning("drained: no work left; this node exits")
    await _kill_workers(node)
    node.stop_workers()
    for client in list(node.clients.values()):
        client.conn._flush()
    logging.shutdown()
    os._exit(0)


async def _kill_workers(node, patience: float = 2.0) -> None:
    """Kill the workers and wait (without blocking the loop) until they are seen gone."""
    for worker in list(node.workers.values()):
        worker.popen.kill()
    deadline = time.monotonic() + patience
    while any(w.popen.poll() is None for w in list(node.workers.values())) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


# ---- other nodes' side -------------------------------------------------------------------------------


def on_declined(node, peer, msg: P.LeaseDeclined) -> None:
    """A node we forwarded a request to is draining: note that, and place the request again."""
    cluster = node.cluster
    entry = cluster.forwarded.pop(msg.request_id, None)
    info = cluster.view.get(getattr(peer, "peer_node", ""))
    if info is not None:
        info.draining = True
    if entry is None:
        return
    request, node_id = entry
    info = cluster.view.get(node_id)
    if info is not None:  # undo the optimistic reservation made when forwarding
        for key, value in request.shape.items():
            info.resources_available[key] = info.resources_available.get(key, 0.0) + value
    if request.strategy == "NODE_AFFINITY":
        request.strategy = "DEFAULT"  # its node is leaving: placed like any other request
    node.leases.add(request)
    node._schedule()


def relay_revoked(node, peer, msg: P.LeaseRevoked) -> None:
    """A revoked lease this node relayed (a forwarded grant): tell the client that holds it."""
    entry = node.cluster.remote_leases.get(msg.lease_id)
    client = node.clients.get(entry[1]) if entry is not None else None
    if client is not None:
        client.conn.send(msg)
