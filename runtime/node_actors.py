"""The node's actors: placement, a dedicated process each, names, restarts and deaths.

    CreateActor ─► PENDING ─(1 CPU free to place; holds only what it asked for)─► start worker
        worker registered ─► BecomeActor ─► ActorReady ─► ALIVE ─► callers told (ActorInfo)
        process died ─► RESTARTING (restarts left) ─► ALIVE again │ DEAD (callers told why)
"""
from __future__ import annotations

import logging

from . import protocol as P

log = logging.getLogger("nebula.node.actors")
INFINITE = -1


class ActorRecord:
    def __init__(self, msg: P.CreateActor, owner: str):
        self.msg, self.owner = msg, owner
        self.actor_id = msg.actor_id
        self.state = "PENDING"
        self.worker = None
        self.gpus: list[int] = []
        self.restarts = 0
        self.incarnation = 0
        self.no_restart = False
        self.reason = ""
        self.last_death = ""
        self.waiters: set[str] = set()
        self.held = False


class ActorDirectory:
    """See the module docstring; ``node`` is the NodeAgent whose workers host the actors."""

    def __init__(self, node):
        self.node = node
        self.actors: dict[str, ActorRecord] = {}
        self.names: dict[tuple[str, str], str] = {}
        self.placing: list[ActorRecord] = []

    # ---- requests ---------------------------------------------------------------------------

    def on_create(self, client, msg: P.CreateActor) -> None:
        key = (msg.namespace, msg.name)
        if msg.name and key in self.names and self.actors[self.names[key]].state != "DEAD":
            existing = self.names[key]
            if msg.get_if_exists:
                client.conn.send(P.ActorCreateReply(msg.actor_id, existing_actor_id=existing))
            else:
                client.conn.send(P.ActorCreateReply(msg.actor_id, error=(
                    f"an actor named {msg.name!r} already exists in namespace {msg.namespace!r}; use "
                    "nebula.get_actor(name) to reach it, or options(get_if_exists=True)")))
            return
        cluster = self.node.cluster
        if cluster is not None and client.kind != "node" and cluster.place_actor_elsewhere(client, msg):
            return
        record = self.actors[msg.actor_id] = ActorRecord(msg, msg.owner or client.client_id)
        record.waiters.add(client.client_id)
        if msg.name:
            self.names[key] = msg.actor_id
        if cluster is not None:
            cluster.actor_home(msg)
        client.conn.send(P.ActorCreateReply(msg.actor_id))
        self._check_feasible(record, client)
        self.placing.append(record)
        self.node.emit("actor", msg.actor_id, "PENDING", name=msg.name, class_name=msg.class_name)
        self.schedule()

    def _check_feasible(self, record: ActorRecord, client) -> None:
        if not self.node.pool.feasible(record.msg.placement_shape):
            text = (f"actor {record.msg.class_name} needs resources no node has "
                    f"({self.node.pool.shortfall(record.msg.placement_shape)}); it stays pending")
            log.warning(text)
            client.conn.send(P.LeaseInfeasible(0, text))

    def on_wait(self, client, msg: P.WaitActor) -> None:
        record = self.actors.get(msg.actor_id)
        if record is None and self.node.cluster is not None and self.node.cluster.route_wait(client, msg):
            return
        if record is None:
            client.conn.send(P.ActorInfo(msg.request_id, msg.actor_id, "DEAD",
                                         reason="no such actor on this cluster (it was never created here "
                                                "or the cluster restarted)"))
            return
        record.waiters.add(client.client_id)
        client.conn.send(self._info(record, msg.request_id, remote=client.kind == "node" or client.remote))

    def on_get_named(self, client, msg: P.GetNamedActor) -> None:
        actor_id = self.names.get((msg.namespace, msg.name))
        record = self.actors.get(actor_id) if actor_id else None
        if record is None and self.node.cluster is not None and self.node.cluster.named_elsewhere(client, msg):
            return
        if record is None or record.state == "DEAD":
            client.conn.send(P.NamedActorReply(msg.request_id, error=(
                f"no live actor named {msg.name!r} in namespace {msg.namespace!r}")))
            return
        client.conn.send(P.NamedActorReply(msg.request_id, actor_id, record.msg.meta))

    def on_kill(self, client, msg: P.KillActor) -> None:
        record = self.actors.get(msg.actor_id)
        if record is None and self.node.cluster is not None:
            self.node.cluster.to_actor_home(msg.actor_id, msg)
            return
        if record is None or record.state == "DEAD":
            return
        record.no_restart = record.no_restart or msg.no_restart
        record.reason = "killed by nebula.kill()" if client.worker is None or client.worker is not record.worker \
            else "the actor exited via exit_actor()"
        if record.worker is not None and not record.worker.dead:
            record.worker.popen.kill()
        elif record.no_restart:
            self._mark_dead(record, record.reason)

    def on_handle_released(self, client, msg: P.ActorHandleReleased) -> None:
        record = self.actors.get(msg.actor_id)
        if record is None and self.node.cluster is not None:
            self.node.cluster.to_actor_home(msg.actor_id, msg)
            return
        if record is not None and not record.msg.name and not record.msg.detached:
            self.on_kill(client, P.KillActor(msg.actor_id, True))
            record.reason = "all handles to the actor went out of scope"

    def on_ready(self, client, msg: P.ActorReady) -> None:
        record = self.actors.get(msg.actor_id)
        if record is None:
            return
        if msg.error:
            record.no_restart = True
            record.reason = "its __init__ raised:\n" + msg.error.decode(errors="replace")
            client.worker.popen.kill()
            return
        record.state = "ALIVE"
        self.node.emit("actor", record.actor_id, "ALIVE", pid=record.worker.popen.pid,
                       worker=record.worker.worker_id, name=record.msg.name, class_name=record.msg.class_name)
        self._notify(record)

    # ---- placement and lifecycle ------------------------------------------------------------

    def schedule(self) -> None:
        for record in list(self.placing):
            if self.node.pool.fits(record.msg.placement_shape):
                self.placing.remove(record)
                record.gpus = self.node.pool.acquire(record.msg.shape)
                record.held = True
                record.worker = self.node._start_worker(record.msg.env_key, record.msg.runtime_env, dedicated=True)
                record.worker.actor_id = record.actor_id

    def worker_ready(self, worker) -> None:
        record = self.actors.get(worker.actor_id)
        if record is None:
            worker.popen.kill()
            return
        worker.client.conn.send(P.BecomeActor(record.actor_id, record.msg.spec, record.msg.max_concurrency,
                                              record.incarnation, dict(record.msg.shape), tuple(record.gpus or ())))

    def worker_died(self, worker, description: str) -> None:
        record = self.actors.get(worker.actor_id)
        if record is None or record.worker is not worker:
            return
        record.worker = None
        self._release(record)
        limit = record.msg.max_restarts
        if record.no_restart or (limit != INFINITE and record.restarts >= limit):
            self._mark_dead(record, record.reason or f"its process died: {description}")
            return
        record.restarts += 1
        record.incarnation += 1
        record.state = "RESTARTING"
        record.last_death = f"its process died: {description}"
        log.warning("actor %s died (%s); restarting (%d of %s)", record.msg.class_name, description,
                    record.restarts, "inf" if limit == INFINITE else limit)
        self._notify(record)
        self.placing.append(record)
        self.schedule()

    def _release(self, record: ActorRecord) -> None:
        if record.held:
            self.node.pool.release(record.msg.shape, record.gpus)
            record.held = False

    def _mark_dead(self, record: ActorRecord, reason: str) -> None:
        record.state, record.reason = "DEAD", reason
        if record in self.placing:
            self.placing.remove(record)
        self._release(record)
        self.node.objects.drop_client("actor:" + record.actor_id)
        self.node.emit("actor", record.actor_id, "DEAD", reason=reason, class_name=record.msg.class_name)
        self._notify(record)

    def owner_gone(self, client_id: str) -> None:
        for record in list(self.actors.values()):
            record.waiters.discard(client_id)
            if record.owner == client_id and not record.msg.detached and record.state != "DEAD":
                record.no_restart = True
                record.reason = "its owner (the driver or task that created it) exited"
                if record.worker is not None and not record.worker.dead:
                    record.worker.popen.kill()
                else:
                    self._mark_dead(record, record.reason)

    def _info(self, record: ActorRecord, request_id: int = 0, remote: bool = False) -> P.ActorInfo:
        worker = record.worker
        address = (worker.tcp_address if remote else worker.address) if worker is not None and record.state == "ALIVE" else ""
        reason = record.reason or (record.last_death if record.state == "RESTARTING" else "")
        return P.ActorInfo(request_id, record.actor_id, record.state, address, record.incarnation,
                           reason, record.msg.class_name)

    def _notify(self, record: ActorRecord) -> None:
        for client_id in list(record.waiters):
            client = self.node.clients.get(client_id)
            if client is not None:
                client.conn.send(self._info(record, remote=client.kind == "node" or client.remote))
        if record.state == "DEAD" and self.node.cluster is not None:
            self.node.cluster.actor_home(record.msg, dead=True)

    def adopt_waiters(self, actor_id: str, client_ids: set[str]) -> None:
        record = self.actors.get(actor_id)
        if record is not None:
            record.waiters |= client_ids
            self._notify(record)

    def snapshot(self) -> list[dict]:
        return [{"actor_id": r.actor_id, "class_name": r.msg.class_name, "name": r.msg.name,
                 "namespace": r.msg.namespace, "state": r.state, "restarts": r.restarts,
                 "pid": r.worker.popen.pid if r.worker is not None else None, "reason": r.reason,
                 "detached": r.msg.detached, "owner": r.owner} for r in self.actors.values()]
