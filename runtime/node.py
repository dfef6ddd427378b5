"""The node agent process: membership of local processes, the worker pool, leases, the store.

    drivers / workers ──node link──► NodeAgent (one asyncio loop)
        RequestLease ─► LeaseQueue + ResourcePool ─► start or reuse a worker ─► LeaseGranted
        AllocObject/SealObject/GetObject ─► ObjectDirectory (shared-memory arena, spilling)
        CreateActor/WaitActor/KillActor ─► ActorDirectory (dedicated worker processes)
        Events ─► fanned out to subscribers (the feed is on only while someone subscribes)

It is never on the per-task path: tasks travel owner → worker directly. In the embedded
default it is the driver's child; it dies with it (parent-death signal + lifeline pipe) and
takes its workers along.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time

from . import node_drain
from . import node_launch
from . import background
from . import protocol as P
from . import wire
from .child_process import describe_exit
from .events import encode_events
from .ids import new_id
from .node_actors import ActorDirectory
from .node_objects import ObjectDirectory
from .node_resources import thread_limit_env
from .node_scheduler import LeaseQueue, LeaseRequest, ResourcePool
from .state_events import Event
from .store_arena import Arena

log = logging.getLogger("nebula.node")
MEMORY_MONITOR_PERCENT = 95.0
RELAY_CHUNK = 4 * 2**20
ZYGOTE_DELAY = 1.0
TELEMETRY_INTERVAL = 1.0
TELEMETRY_START = 0.5  # s after start-up: psutil and NVML load then, not while the first worker starts


class Client:
    """One connected process (a driver or a worker) as the node sees it."""

    def __init__(self, client_id: str, conn: wire.Connection):
        self.client_id, self.conn = client_id, conn
        self.kind, self.pid, self.job_id, self.namespace = "", 0, "", ""
        self.worker = None
        self.subscribed: list | None = None
        self.remote = conn.writer.get_extra_info("socket").family != socket.AF_UNIX


RETIRE_RETRY_S = 10.0  # a worker that declined to retire is asked again after this long
RETIRED = "retired: idle, and the node needed its slot for a worker of another pool"


class WorkerProc:
    """A worker process this node started."""

    def __init__(self, worker_id: str, popen, env_key: str, address: str, dedicated: bool):
        self.worker_id, self.popen, self.env_key, self.address = worker_id, popen, env_key, address
        self.dedicated = dedicated
        self.client: Client | None = None
        self.lease: dict | None = None
        self.actor_id = ""
        self.blocked = False
        self.tcp_address = ""
        self.started_at = time.time()
        self.dead = False
        self.idle_since = self.started_at
        self.retiring = False      # asked to exit to make room for another pool's worker
        self.declined_at = 0.0     # when it last said no (it owns objects or tasks)


class NodeAgent:
    """See the module docstring."""

    def __init__(self, session_dir: str, token: bytes, resources: dict, store_capacity: int,
                 address: str = "", config: dict | None = None, listener: socket.socket | None = None,
                 prestarted: list | None = None, huge_pages=None):
        self.session_dir, self.token, self.config = session_dir, token, dict(config or {})
        self.node_id = new_id(14)
        self.address = address or node_launch.node_address(session_dir)
        self.listener = listener  # bound early by node_main (see node_launch.py), else in serve()
        self.prestarted = list(prestarted or [])  # [(worker_id, popen)] node_main started before we existed
        self.prestart_target = 0  # prestarted workers still to start once the first is up (_prestart_rest)
        self.pool = ResourcePool(resources)
        self.leases = LeaseQueue()
        self.arena = Arena.create(store_capacity, os.path.join(session_dir, "spill"), huge_pages)
        _log_store_backing(self.arena, huge_pages)
        self.objects = ObjectDirectory(store_capacity, self.arena.view(),
                                       os.path.join(session_dir, "spill", "objects"), self.emit)
        self.actors = ActorDirectory(self)
        self.clients: dict[str, Client] = {}
        self.workers: dict[str, WorkerProc] = {}
        self.starting: collections.Counter = collections.Counter()
        self.feed: collections.deque = collections.deque(maxlen=50000)
        self.job_counter = 0
        self.max_workers = int(self.config.get("max_workers", max(32, 8 * int(resources.get("CPU", 1)))))
        self.warned_worker_cap = False
        self.warned_infeasible: set[tuple] = set()  # (client id, resource shape) told it cannot run
        self.telemetry = None  # a NodeTelemetry, made by _telemetry() once the node is up
        self.stopping = False
        self.draining = False  # see node_drain.py
        self.cluster = None
        if self.config.get("tcp_host"):
            from .node_cluster import ClusterLinks
            self.cluster = ClusterLinks(self, self.config["tcp_host"], int(self.config.get("tcp_port", 0)),
                                        self.config.get("join", ""), float(self.config.get("heartbeat_timeout", 3.0)))

    # ---- start-up ---------------------------------------------------------------------------

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        prestart = self.config.get("prestart_env")
        self.prestart_target = node_launch.prestart_count(self.config, self.pool.total)
        adopted, self.prestarted = self.prestarted, []
        for worker_id, popen in adopted:  # known before we accept: they may register at once
            self._add_worker(worker_id, popen, prestart[0], dedicated=False)
        self._listen()
        self.loop.call_later(ZYGOTE_DELAY, self.start_zygote)  # after the first workers, not competing
        if self.cluster is not None:
            self.cluster.listen()
            await self.cluster.start()
        if not adopted and self.prestart_target > 0:
            self._start_worker(prestart[0], bytes.fromhex(prestart[1]), dedicated=False)
        background.start(self.loop, self._watch_workers())
        background.start(self.loop, self._telemetry_loop())
        self._ready = True
        await asyncio.Event().wait()

    def _listen(self) -> None:
        sock = self.listener = self.listener or node_launch.bind_node_listener(self.address)
        threading.Thread(target=self._accept_loop, args=(sock,), name="nebula-accept", daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        try:
            fds = [self.arena.fd] if sock.family == socket.AF_UNIX else []
            role = wire.server_handshake(sock, self.token, self.node_id, fds=fds)
        except Exception as exc:  # noqa: BLE001 - any bad peer only loses its own connection
            log.warning("refused a connection: %s", exc)
            sock.close()
            return
        if role == "data":  # a peer pulling an object: served right here, off the event loop
            from .node_transfer import serve_pull
            serve_pull(self, sock)
            return
        self.loop.call_soon_threadsafe(lambda: background.start(self.loop, self._adopt(sock, role)))

    async def _adopt(self, sock: socket.socket, role: str) -> None:
        conn = await wire.Connection.adopt(sock, f"client ({role})")
        client = Client(new_id(10), conn)
        self.clients[client.client_id] = client
        await conn.run(lambda msg: self._dispatch(client, msg))
        if client.kind == "node":
            self.clients.pop(client.client_id, None)
            self.cluster.peer_lost(client)
        else:
            self._client_gone(client)

    # ---- message dispatch -------------------------------------------------------------------

    def _dispatch(self, client: Client, msg: P.Msg) -> None:
        handler = self._handlers().get(type(msg))
        if handler is None:
            log.warning("ignoring unexpected %s from %s", type(msg).__name__, client.client_id)
            return
        handler(client, msg)

    def _handlers(self) -> dict:
        table = getattr(self, "_table", None)
        if table is None:
            a = self.actors
            table = self._table = {
                P.RegisterClient: self._on_register, P.RequestLease: self._on_request_lease,
                P.CancelLeaseRequest: self._on_cancel_lease_request,
                P.ReturnLease: self._on_return_lease, P.WorkerBlocked: self._on_worker_blocked,
                P.AllocObject: self._on_alloc, P.SealObject: self._on_seal,
                P.DeclareObject: lambda c, m: self.objects.record(m.object_id, c.client_id),
                P.FailObject: self._on_fail_object, P.AddRefs: self._on_add_refs,
                P.RemoveRefs: self._on_remove_refs, P.GetObject: self._on_get_object,
                P.Unpin: lambda c, m: [self.objects.unpin(i, c.client_id) for i in m.object_ids],
                P.StateQuery: self._on_state_query, P.Subscribe: self._on_subscribe,
                P.Unsubscribe: self._on_unsubscribe, P.Events: lambda c, m: self._publish(m.events, c),
                P.RetireDeclined: self._on_retire_declined,
                P.CreateActor: a.on_create, P.WaitActor: a.on_wait, P.GetNamedActor: a.on_get_named,
                P.KillActor: a.on_kill, P.ActorReady: a.on_ready, P.ActorHandleReleased: a.on_handle_released,
                P.ClientGone: self._on_remote_client_gone,
                P.PutChunk: self._on_put_chunk,
                P.LeaseInfeasible: lambda c, m: None,
                P.DrainNode: lambda c, m: node_drain.start(self, m.grace_s),
            }
            if self.cluster is not None:
                table.update(self._cluster_handlers())
        return table

    def _cluster_handlers(self) -> dict:
        c = self.cluster
        return {P.NodeHello: c.on_node_hello, P.NodeHeartbeat: c.on_heartbeat, P.ClusterView: c.on_view,
                P.ObjectsSealed: c.on_objects_sealed, P.ObjectsFreed: c.on_objects_freed,
                P.WhereIs: c.on_where_is, P.ObjectAt: c.on_object_at, P.LeaseGranted: c.on_forwarded_grant,
                P.WorkerDied: lambda peer, m: c.relay_worker_died(m),
                P.ActorHome: c.on_actor_home, P.ActorInfo: c.on_actor_info,
                P.FeedControl: self._on_feed_from_head,
                P.EventBatch: lambda peer, m: self._publish(m.events, peer),
                P.ActorCreateReply: lambda peer, m: None,
                P.LeaseDeclined: lambda peer, m: node_drain.on_declined(self, peer, m),
                P.LeaseRevoked: lambda peer, m: node_drain.relay_revoked(self, peer, m)}

    def _on_remote_client_gone(self, peer: Client, msg: P.ClientGone) -> None:
        self.objects.drop_client(msg.client_id)
        self.actors.owner_gone(msg.client_id)

    def reset_for_rejoin(self) -> None:
        """Drop every worker (their leases and actors end) and every object this node holds."""
        from .exceptions import ObjectLostError
        from .session import encode_system_error
        for worker in list(self.workers.values()):
            worker.popen.kill()
        for rec in list(self.objects.records.values()):
            err = ObjectLostError(rec.object_id, "its node was cut off from the cluster and rejoined")
            self._answer_waiters(self.objects.fail(rec.object_id, encode_system_error(err)))

    def exit_now(self) -> None:
        self.stop_workers()
        os._exit(1)

    def _on_register(self, client: Client, msg: P.RegisterClient) -> None:
        client.kind, client.pid, client.namespace = msg.kind, msg.pid, msg.namespace
        client.job_id = msg.job_id or self._new_job_id()
        if msg.worker_id and msg.worker_id in self.workers:
            worker = self.workers[msg.worker_id]
            worker.client, client.worker = client, worker
            worker.tcp_address = msg.tcp_address
            if not worker.popen.pid:  # forked by the zygote, whose answer may still be on its way
                worker.popen.pid = msg.pid
            self.starting[(worker.env_key, worker.dedicated)] -= 1
        client.conn.send(P.Registered(client.client_id, client.job_id, self.node_id, self.session_dir,
                                      self.arena.capacity, self.arena.backing, self._client_config()))
        if self.feed_on():
            client.conn.send(P.FeedControl(True, True))
        if client.worker is not None:
            self._worker_ready(client.worker)

    def _client_config(self) -> dict:
        tcp = self.cluster.tcp_address if self.cluster is not None else ""
        return {"node_id": self.node_id, "address": self.address, "resources": self.pool.total, "tcp_address": tcp}

    def _new_job_id(self) -> str:
        self.job_counter += 1
        return f"{self.job_counter:08x}"

    # ---- leases -----------------------------------------------------------------------------

    def _on_request_lease(self, client: Client, msg: P.RequestLease) -> None:
        request = LeaseRequest(client.client_id, msg.request_id, dict(msg.shape), msg.env_key,
                               msg.runtime_env, msg.strategy)
        request.forwarded, request.preferred_node = msg.forwarded, msg.preferred_node
        log.debug("lease request %s/%d shape=%s strategy=%s preferred=%s forwarded=%s", client.client_id,
                  msg.request_id, msg.shape, msg.strategy, msg.preferred_node[:8], msg.forwarded)
        if self.draining and node_drain.redirect(self, client, request, msg):
            return
        if self.cluster is not None and not msg.forwarded and self._route_elsewhere(client, request, msg):
            return
        if not self.pool.feasible(request.shape) and (self.cluster is None or msg.forwarded
                                                      or not self.cluster.feasible_somewhere(request.shape)):
            self._warn_infeasible(client, request)
        self.leases.add(request)
        self._schedule()

    def _route_elsewhere(self, client: Client, request: LeaseRequest, msg: P.RequestLease) -> bool:
        """Affinity, SPREAD and locality decisions that send a request to another node."""
        target = ""
        if msg.strategy == "NODE_AFFINITY" and msg.node_affinity != self.node_id:
            alive = {n.node_id for n in self.cluster.alive_nodes() if not n.draining}
            if msg.node_affinity in alive:
                target = msg.node_affinity
            elif not msg.soft:
                from .exceptions import NodeDiedError
                from .session import encode_system_error
                err = NodeDiedError(f"node {msg.node_affinity} is not alive (or is draining) in this cluster; use "
                                    "soft=True to run elsewhere when it is gone", node_id=msg.node_affinity)
                client.conn.send(P.LeaseFailed(msg.request_id, encode_system_error(err)))
                return True
        elif msg.strategy == "SPREAD":
            target = self._spread_target(request)
        elif request.preferred_node and request.preferred_node != self.node_id:
            target = self.cluster.spill_target(request)
            target = target if target == request.preferred_node else ""
        if target:
            self.cluster.forward(request, target)
            return True
        return False

    def _spread_target(self, request: LeaseRequest) -> str:
        nodes = sorted(n.node_id for n in self.cluster.alive_nodes()
                       if not n.draining and all(n.resources_total.get(k, 0.0) >= v for k, v in request.shape.items()))
        if not nodes:
            return ""
        self.spread_turn = getattr(self, "spread_turn", -1) + 1
        chosen = nodes[self.spread_turn % len(nodes)]
        return "" if chosen == self.node_id else chosen

    def _on_cancel_lease_request(self, client: Client, msg: P.CancelLeaseRequest) -> None:
        if not self.leases.cancel(client.client_id, msg.request_id) and self.cluster is not None:
            self.cluster.cancel_forwarded(client.client_id, msg.request_id)

    def _warn_infeasible(self, client: Client, request: LeaseRequest) -> None:
        """Once per client and resource shape (an owner asks for several leases at a time)."""
        key = (client.client_id, tuple(sorted(request.shape.items())))
        if key in self.warned_infeasible:
            return
        self.warned_infeasible.add(key)
        text = (f"a task needs resources no node has ({self.pool.shortfall(request.shape)}); it stays "
                "pending until such a node joins. Cancel it with nebula.cancel(ref) or lower its requirements")
        log.warning(text)
        client.conn.send(P.LeaseInfeasible(request.request_id, text))

    def _schedule(self) -> None:
        """Grant every queued lease that fits, starting workers where none is idle."""
        deferred = []
        while True:
            request = self.leases.next_grantable(self.pool)
            if request is None:
                break
            worker = self._idle_worker(request.env_key)
            if worker is None:
                deferred.append(request)
                self.pool.acquire(request.shape)  # reserve while we look further
                continue
            self._grant(request, worker)
        wanted = collections.Counter(r.env_key for r in deferred)
        for request in reversed(deferred):
            self.pool.release(request.shape, [])
            self.leases.by_client.setdefault(request.client, collections.deque()).appendleft(request)
            if request.client not in self.leases.turn:
                self.leases.turn.append(request.client)
            self._ensure_worker_starting(request.env_key, request.runtime_env, wanted[request.env_key])
        if self.cluster is not None:
            self._spill_waiting()
        self.actors.schedule()

    def _spill_waiting(self) -> None:
        """Requests that cannot run here now go to nodes with free resources (spillback)."""
        for request in list(self.leases.pending()):
            if request.forwarded or request.strategy in ("NODE_AFFINITY", "SPREAD") or self.pool.fits(request.shape):
                continue
            target = self.cluster.spill_target(request)
            if target and self.leases.cancel(request.client, request.request_id):
                self.cluster.forward(request, target)

    def _idle_worker(self, env_key: str) -> WorkerProc | None:
        for worker in self.workers.values():
            if _is_idle(worker) and worker.env_key == env_key:
                return worker
        return None

    def _ensure_worker_starting(self, env_key: str, runtime_env: bytes, wanted: int) -> None:
        if self.starting[(env_key, False)] >= wanted:
            return
        if self._live_workers() >= self.max_workers:
            if not self._retire_idle_worker(env_key):
                self._warn_worker_cap()
            return
        self._start_worker(env_key, runtime_env, dedicated=False)

    def _retire_idle_worker(self, env_key: str) -> bool:
        """At the cap, ask the worker idle longest in another pool (another runtime_env, working
        directory or sys.path: a notebook that changes them makes new pools) to exit, so this
        pool can start one; it declines if it still owns objects or tasks. True while one is
        asked or leaving."""
        if any(w.retiring and not w.dead for w in self.workers.values()):
            return True
        now = time.time()
        idle = [w for w in self.workers.values()
                if _is_idle(w) and w.env_key != env_key and now - w.declined_at > RETIRE_RETRY_S]
        if not idle:
            return False
        worker = min(idle, key=lambda w: w.idle_since)
        worker.retiring = True
        worker.client.conn.send(P.Retire())
        return True

    def _on_retire_declined(self, client: Client, _msg) -> None:
        worker = client.worker
        if worker is not None:
            worker.retiring, worker.declined_at = False, time.time()
            self._schedule()  # ask another

    def _live_workers(self) -> int:
        return sum(1 for w in self.workers.values() if not w.dead)

    def _warn_worker_cap(self) -> None:
        if not self.warned_worker_cap:
            self.warned_worker_cap = True
            log.warning("reached the cap of %d worker processes on this node with none free: tasks that "
                        "block in get() while submitting more tasks (runaway recursion?) are waiting for "
                        "each other, or idle workers of other pools (another runtime_env, working directory "
                        "or sys.path) still own objects", self.max_workers)

    def _grant(self, request: LeaseRequest, worker: WorkerProc) -> None:
        gpus = self.pool.acquire(request.shape)
        worker.lease = {"lease_id": new_id(8), "client": request.client, "shape": request.shape,
                        "gpus": gpus, "granted_at": time.time()}
        client = self.clients.get(request.client)
        address = worker.tcp_address if client.kind == "node" or client.remote else worker.address
        log.debug("grant %s/%d -> worker %s at %s", request.client, request.request_id, worker.worker_id, address)
        client.conn.send(P.LeaseGranted(request.request_id, worker.lease["lease_id"], worker.worker_id,
                                        address, worker.popen.pid, self.node_id, gpus))
        self.emit("worker", worker.worker_id, "LEASED", client=request.client, pid=worker.popen.pid)

    def _on_return_lease(self, client: Client, msg: P.ReturnLease) -> None:
        if self.cluster is not None and self.cluster.return_remote_lease(msg.lease_id):
            return
        for worker in self.workers.values():
            if worker.lease and worker.lease["lease_id"] == msg.lease_id:
                self._end_lease(worker)
                break
        self._schedule()

    def _end_lease(self, worker: WorkerProc) -> None:
        lease, worker.lease = worker.lease, None
        worker.idle_since = time.time()
        if not worker.blocked:
            self.pool.release(lease["shape"], lease["gpus"])
        worker.blocked = False
        self.emit("worker", worker.worker_id, "IDLE", pid=worker.popen.pid)

    def _on_worker_blocked(self, client: Client, msg: P.WorkerBlocked) -> None:
        worker = client.worker
        if worker is None or worker.lease is None or worker.blocked == msg.blocked:
            return
        worker.blocked = msg.blocked
        shape = {k: v for k, v in worker.lease["shape"].items() if k == "CPU"}
        if msg.blocked:
            self.pool.release(shape, [])
            self._schedule()
        else:
            self.pool.acquire(shape)

    # ---- worker processes -------------------------------------------------------------------

    def _start_worker(self, env_key: str, runtime_env: bytes, dedicated: bool) -> WorkerProc:
        worker_id = new_id(8)
        env, cwd, python = self._worker_environment(worker_id, runtime_env)
        log_path = node_launch.worker_log_path(self.session_dir, worker_id)
        popen = self._fork_or_spawn(worker_id, env, cwd, python, log_path)
        return self._add_worker(worker_id, popen, env_key, dedicated)

    def _add_worker(self, worker_id: str, popen, env_key: str, dedicated: bool) -> WorkerProc:
        address = f"unix:{os.path.join(self.session_dir, f'w-{worker_id}.sock')}"
        worker = WorkerProc(worker_id, popen, env_key, address, dedicated)
        self.workers[worker_id] = worker
        self.starting[(env_key, dedicated)] += 1
        self.emit("worker", worker_id, "STARTING", pid=popen.pid)
        return worker

    def _fork_or_spawn(self, worker_id: str, env: dict, cwd, python: str, log_path: str):
        """Fork from the zygote (milliseconds) when it can serve this interpreter, else start anew."""
        zygote = getattr(self, "zygote", None)
        if zygote is not None:
            zygote.collect_exits()
        if zygote is not None and zygote.ready and python == sys.executable and zygote.alive():
            return zygote.spawn(worker_id, env, cwd, log_path)
        return node_launch.spawn_worker_process(python, env, cwd, log_path)

    def start_zygote(self) -> None:
        if os.environ.get("NEBULA_NO_ZYGOTE") or not self.config.get("zygote", True):
            return
        from .zygote import Zygote
        env = dict(os.environ)
        env.update(thread_limit_env(1, env))
        self.zygote = Zygote(env)

    def _worker_environment(self, worker_id: str, runtime_env: bytes):
        tcp_host = self.cluster.tcp_host if self.cluster is not None else ""
        return node_launch.worker_environment(worker_id, runtime_env, address=self.address,
                                              session_dir=self.session_dir, token=self.token, tcp_host=tcp_host)

    def _prestart_rest(self) -> None:
        """The other prestarted workers start once the first is up (or gone): started together,
        on a small machine, they would only delay the first, which the first task waits for.
        Workers started meanwhile for waiting tasks count towards them."""
        if not self.prestart_target or self.stopping or self.draining:
            return
        env_key, env_bytes = self.config["prestart_env"]
        live = sum(1 for w in self.workers.values() if not w.dead and not w.dedicated and w.env_key == env_key)
        missing, self.prestart_target = self.prestart_target - live, 0
        for _ in range(missing):
            self._start_worker(env_key, bytes.fromhex(env_bytes), dedicated=False)

    def _worker_ready(self, worker: WorkerProc) -> None:
        self.emit("worker", worker.worker_id, "IDLE", pid=worker.popen.pid)
        if worker.dedicated:
            self.actors.worker_ready(worker)
        else:
            self._schedule()
        if self.prestart_target:
            self.loop.call_soon(self._prestart_rest)  # after the lease just granted is on its way

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for worker in list(self.workers.values()):
                if not worker.dead and worker.popen.poll() is not None:
                    self._worker_exited(worker, RETIRED if worker.retiring else "")
            self._memory_monitor()

    def _worker_exited(self, worker: WorkerProc, reason: str = "") -> None:
        worker.dead = True
        del self.workers[worker.worker_id]
        if worker.client is None:
            self.starting[(worker.env_key, worker.dedicated)] -= 1
        description = reason or describe_exit(worker.popen.returncode) + _likely_cause(worker.popen.returncode)
        self.emit("worker", worker.worker_id, "DEAD", pid=worker.popen.pid, reason=description)
        lease = worker.lease
        if lease is not None:
            self._end_lease(worker)
            holder = self.clients.get(lease["client"])
            if holder is not None:
                holder.conn.send(P.WorkerDied(worker.worker_id, description, worker.popen.returncode))
        if worker.actor_id:
            self.actors.worker_died(worker, description)
        self._prestart_rest()
        self._schedule()

    def _memory_monitor(self) -> None:
        import psutil
        memory = psutil.virtual_memory()
        sample = {"percent": memory.percent, "total": memory.total}
        if sample["percent"] < self.config.get("memory_monitor_percent", MEMORY_MONITOR_PERCENT):
            return
        leased = [w for w in self.workers.values() if w.lease and not w.dead]
        if not leased:
            return
        victim = max(leased, key=lambda w: w.lease["granted_at"])
        rss = self._telemetry().process_rss([victim.popen.pid]).get(victim.popen.pid, 0)
        reason = (f"killed by the memory monitor: node at {sample['percent']:.0f}% of "
                  f"{sample['total'] / 2**30:.1f} GiB; the task used {rss / 2**30:.1f} GiB. Give the task "
                  "less data, or more memory (memory= option) so fewer run at once")
        log.warning("worker pid=%d %s", victim.popen.pid, reason)
        victim.popen.kill()
        victim.popen.wait()
        self._worker_exited(victim, reason)

    # ---- objects ----------------------------------------------------------------------------

    def _on_alloc(self, client: Client, msg: P.AllocObject) -> None:
        result = self.objects.allocate(msg.object_id, msg.size, msg.owner or client.client_id)
        if not isinstance(result, str):
            try:
                self.arena.reserve(result, msg.size)
            except Exception as exc:  # noqa: BLE001 - out of memory: the allocation fails cleanly
                self.objects.allocator.free(result)
                self.objects.records[msg.object_id].offset = -1
                result = str(exc)
        if isinstance(result, str):
            client.conn.send(P.Allocated(msg.request_id, error=result))
        else:
            client.conn.send(P.Allocated(msg.request_id, offset=result))

    def _on_seal(self, client: Client, msg: P.SealObject) -> None:
        rec = self.objects.seal(msg.object_id, msg.contained)
        if rec is not None:
            self._answer_waiters(rec)

    def _on_fail_object(self, client: Client, msg: P.FailObject) -> None:
        self._answer_waiters(self.objects.fail(msg.object_id, msg.error))

    def _on_add_refs(self, client: Client, msg: P.AddRefs) -> None:
        for object_id in msg.object_ids:
            self.objects.add_hold(object_id, msg.holder or client.client_id)
        if msg.request_id:
            client.conn.send(P.RefsAck(msg.request_id))

    def _on_remove_refs(self, client: Client, msg: P.RemoveRefs) -> None:
        holder = msg.holder or client.client_id
        for object_id in msg.object_ids:
            rec = self.objects.records.get(object_id)
            if rec is not None and rec.holders.get(holder):
                self.objects.remove_hold(object_id, holder)
            elif self.cluster is not None and client.kind != "node":
                self.cluster.forward_release(P.RemoveRefs([object_id]), holder)

    def _on_get_object(self, client: Client, msg: P.GetObject) -> None:
        rec = self.objects.record(msg.object_id)
        if rec.state == "PENDING":
            rec.waiters.append((client.client_id, msg.request_id, msg.pin))
            if self.cluster is not None and rec.offset < 0:
                self.cluster.locate(msg.object_id, msg.node_hint)
            return
        self._answer(rec, client, msg.request_id, msg.pin)

    def _answer_waiters(self, rec) -> None:
        waiters, rec.waiters = rec.waiters, []
        for client_id, request_id, pin in waiters:
            client = self.clients.get(client_id)
            if client is not None:
                self._answer(rec, client, request_id, pin)
        self.objects._maybe_free(rec)

    def _answer(self, rec, client: Client, request_id: int, pin: bool) -> None:
        if rec.state == "FAILED":
            client.conn.send(P.ObjectLocation(request_id, rec.object_id, error=rec.error))
            return
        error = self.objects.restore(rec) if rec.spilled else ""
        if error:
            from .session import encode_system_error
            from .exceptions import ObjectStoreFullError
            client.conn.send(P.ObjectLocation(request_id, rec.object_id,
                                              error=encode_system_error(ObjectStoreFullError(error))))
            return
        if client.remote and client.kind != "node":  # cannot map our store: send bytes, or just "ready"
            if pin:
                background.start(self.loop, self._relay_object(client, rec, request_id))
            else:
                client.conn.send(P.ObjectLocation(request_id, rec.object_id, -1, rec.size))
            return
        if pin:
            self.objects.pin(rec, client.client_id)
        client.conn.send(P.ObjectLocation(request_id, rec.object_id, rec.offset, rec.size))

    async def _relay_object(self, client: Client, rec, request_id: int) -> None:
        """A driver without this store mapped gets the object's bytes in chunks."""
        holder = f"relay:{client.client_id}:{request_id}"
        self.objects.pin(rec, holder)
        try:
            for start in range(0, max(rec.size, 1), RELAY_CHUNK):
                end = min(rec.size, start + RELAY_CHUNK)
                data = bytes(self.objects.view[rec.offset + start:rec.offset + end])
                client.conn.send(P.ObjectChunk(request_id, rec.object_id, start, rec.size, data))
                client.conn._flush()
                await client.conn.writer.drain()
        except ConnectionError:
            pass
        finally:
            self.objects.unpin(rec.object_id, holder)

    def _on_put_chunk(self, client: Client, msg: P.PutChunk) -> None:
        rec = self.objects.records.get(msg.object_id)
        if msg.offset == 0:
            result = self.objects.allocate(msg.object_id, msg.total, msg.owner or client.client_id)
            if isinstance(result, str):
                from .exceptions import ObjectStoreFullError
                from .session import encode_system_error
                self._answer_waiters(self.objects.fail(msg.object_id, encode_system_error(ObjectStoreFullError(result))))
                return
            self.arena.reserve(result, msg.total)
            rec = self.objects.records[msg.object_id]
        if rec is None or rec.offset < 0:
            return
        self.objects.view[rec.offset + msg.offset:rec.offset + msg.offset + len(msg.data)] = msg.data
        if msg.offset + len(msg.data) >= msg.total:
            self._on_seal(client, P.SealObject(msg.object_id, msg.contained))

    # ---- clients leaving --------------------------------------------------------------------

    def _client_gone(self, client: Client) -> None:
        self.clients.pop(client.client_id, None)
        self.leases.drop_client(client.client_id)
        if client.subscribed is not None:
            self._on_unsubscribe(client, None)
        for worker in list(self.workers.values()):
            if worker.lease and worker.lease["client"] == client.client_id:
                worker.popen.kill()  # its owner is gone: whatever it runs is no longer wanted
        self._fail_orphaned_objects(client)
        self.actors.owner_gone(client.client_id)
        if self.cluster is not None:
            self.cluster.client_gone(client.client_id)
        if client.worker is not None and not client.worker.dead:
            client.worker.popen.kill()
        self._schedule()

    def _fail_orphaned_objects(self, client: Client) -> None:
        from .exceptions import OwnerDiedError
        from .session import encode_system_error
        for rec in self.objects.drop_client(client.client_id):
            err = OwnerDiedError(rec.object_id, f"its owner (pid {client.pid}) exited before the object was created")
            self._answer_waiters(self.objects.fail(rec.object_id, encode_system_error(err)))

    # ---- state feed -------------------------------------------------------------------------

    def emit(self, kind: str, object_id: str, state: str, **fields) -> None:
        if kind == "object" and self.cluster is not None:
            if state == "SEALED":
                self.cluster.object_sealed(object_id)
            elif state == "FREED":
                self.cluster.object_freed(object_id)
        if not self.feed_on():
            return
        fields["node"] = self.node_id
        self._publish(encode_events([Event(kind, object_id, state, time.time(), fields)]))

    def subscribers(self) -> list[Client]:
        return [c for c in self.clients.values() if c.subscribed is not None]

    def feed_on(self) -> bool:
        """Someone wants events: a subscriber here, or (through the head) on another node."""
        return bool(self.subscribers()) or getattr(self, "remote_feed", False)

    def _publish(self, events: bytes, source: Client | None = None) -> None:
        """To every subscriber but the source; events born here also go to the head, which
        passes them to the nodes whose processes subscribe (the feed spans the cluster)."""
        for client in self.subscribers():
            if client is not source:  # a subscriber gets its own events locally, not echoed back
                client.conn.send(P.EventBatch(events))
        head = getattr(self.cluster, "head_link", None) if self.cluster is not None else None
        if head is not None and getattr(self, "remote_feed", False) and source is not head:
            head.conn.send(P.Events(events))

    def _on_subscribe(self, client: Client, msg: P.Subscribe) -> None:
        first = not any(c.subscribed is not None and c.kind != "node" for c in self.clients.values())
        client.subscribed = list(msg.kinds)
        if first and client.kind != "node":
            self._tell_head(P.Subscribe([]))
        self._tell_feed_state()

    def _on_unsubscribe(self, client: Client, _msg) -> None:
        client.subscribed = None
        if client.kind != "node" and not any(c.subscribed is not None and c.kind != "node"
                                             for c in self.clients.values()):
            self._tell_head(P.Unsubscribe())
        self._tell_feed_state()

    def _tell_head(self, msg: P.Msg) -> None:
        head = getattr(self.cluster, "head_link", None) if self.cluster is not None else None
        if head is not None:
            head.conn.send(msg)

    def _on_feed_from_head(self, peer: Client, msg: P.FeedControl) -> None:
        self.remote_feed = msg.enabled
        self._tell_feed_state()

    def _tell_feed_state(self) -> None:
        """Every client learns whether to record events, and whether anyone else wants them."""
        subscribers = self.subscribers()
        remote = getattr(self, "remote_feed", False)
        for client in self.clients.values():
            others = remote or any(s is not client for s in subscribers)
            if client.kind == "node" and client is getattr(self.cluster, "head_link", None):
                continue  # the head decides the cluster-wide feed, not us
            client.conn.send(P.FeedControl(bool(subscribers) or remote, others))

    def _telemetry(self):
        if self.telemetry is None:
            from .telemetry import NodeTelemetry
            self.telemetry = NodeTelemetry()
        return self.telemetry

    async def _telemetry_loop(self) -> None:
        await asyncio.sleep(TELEMETRY_START)
        self._telemetry()  # CPU shares are measured from here to the first sample
        delay = TELEMETRY_INTERVAL - TELEMETRY_START  # the first sample comes when it always did
        while True:
            await asyncio.sleep(delay)
            delay = TELEMETRY_INTERVAL
            if self.feed_on():
                sample = self._telemetry().sample()
                sample["store"] = self.objects.stats()
                self.emit("node", self.node_id, "TELEMETRY", **sample)

    def _on_state_query(self, client: Client, msg: P.StateQuery) -> None:
        from .node_state import node_snapshot
        payload = pickle.dumps(node_snapshot(self))
        client.conn.send(P.StateReply(msg.request_id, payload))

    # ---- shutdown ---------------------------------------------------------------------------

    def stop_workers(self) -> None:
        self.stopping = True
        zygote = getattr(self, "zygote", None)
        if zygote is not None:
            zygote.stop()
        for worker in list(self.workers.values()):
            try:
                worker.popen.kill()
            except OSError:
                pass
        for worker in list(self.workers.values()):
            try:
                worker.popen.wait(2)
            except Exception:  # noqa: BLE001
                pass


def _likely_cause(returncode: int | None) -> str:
    if returncode == -signal.SIGKILL:
        return " (out of memory? the kernel's OOM killer, nebula.cancel(force=True) or `kill -9`)"
    if returncode == -signal.SIGSEGV:
        return " (a segmentation fault in user or C-extension code)"
    if returncode is not None and returncode > 0:
        return " (the process called exit() or an uncaught error ended it; see its log in the session's logs/ directory)"
    return ""


def _log_store_backing(arena: Arena, huge_pages) -> None:
    """Say in the node's log what holds the object store, and why huge pages are not used."""
    why_not = f"; no huge pages: {huge_pages.reason}" if huge_pages is not None and huge_pages.reason else ""
    log.info("object store: %s bytes of %s%s", arena.capacity, arena.backing, why_not)


def _is_idle(worker: WorkerProc) -> bool:
    """Registered, holding no lease, hosting no actor, not about to exit: free for a lease."""
    return (worker.client is not None and worker.lease is None and not worker.actor_id and not worker.dedicated
            and not worker.dead and not worker.retiring)
