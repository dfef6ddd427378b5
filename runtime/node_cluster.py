"""A node agent's part in a multi-node cluster: membership, forwarded leases, object transfer.

    member ──NodeHello/NodeHeartbeat──► head ──ClusterView (every beat)──► every member
    node A ──RequestLease(forwarded)──► node B ──LeaseGranted (B's worker, TCP)──► A ──► client
    node A ──WhereIs──► head (object directory) ──ObjectAt(B)──► A pulls from B over a data
    socket (node_transfer.py): B's shared memory to A's, the copy sealed in A's own store

Data moves node to node, never through the head; the head is only asked *where*. A node
that misses heartbeats for ``heartbeat_timeout`` seconds is marked dead and everyone stops
sending it work; its running tasks fail over when their links break (owners retry them).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time

from . import background
from . import protocol as P
from . import wire

log = logging.getLogger("nebula.node.cluster")
HEARTBEAT_INTERVAL = 0.5


class ClusterLinks:
    """See the module docstring. ``node`` is the NodeAgent this belongs to."""

    def __init__(self, node, tcp_host: str, tcp_port: int, head_address: str, heartbeat_timeout: float):
        self.node = node
        self.tcp_host, self.tcp_port = tcp_host, tcp_port
        self.head_address = head_address  # "" on the head itself
        self.is_head = not head_address
        self.heartbeat_timeout = heartbeat_timeout
        self.tcp_address = ""
        self.view: dict[str, P.NodeInfo] = {}
        self.last_beat: dict[str, float] = {}
        self.peers: dict[str, object] = {}
        self.head_id = node.node_id if self.is_head else ""
        self.forwarded: dict[int, object] = {}
        self.remote_leases: dict[str, tuple[str, str, str]] = {}
        self.locations: dict[str, set[str]] = {}
        self.where_waiters: dict[str, list] = {}
        self.pulls: dict[int, dict] = {}
        self.wanted: set[str] = set()  # objects local readers wait for that live elsewhere
        self.lost: dict[str, str] = {}  # object id -> the dead node that held its only copy
        self.unheard: dict[str, str] = {}  # object id -> the node said to hold it, not yet reported
        self.ids = itertools.count(1)
        self.incarnation = os.urandom(4).hex()
        self.actor_homes: dict[str, str] = {}
        self.actor_waiters: dict[str, set[str]] = {}
        self.actor_infos: dict[str, P.ActorInfo] = {}
        self.pending_waits: dict[str, list] = {}
        self.named: dict[tuple[str, str], tuple[str, bytes, bool]] = {}
        self.placed_actors: dict[str, tuple] = {}  # actors this node placed elsewhere: (msg, creator, restarts left)

    # ---- start-up ---------------------------------------------------------------------------

    def listen(self) -> None:
        check_plaintext_allowed(self.tcp_host, self.node.config.get("allow_plaintext", False))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.tcp_host, self.tcp_port))
        sock.listen(512)
        self.tcp_address = f"{self.tcp_host}:{sock.getsockname()[1]}"
        self.view[self.node.node_id] = self._own_info()
        threading.Thread(target=self.node._accept_loop, args=(sock,), name="nebula-accept-tcp", daemon=True).start()

    async def start(self) -> None:
        if not self.is_head:
            await self._join_head()
        background.start(self.node.loop, self._beat_loop())

    async def _join_head(self, patience: float = 60.0) -> None:
        """Connect to the head, retrying while it is still starting (or briefly unreachable)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                peer = await self._open_peer(self.head_address, "head")
                break
            except ConnectionError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"cannot join the head at {self.head_address}: {exc}") from None
                await asyncio.sleep(0.5)
        peer.conn.send(P.NodeHello(self.node.node_id, self.tcp_address, self.node.pool.total, self.incarnation))
        self.head_link = peer

    async def _open_peer(self, address: str, node_id: str):
        loop = self.node.loop
        sock, welcome, _fds = await loop.run_in_executor(None, wire.connect, address, self.node.token, "node")
        conn = await wire.Connection.adopt(sock, f"node {address}")
        from .node import Client
        peer = Client(f"node:{welcome.node_id}", conn)
        peer.kind, peer.peer_node = "node", welcome.node_id
        self.peers[welcome.node_id] = peer
        self.node.clients[peer.client_id] = peer
        background.start(loop, self._run_peer(peer))
        return peer

    async def _run_peer(self, peer) -> None:
        await peer.conn.run(lambda msg: self.node._dispatch(peer, msg))
        self.node.clients.pop(peer.client_id, None)
        self.peer_lost(peer)

    def _own_info(self) -> P.NodeInfo:
        objects = self.node.objects
        return P.NodeInfo(self.node.node_id, self.tcp_address, dict(self.node.pool.total),
                          dict(self.node.pool.available), True, self.incarnation, objects.allocator.used,
                          draining=self.node.draining, store_capacity=objects.allocator.capacity,
                          store_objects=len(objects.records))

    # ---- membership -------------------------------------------------------------------------

    def on_node_hello(self, peer, msg: P.NodeHello) -> None:
        peer.kind, peer.peer_node = "node", msg.node_id
        self.peers[msg.node_id] = peer
        self.view[msg.node_id] = P.NodeInfo(msg.node_id, msg.address, dict(msg.resources), dict(msg.resources),
                                            True, msg.incarnation)
        self.last_beat[msg.node_id] = time.monotonic()
        self.node.emit("node", msg.node_id, "ALIVE", address=msg.address, resources=msg.resources)
        log.info("node %s joined from %s", msg.node_id[:8], msg.address)
        self._broadcast_view()

    def on_heartbeat(self, peer, msg: P.NodeHeartbeat) -> None:
        info = self.view.get(peer.peer_node)
        if info is None:
            return
        if not info.alive:  # back after being declared dead: it must rejoin as a new incarnation
            peer.conn.send(P.ClusterView(self.node.node_id, list(self.view.values())))
            return
        info.resources_available, info.store_used = dict(msg.available), msg.store_used
        info.store_capacity, info.store_objects = msg.store_capacity, msg.store_objects
        info.draining = info.draining or msg.draining
        self.last_beat[peer.peer_node] = time.monotonic()

    def on_view(self, peer, msg: P.ClusterView) -> None:
        self.head_id = msg.head_id
        me = next((n for n in msg.nodes if n.node_id == self.node.node_id), None)
        if me is not None and not me.alive and not getattr(self, "rejoining", False):
            self._rejoin()
            return
        dead = [n.node_id for n in msg.nodes if not n.alive and self.view.get(n.node_id, n).alive]
        self.view = {n.node_id: n for n in msg.nodes}
        self.view[self.node.node_id] = self._own_info()
        for node_id in dead:
            self._node_dead(node_id)
        self.node._schedule()

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self.view[self.node.node_id] = self._own_info()
            if self.is_head:
                self._expire_members()
                self._broadcast_view()
            elif getattr(self, "head_link", None) is not None and not self.head_link.conn.closed:
                objects = self.node.objects
                self.head_link.conn.send(P.NodeHeartbeat(
                    dict(self.node.pool.available), objects.allocator.used, draining=self.node.draining,
                    store_capacity=objects.allocator.capacity, store_objects=len(objects.records)))

    def _rejoin(self) -> None:
        """The head declared us dead (we were cut off): whatever we ran or held may already
        have been redone elsewhere, so drop every worker and object, then join afresh."""
        log.warning("the head declared this node dead (cut off?); dropping its workers and objects and rejoining")
        self.rejoining = True
        self.node.reset_for_rejoin()
        self.incarnation = os.urandom(4).hex()
        self.head_link.conn.send(P.NodeHello(self.node.node_id, self.tcp_address, self.node.pool.total,
                                             self.incarnation))
        self.rejoining = False

    def _expire_members(self) -> None:
        now = time.monotonic()
        for node_id, info in self.view.items():
            if node_id != self.node.node_id and info.alive and now - self.last_beat.get(node_id, now) > self.heartbeat_timeout:
                info.alive = False
                log.warning("node %s missed heartbeats for %.1f s: marked dead", node_id[:8], self.heartbeat_timeout)
                self._node_dead(node_id)

    def _broadcast_view(self) -> None:
        view = P.ClusterView(self.node.node_id, list(self.view.values()))
        for node_id, peer in list(self.peers.items()):
            if self.view.get(node_id) is not None and self.view[node_id].alive:
                peer.conn.send(view)

    def _node_dead(self, node_id: str) -> None:
        self.node.emit("node", node_id, "DEAD")
        self._tell_lease_holders(node_id)
        self._actors_lost_with(node_id)
        peer = self.peers.pop(node_id, None)
        if peer is not None:
            peer.conn.close()
        self._requeue_forwarded(node_id)
        for object_id, locs in list(self.locations.items()):
            if node_id in locs:
                locs.discard(node_id)
                if not locs:
                    del self.locations[object_id]
                    self.lost[object_id] = node_id
        for object_id in [o for o, hint in self.unheard.items() if hint == node_id]:
            del self.unheard[object_id]  # its sealing node died before the head heard of it
            self.lost[object_id] = node_id
        self._fail_lost_where_waiters()
        self._fail_lost_local_reads()

    def _fail_lost_where_waiters(self) -> None:
        for object_id in [o for o in self.where_waiters if o in self.lost]:
            for peer, request_id in self.where_waiters.pop(object_id):
                peer.conn.send(P.ObjectAt(request_id, object_id, error=self._lost_text(object_id)))

    def _fail_lost_local_reads(self) -> None:
        for object_id in [o for o in self.wanted if o in self.lost]:
            self._pull_failed(object_id, self._lost_text(object_id))

    def _lost_text(self, object_id: str) -> str:
        return f"its only copy was on node {self.lost[object_id][:8]}, which died"

    def _tell_lease_holders(self, node_id: str) -> None:
        for lease_id, (home, client_id, worker_id, _shape) in list(self.remote_leases.items()):
            if home == node_id:
                client = self.node.clients.get(client_id)
                if client is not None:
                    client.conn.send(P.WorkerDied(worker_id, f"its node ({node_id[:8]}) died or was cut off", -1))

    def peer_lost(self, peer) -> None:
        node_id = getattr(peer, "peer_node", "")
        if self.peers.get(node_id) is peer:
            del self.peers[node_id]
        self._requeue_forwarded(node_id)
        if not self.is_head and peer is getattr(self, "head_link", None):
            background.start(self.node.loop, self._reach_head_again())
        info = self.view.get(node_id)
        if self.is_head and info is not None and info.alive and info.draining:  # drained and gone: no timeout
            info.alive = False
            log.info("node %s drained and left", node_id[:8])
            self._node_dead(node_id)
            self._broadcast_view()

    async def _reach_head_again(self) -> None:
        """Lost the head: try to rejoin (as a new incarnation) for a while, else stop."""
        try:
            await self._join_head(patience=self.heartbeat_timeout + self.node.config.get("head_grace", 5.0))
        except ConnectionError:
            log.error("the head is gone; this node stops (its workers end with it)")
            self.node.exit_now()
            return
        log.warning("reconnected to the head; rejoining as a new incarnation")
        self.node.reset_for_rejoin()
        self.incarnation = os.urandom(4).hex()
        self.head_link.conn.send(P.NodeHello(self.node.node_id, self.tcp_address, self.node.pool.total,
                                             self.incarnation))

    def alive_nodes(self) -> list[P.NodeInfo]:
        return [n for n in self.view.values() if n.alive]

    # ---- forwarded leases -------------------------------------------------------------------

    def spill_target(self, request, exclude_self: bool = True) -> str:
        """A live node whose free resources fit ``request`` (its preferred node first), or ''."""
        fits = lambda n: all(n.resources_available.get(k, 0.0) + 1e-9 >= v for k, v in request.shape.items())  # noqa: E731
        candidates = [n for n in self.alive_nodes() if n.node_id != self.node.node_id and not n.draining and fits(n)]
        preferred = [n for n in candidates if n.node_id == getattr(request, "preferred_node", "")]
        chosen = (preferred or sorted(candidates, key=lambda n: -n.resources_available.get("CPU", 0.0)))
        return chosen[0].node_id if chosen else ""

    def feasible_somewhere(self, shape: dict) -> bool:
        return any(all(n.resources_total.get(k, 0.0) + 1e-9 >= v for k, v in shape.items())
                   for n in self.alive_nodes())

    def _reserve_in_view(self, node_id: str, shape: dict) -> None:
        """Optimistic: count what we just sent there until its next heartbeat says otherwise."""
        info = self.view[node_id]
        for key, value in shape.items():
            info.resources_available[key] = info.resources_available.get(key, 0.0) - value

    def forward(self, request, node_id: str) -> None:
        self._reserve_in_view(node_id, request.shape)
        background.start(self.node.loop, self._forward(request, node_id))

    async def _forward(self, request, node_id: str) -> None:
        peer = await self.peer(node_id)
        if peer is None:
            request.strategy = "DEFAULT" if request.strategy != "NODE_AFFINITY" else request.strategy
            self.node.leases.add(request)
            self.node._schedule()
            return
        fid = next(self.ids)
        log.debug("forward %s/%d to node %s as %d", request.client, request.request_id, node_id[:8], fid)
        self.forwarded[fid] = (request, node_id)
        peer.conn.send(P.RequestLease(fid, request.shape, request.env_key, request.runtime_env, "DEFAULT",
                                      forwarded=True))

    async def peer(self, node_id: str):
        peer = self.peers.get(node_id)
        if peer is not None and not peer.conn.closed:
            return peer
        info = self.view.get(node_id)
        if info is None or not info.alive:
            return None
        try:
            return await self._open_peer(info.address, node_id)
        except Exception as exc:  # noqa: BLE001 - unreachable node: treated as unavailable
            log.warning("cannot reach node %s at %s: %s", node_id[:8], info.address, exc)
            return None

    def on_forwarded_grant(self, peer, msg: P.LeaseGranted) -> bool:
        entry = self.forwarded.pop(msg.request_id, None)
        if entry is None:
            peer.conn.send(P.ReturnLease(msg.lease_id))
            return True
        request, node_id = entry
        client = self.node.clients.get(request.client)
        if client is None:
            peer.conn.send(P.ReturnLease(msg.lease_id))
            return True
        log.debug("relay grant %d -> %s/%d", msg.request_id, request.client, request.request_id)
        self.remote_leases[msg.lease_id] = (node_id, request.client, msg.worker_id, request.shape)
        client.conn.send(P.LeaseGranted(request.request_id, msg.lease_id, msg.worker_id, msg.address, msg.pid,
                                        msg.node_id, msg.gpu_ids))
        return True

    def return_remote_lease(self, lease_id: str) -> bool:
        entry = self.remote_leases.pop(lease_id, None)
        if entry is None:
            return False
        info = self.view.get(entry[0])
        if info is not None:  # optimistic, until its next heartbeat says otherwise
            for key, value in entry[3].items():
                info.resources_available[key] = info.resources_available.get(key, 0.0) + value
        peer = self.peers.get(entry[0])
        if peer is not None:
            peer.conn.send(P.ReturnLease(lease_id))
        return True

    def relay_worker_died(self, msg: P.WorkerDied) -> None:
        for lease_id, (node_id, client_id, worker_id, _shape) in list(self.remote_leases.items()):
            if worker_id == msg.worker_id:
                del self.remote_leases[lease_id]
                client = self.node.clients.get(client_id)
                if client is not None:
                    client.conn.send(msg)

    def cancel_forwarded(self, client_id: str, request_id: int) -> None:
        for fid, (request, node_id) in list(self.forwarded.items()):
            if request.client == client_id and request.request_id == request_id:
                del self.forwarded[fid]
                peer = self.peers.get(node_id)
                if peer is not None:
                    peer.conn.send(P.CancelLeaseRequest(fid))

    def _requeue_forwarded(self, node_id: str) -> None:
        requeued = False
        for fid, (request, target) in list(self.forwarded.items()):
            if target == node_id:
                del self.forwarded[fid]
                self.node.leases.add(request)
                requeued = True
        if requeued:
            self.node.loop.call_soon(self.node._schedule)
        for lease_id, entry in list(self.remote_leases.items()):
            if entry[0] == node_id:
                del self.remote_leases[lease_id]

    # ---- object directory (head) and transfers ----------------------------------------------

    def object_sealed(self, object_id: str) -> None:
        if self.is_head:
            self._located(object_id, self.node.node_id)
        elif getattr(self, "head_link", None) is not None:
            self.head_link.conn.send(P.ObjectsSealed([object_id]))

    def object_freed(self, object_id: str) -> None:
        if self.is_head:
            self.locations.get(object_id, set()).discard(self.node.node_id)
        elif getattr(self, "head_link", None) is not None:
            self.head_link.conn.send(P.ObjectsFreed([object_id]))

    def on_objects_sealed(self, peer, msg: P.ObjectsSealed) -> None:
        for object_id in msg.object_ids:
            self._located(object_id, peer.peer_node)

    def on_objects_freed(self, peer, msg: P.ObjectsFreed) -> None:
        for object_id in msg.object_ids:
            locs = self.locations.get(object_id)
            if locs is not None:
                locs.discard(peer.peer_node)
                if not locs:
                    del self.locations[object_id]

    def _located(self, object_id: str, node_id: str) -> None:
        self.lost.pop(object_id, None)
        self.unheard.pop(object_id, None)
        self.locations.setdefault(object_id, set()).add(node_id)
        for peer, request_id in self.where_waiters.pop(object_id, []):
            peer.conn.send(P.ObjectAt(request_id, object_id, node_id))
        if node_id != self.node.node_id and object_id in self.wanted:
            self.start_pull(object_id, node_id)


    def on_where_is(self, peer, msg: P.WhereIs) -> None:
        locs = [n for n in self.locations.get(msg.object_id, ()) if self.view.get(n) and self.view[n].alive]
        if locs:
            peer.conn.send(P.ObjectAt(msg.request_id, msg.object_id, locs[0]))
            return
        self._note_unheard(msg.object_id, msg.node_hint)
        if msg.object_id in self.lost:
            peer.conn.send(P.ObjectAt(msg.request_id, msg.object_id, error=self._lost_text(msg.object_id)))
        else:
            self.where_waiters.setdefault(msg.object_id, []).append((peer, msg.request_id))

    def locate(self, object_id: str, node_hint: str = "") -> None:
        """A local reader wants an object this node does not hold: find it and pull it.
        ``node_hint``: the node its owner was told sealed it (the head may not have heard yet)."""
        if object_id in self.wanted:
            return
        self.wanted.add(object_id)
        if self.is_head:
            locs = [n for n in self.locations.get(object_id, ()) if n != self.node.node_id]
            if locs:
                self.start_pull(object_id, locs[0])
                return
            self._note_unheard(object_id, node_hint)
            if object_id in self.lost:
                self._pull_failed(object_id, self._lost_text(object_id))
        elif getattr(self, "head_link", None) is not None:
            self.head_link.conn.send(P.WhereIs(0, object_id, node_hint))

    def _note_unheard(self, object_id: str, node_hint: str) -> None:
        """An object the head has no location for, said to be on ``node_hint``: that node's
        report may still be on its way, unless the node is dead (then it never comes: lost),
        or dies before it arrives (``_node_dead`` fails the readers)."""
        if not node_hint or object_id in self.lost or object_id in self.locations:
            return
        info = self.view.get(node_hint)
        if info is not None and not info.alive:
            self.lost[object_id] = node_hint
        else:
            self.unheard[object_id] = node_hint

    def on_object_at(self, peer, msg: P.ObjectAt) -> None:
        if msg.error:
            self._pull_failed(msg.object_id, msg.error)
        elif msg.node_id and msg.node_id != self.node.node_id:
            self.start_pull(msg.object_id, msg.node_id)

    def start_pull(self, object_id: str, node_id: str) -> None:
        rec = self.node.objects.records.get(object_id)
        if rec is not None and (rec.offset >= 0 or rec.state != "PENDING"):
            self.wanted.discard(object_id)
            return  # it arrived here meanwhile
        background.start(self.node.loop, self._pull(object_id, node_id))

    async def _pull(self, object_id: str, node_id: str) -> None:
        if any(p["object_id"] == object_id for p in self.pulls.values()):
            return  # one transfer serves every concurrent reader
        info = self.view.get(node_id)
        if info is None or not info.alive:
            self._pull_failed(object_id, f"the node holding it ({node_id[:8]}) is unreachable: it died or its link is cut")
            return
        pull_id = next(self.ids)
        log.debug("pull %s from node %s", object_id[:10], node_id[:8])
        self.pulls[pull_id] = {"object_id": object_id, "node": node_id, "offset": -1}
        from .node_transfer import pull_object
        try:
            error = await self.node.loop.run_in_executor(None, pull_object, self.node, info.address, object_id)
        except Exception as exc:  # noqa: BLE001 - unreachable or cut off mid-transfer
            error = f"the node holding it ({node_id[:8]}) is unreachable: it died or its link is cut ({exc})"
        self.pulls.pop(pull_id, None)
        if error:
            self._pull_failed(object_id, error)
        else:
            self._finish_copy(object_id)

    def _finish_copy(self, object_id: str) -> None:
        self.wanted.discard(object_id)
        rec = self.node.objects.seal(object_id, [])
        if rec is not None:
            self.node._answer_waiters(rec)

    def _pull_failed(self, object_id: str, reason: str) -> None:
        from .exceptions import ObjectLostError
        from .session import encode_system_error
        self.wanted.discard(object_id)
        err = ObjectLostError(object_id, f"could not fetch it from another node: {reason}")
        rec = self.node.objects.fail(object_id, encode_system_error(err))
        self.node._answer_waiters(rec)
        if self.node.objects.records.get(object_id) is rec:
            rec.state, rec.error = "PENDING", b""  # the owner may rebuild it: later reads look again

    def forward_release(self, msg: P.RemoveRefs, holder: str) -> None:
        """An owner dropped an object that may live on other nodes: tell them."""
        if self.is_head:
            for object_id in msg.object_ids:
                for node_id in list(self.locations.get(object_id, ())):
                    peer = self.peers.get(node_id)
                    if peer is not None and node_id != self.node.node_id:
                        peer.conn.send(P.RemoveRefs([object_id], holder=holder))
        elif getattr(self, "head_link", None) is not None:
            self.head_link.conn.send(P.RemoveRefs(msg.object_ids, holder=holder))

    # ---- actors hosted on other nodes --------------------------------------------------------

    def place_actor_elsewhere(self, client, msg: P.CreateActor) -> bool:
        """Create the actor on another node when affinity says so or this node cannot host it."""
        import msgspec
        import types
        if msg.node_affinity and msg.node_affinity != self.node.node_id:
            target = msg.node_affinity if self.view.get(msg.node_affinity, None) and self.view[msg.node_affinity].alive else ""
        elif self.node.pool.fits(msg.placement_shape) and not self.node.draining:
            return False
        else:
            target = self.spill_target(types.SimpleNamespace(shape=msg.placement_shape, preferred_node=""))
        if not target or self._name_taken(client, msg):
            return bool(target)
        self._reserve_in_view(target, msg.placement_shape)
        restarts = self.placed_actors.get(msg.actor_id, (None, None, msg.max_restarts))[2]
        self.placed_actors[msg.actor_id] = (msg, client.client_id, restarts)
        self.actor_homes[msg.actor_id] = target
        self.actor_waiters.setdefault(msg.actor_id, set()).add(client.client_id)
        background.start(self.node.loop, self._send_to_node(target, msgspec.structs.replace(msg, owner=client.client_id)))
        client.conn.send(P.ActorCreateReply(msg.actor_id))
        return True

    def _name_taken(self, client, msg: P.CreateActor) -> bool:
        entry = self.named.get((msg.namespace, msg.name)) if msg.name else None
        if entry is None or entry[2]:
            return False
        if msg.get_if_exists:
            client.conn.send(P.ActorCreateReply(msg.actor_id, existing_actor_id=entry[0]))
        else:
            client.conn.send(P.ActorCreateReply(msg.actor_id, error=(
                f"an actor named {msg.name!r} already exists in namespace {msg.namespace!r}; use "
                "nebula.get_actor(name) to reach it, or options(get_if_exists=True)")))
        return True

    async def _send_to_node(self, node_id: str, msg: P.Msg) -> None:
        peer = await self.peer(node_id)
        if peer is not None:
            peer.conn.send(msg)

    def actor_home(self, msg: P.CreateActor, dead: bool = False) -> None:
        home = P.ActorHome(msg.actor_id, self.node.node_id, msg.name, msg.namespace, msg.meta, dead)
        if self.is_head:
            self.on_actor_home(None, home)
        elif getattr(self, "head_link", None) is not None:
            self.head_link.conn.send(home)

    def on_actor_home(self, peer, msg: P.ActorHome) -> None:
        moved = self.actor_homes.get(msg.actor_id, msg.node_id) != msg.node_id or msg.actor_id not in self.actor_homes
        self.actor_homes[msg.actor_id] = msg.node_id
        if moved and self.actor_waiters.get(msg.actor_id):
            if msg.node_id != self.node.node_id:
                background.start(self.node.loop, self._send_to_node(msg.node_id, P.WaitActor(0, msg.actor_id)))
            else:  # it now lives here: its callers wait on the local record
                self.node.actors.adopt_waiters(msg.actor_id, self.actor_waiters.pop(msg.actor_id))
        if msg.name:
            self.named[(msg.namespace, msg.name)] = (msg.actor_id, msg.meta, msg.dead)
        if self.is_head:
            for node_id, other in list(self.peers.items()):
                if other is not peer:
                    other.conn.send(msg)
        for client, wait in self.pending_waits.pop(msg.actor_id, []):
            self.node.actors.on_wait(client, wait)

    def route_wait(self, client, msg: P.WaitActor) -> bool:
        home = self.actor_homes.get(msg.actor_id)
        if home == self.node.node_id:
            return False
        if home is None:
            self.pending_waits.setdefault(msg.actor_id, []).append((client, msg))
            self.node.loop.call_later(5.0, self._unknown_actor, msg.actor_id)
            return True
        waiters = self.actor_waiters.setdefault(msg.actor_id, set())
        first = not waiters
        waiters.add(client.client_id)
        last = self.actor_infos.get(msg.actor_id)
        if last is not None:
            client.conn.send(last)
        if first or last is None:
            background.start(self.node.loop, self._send_to_node(home, P.WaitActor(0, msg.actor_id)))
        return True

    def _unknown_actor(self, actor_id: str) -> None:
        for client, wait in self.pending_waits.pop(actor_id, []):
            client.conn.send(P.ActorInfo(wait.request_id, actor_id, "DEAD", reason="no such actor in this cluster"))

    def on_actor_info(self, peer, msg: P.ActorInfo) -> None:
        self.actor_infos[msg.actor_id] = msg
        for client_id in list(self.actor_waiters.get(msg.actor_id, ())):
            client = self.node.clients.get(client_id)
            if client is not None:
                client.conn.send(msg)

    def named_elsewhere(self, client, msg: P.GetNamedActor) -> bool:
        entry = self.named.get((msg.namespace, msg.name))
        if entry is None or entry[2] or self.actor_homes.get(entry[0]) == self.node.node_id:
            return False
        client.conn.send(P.NamedActorReply(msg.request_id, entry[0], entry[1]))
        return True

    def _actors_lost_with(self, node_id: str) -> None:
        """Actors hosted on a dead node: the node that placed them restarts them elsewhere."""
        for actor_id, home in list(self.actor_homes.items()):
            if home != node_id:
                continue
            del self.actor_homes[actor_id]
            self.actor_infos.pop(actor_id, None)
            placed = self.placed_actors.get(actor_id)
            if placed is not None and placed[2] != 0:
                self._replace_actor(actor_id, placed)
            elif actor_id in self.actor_waiters:
                self.node.loop.call_later(5.0, self._declare_lost, actor_id, node_id)

    def _replace_actor(self, actor_id: str, placed: tuple) -> None:
        msg, creator, restarts = placed
        self.placed_actors[actor_id] = (msg, creator, restarts - 1 if restarts > 0 else restarts)
        info = P.ActorInfo(0, actor_id, "RESTARTING", reason="its node died; restarting it on another node")
        self.on_actor_info(None, info)
        client = self.node.clients.get(creator) or _Silent()
        if not self.place_actor_elsewhere(client, msg):
            import msgspec
            self.node.actors.on_create(_Silent(), msgspec.structs.replace(msg, owner=creator))

    def _declare_lost(self, actor_id: str, node_id: str) -> None:
        if actor_id in self.actor_homes:
            return  # it was restarted somewhere
        info = P.ActorInfo(0, actor_id, "DEAD", reason=f"its node ({node_id[:8]}) died and it was not restarted "
                           "(max_restarts exhausted)")
        self.on_actor_info(None, info)

    def to_actor_home(self, actor_id: str, msg: P.Msg) -> None:
        home = self.actor_homes.get(actor_id)
        if home is not None and home != self.node.node_id:
            background.start(self.node.loop, self._send_to_node(home, msg))

    def client_gone(self, client_id: str) -> None:
        for peer in list(self.peers.values()):
            peer.conn.send(P.ClientGone(client_id))

    def snapshot_nodes(self) -> list[dict]:
        return [{"node_id": n.node_id, "alive": n.alive, "draining": n.draining, "address": n.address,
                 "resources_total": dict(n.resources_total), "resources_available": dict(n.resources_available),
                 "store": {"used": n.store_used, "capacity": n.store_capacity, "objects": n.store_objects}}
                for n in self.view.values()]


def check_plaintext_allowed(host: str, allowed: bool) -> None:
    """Nebula has no TLS yet: listening beyond loopback needs the user's explicit consent."""
    import ipaddress
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback and not allowed:
        raise ValueError(f"refusing to listen on {host}: Nebula does not encrypt traffic between machines yet "
                         "(connections are authenticated with the token, not encrypted). Pass --no-tls (or "
                         "no_tls: true in cluster.yaml) to accept that on a network you trust, or use 127.0.0.1")


class _Silent:
    """A stand-in client for requests the node makes on a creator's behalf (nobody to answer)."""

    client_id = ""
    kind = "node"

    class conn:  # noqa: N801 - mimics Client.conn
        @staticmethod
        def send(_msg) -> None:
            pass
