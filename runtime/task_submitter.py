"""Owner-side task submission: resolve dependencies, lease workers, send tasks straight to them.

    submit ─► waiting for args ─► queue[shape] ─► lease (node grants a worker) ─► ExecuteTask
                                                   ▲                                │
              retry on worker death ───────────────┘◄──── TaskResult / link lost ◄──┘

The node agent is only asked for *leases* (one per worker, per resource shape); tasks then
go owner → worker directly, a few in flight per worker for short tasks, and results come
back on the same link. Everything here runs on the session's I/O thread, except ``submit``.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import time

from . import background
from . import protocol as P
from . import wire
from .exceptions import TaskCancelledError, WorkerCrashedError
from .ids import new_id, return_id
from .light_future import LightFuture
from .options import resource_shape, strategy_fields
from .task_args import pack_args

log = logging.getLogger("nebula.tasks")
MAX_LEASE_REQUESTS = 8
LEASE_IDLE_SECONDS = 0.05
DEATH_INFO_WAIT = 1.5
SHORT_TASK_SECONDS = 0.002
DEEP_PIPELINE = 8
LINEAGE_LIMIT = 10000


class PendingTask:
    """One submitted task, from submission until its result (or final failure) arrives."""

    __slots__ = ("spec", "key", "deps", "nested", "retries_left", "retry_exceptions", "cancelled",
                 "lease", "shape", "env", "strategy", "name", "dep_sources", "where")

    def __init__(self, spec, key, deps, nested, options, shape, strategy):
        self.spec, self.key, self.deps, self.nested = spec, key, deps, nested
        self.retries_left = options.max_retries
        self.retry_exceptions = options.retry_exceptions
        self.cancelled = False
        self.lease = None
        self.shape, self.env, self.strategy = shape, options.runtime_env, strategy
        self.name = spec.name
        self.dep_sources: list | tuple = ()
        self.where = ()  # (node, worker, pid) of its last run, once a worker took it


class WorkerLink:
    """An authenticated connection to one worker (shared by the leases and actors on it)."""

    def __init__(self, address: str):
        self.address = address
        self.conn: wire.Connection | None = None
        self.functions_sent: set[str] = set()
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = False


class Lease:
    __slots__ = ("lease_id", "worker_id", "key", "link", "in_flight", "pid", "node_id", "idle_timer", "dead",
                 "dispatched", "revoked", "gpu_ids")

    def __init__(self, msg: P.LeaseGranted, key, link: WorkerLink):
        self.lease_id, self.worker_id, self.key, self.link = msg.lease_id, msg.worker_id, key, link
        self.pid, self.node_id = msg.pid, msg.node_id
        self.gpu_ids = tuple(msg.gpu_ids)  # the GPUs the node granted with the lease
        self.in_flight: dict[str, PendingTask] = {}
        self.idle_timer = None
        self.dead = False
        self.dispatched = 0
        self.revoked = False  # its node is draining: no more tasks; returned once idle


class TaskSubmitter:
    """See the module docstring."""

    def __init__(self, session):
        self.session = session
        self.functions: dict[str, bytes] = {}
        self.tasks: dict[str, PendingTask] = {}
        self.queues: dict[tuple, collections.deque] = {}
        self.leases: dict[tuple, list[Lease]] = {}
        self.lease_requests: dict[int, tuple] = {}
        self.links: dict[str, WorkerLink] = {}
        self.death_info: dict[str, str] = {}
        self.awaiting_death: dict[str, list] = {}  # worker id -> leases whose tasks wait for why it died
        self.durations: dict[str, float] = {}
        self.result_handlers: dict[str, object] = {}
        self._options_cache: dict[int, tuple] = {}
        self.lineage: collections.OrderedDict[str, PendingTask] = collections.OrderedDict()
        self.activating: dict[tuple, int] = {}  # leases granted whose worker link is still opening

    # ---- caller thread --------------------------------------------------------------------

    def submit(self, function_id: str, function_bytes: bytes, name: str, args, kwargs, options):
        session = self.session
        self.functions.setdefault(function_id, function_bytes)
        task_id = new_id(12)
        data, deps, nested = pack_args(session, args, kwargs, f"{name}()")
        session.escape(nested)
        session.escape(deps)
        return_ids = [return_id(task_id, i) for i in range(options.num_returns)]
        refs = [session.new_owned(rid, task_id) for rid in return_ids]
        retriable = options.max_retries != 0
        job_id = getattr(session.current_task, "job_id", None) or session.job_id  # a task's children share its job
        spec = P.ExecuteTask(task_id, function_id, b"", data, return_ids, name, session.client_id,
                             job_id, retriable=retriable)
        shape, strategy = self._shape_and_strategy(options)
        spec.resources = shape
        env, env_key = session.worker_env(options.runtime_env)
        key = (tuple(sorted(shape.items())), env_key, strategy, "")
        task = PendingTask(spec, key, deps, nested, options, shape, strategy)
        task.env = env
        session.remember_context(task_id)
        children = getattr(session.current_task, "children", None)
        if children is not None:
            children.append(task_id)
        session.post(self._submit, task)
        return refs

    def _shape_and_strategy(self, options) -> tuple[dict, tuple]:
        cached = self._options_cache.get(id(options))
        if cached is None or cached[0] is not options:
            shape = resource_shape(options.num_cpus, options.num_gpus, options.resources, options.memory)
            cached = (options, shape, strategy_fields(options.scheduling_strategy))
            self._options_cache[id(options)] = cached
        return cached[1], cached[2]

    # ---- dependency resolution ------------------------------------------------------------

    def _submit(self, task: PendingTask) -> None:
        self.tasks[task.spec.task_id] = task
        events = self.session.events
        if events.enabled:
            events.task_submitted(task.spec.task_id, task.name, tuple(d.hex() for d in task.deps) if task.deps else ())
        task.dep_sources = [self.session.readiness(d) for d in task.deps] if task.deps else ()
        waiting = [f for f in task.dep_sources if not f.done()]
        if not waiting:
            self._args_ready(task)
            return
        remaining = [len(waiting)]
        for fut in waiting:
            fut.add_done_callback(lambda _f: self.session.run_on_loop(self._dep_done, task, remaining))

    def _dep_done(self, task: PendingTask, remaining: list) -> None:
        remaining[0] -= 1
        if remaining[0] == 0 and self.tasks.get(task.spec.task_id) is task:
            self._args_ready(task)

    def _args_ready(self, task: PendingTask) -> None:
        if not task.deps:
            self._enqueue(task, announce=False)
            return
        inline = []
        for dep, src in zip(task.deps, task.dep_sources):
            error = self._dep_error(dep, src)
            if error is not None:
                self._fail(task, error)
                return
            entry = self.session.owned.get(dep.hex())
            inline.append([dep.hex(), entry.inline if entry is not None and entry.inline else b""])
        task.spec.arg_refs = inline
        preferred = self._preferred_node(task)
        if preferred and task.strategy[0] == "DEFAULT":
            task.key = task.key[:3] + (preferred,)
        self._enqueue(task)

    def _preferred_node(self, task: PendingTask) -> str:
        """The node holding the largest stored argument: run there so the data does not move."""
        best, size = "", 0
        for dep in task.deps:
            entry = self.session.owned.get(dep.hex())
            if entry is not None and entry.in_store and entry.node and entry.size > size:
                best, size = entry.node, entry.size
        return best

    def _dep_error(self, dep, src):
        entry = self.session.owned.get(dep.hex())
        if entry is not None:
            return entry.error
        result = src.result() if src.exception() is None else None
        return result[1] if result and result[0] == "error" else None

    # ---- queues and leases ----------------------------------------------------------------

    def _enqueue(self, task: PendingTask, announce: bool = True) -> None:
        """Queue ``task`` for a worker. Unless told not to (a task without arguments to wait
        for, whose SUBMITTED says as much), the feed hears that it now waits for one."""
        queue = self.queues.setdefault(task.key, collections.deque())
        queue.append(task)
        self._pump(task.key)
        if announce and task.lease is None and self.session.events.enabled:
            self.session.events.add("task", task.spec.task_id, "PENDING_NODE", {"name": task.name})

    def _depth(self, task: PendingTask) -> int:
        avg = self.durations.get(task.spec.function_id)
        return DEEP_PIPELINE if avg is not None and avg < SHORT_TASK_SECONDS else 1

    def _has_room(self, lease: Lease, task: PendingTask) -> bool:
        """Queue behind busy work only when it and everything in flight there is known short:
        a short task pipelined behind a long one would wait for it while other workers idle.
        A SPREAD lease takes one task only, so every task is placed afresh."""
        if lease.revoked:
            return False
        if lease.key[2][0] == "SPREAD":
            return lease.dispatched == 0
        if not lease.in_flight:
            return True
        depth = min(self._depth(t) for t in (task, *lease.in_flight.values()))
        return len(lease.in_flight) < depth

    def _pump(self, key) -> None:
        queue = self.queues.get(key)
        for lease in list(self.leases.get(key, ())):
            while queue and not lease.dead and self._has_room(lease, queue[0]):
                self._dispatch(lease, queue.popleft())
            spent = (key[2][0] == "SPREAD" and lease.dispatched) or lease.revoked
            if not lease.in_flight and (not queue or spent):
                self._schedule_release(lease, immediately=bool(spent))
        if queue:
            self._request_leases(key, len(queue))
        else:
            self._cancel_lease_requests(key)

    def _request_leases(self, key, queued: int) -> None:
        outstanding = sum(1 for k in self.lease_requests.values() if k == key) + self.activating.get(key, 0)
        for _ in range(min(queued, MAX_LEASE_REQUESTS) - outstanding):
            rid = next(self.session.request_ids)
            self.lease_requests[rid] = key
            shape, env_key, (kind, node, soft), preferred = dict(key[0]), key[1], key[2], key[3]
            env = self.queues[key][0].env
            self.session.node.send(P.RequestLease(rid, shape, env_key, pickle.dumps(env) if env else b"",
                                                  kind, node, soft, preferred))

    def _cancel_lease_requests(self, key) -> None:
        for rid in [r for r, k in self.lease_requests.items() if k == key]:
            del self.lease_requests[rid]
            self.session.node.send(P.CancelLeaseRequest(rid))

    def on_lease_granted(self, msg: P.LeaseGranted) -> None:
        key = self.lease_requests.pop(msg.request_id, None)
        if key is None or not self.queues.get(key):
            self.session.node.send(P.ReturnLease(msg.lease_id))
            return
        link = self.link_for(msg.address)
        lease = Lease(msg, key, link)
        self.activating[key] = self.activating.get(key, 0) + 1
        background.start(self.session.loop, self._activate(lease))

    async def _activate(self, lease: Lease) -> None:
        try:
            await asyncio.shield(lease.link.ready)
            reachable = not lease.link.closed  # the link may have died while this grant was on its way
        except Exception as exc:  # noqa: BLE001 - the worker vanished before we connected
            log.debug("lease %s: cannot reach worker: %s", lease.lease_id, exc)
            reachable = False
        finally:
            self.activating[lease.key] -= 1
        if reachable:
            self.leases.setdefault(lease.key, []).append(lease)
        else:
            self.session.node.send(P.ReturnLease(lease.lease_id))
        self._pump(lease.key)

    def on_lease_revoked(self, msg: P.LeaseRevoked) -> None:
        """The lease's node is draining: dispatch nothing more to it, return it once idle."""
        for leases in list(self.leases.values()):
            for lease in leases:
                if lease.lease_id == msg.lease_id:
                    lease.revoked = True
                    self._pump(lease.key)
                    return

    def on_lease_failed(self, msg: P.LeaseFailed) -> None:
        key = self.lease_requests.pop(msg.request_id, None)
        queue = self.queues.get(key) if key else None
        while queue:
            self._fail(queue.popleft(), msg.error)

    def _schedule_release(self, lease: Lease, immediately: bool = False) -> None:
        if immediately:
            self._release_if_idle(lease, True)
        elif lease.idle_timer is None:
            lease.idle_timer = self.session.loop.call_later(LEASE_IDLE_SECONDS, self._release_if_idle, lease)

    def _release_if_idle(self, lease: Lease, force: bool = False) -> None:
        lease.idle_timer = None
        if lease.in_flight or lease.dead or (self.queues.get(lease.key) and not force):
            return
        if lease not in self.leases.get(lease.key, ()):
            return
        self.leases[lease.key].remove(lease)
        self.session.node.send(P.ReturnLease(lease.lease_id))

    # ---- dispatch and results -------------------------------------------------------------

    def _dispatch(self, lease: Lease, task: PendingTask) -> None:
        if lease.idle_timer is not None:
            lease.idle_timer.cancel()
            lease.idle_timer = None
        spec, link = task.spec, lease.link
        spec.gpu_ids = lease.gpu_ids  # this lease's (a retry may run on another)
        if spec.function_id not in link.functions_sent:
            link.functions_sent.add(spec.function_id)
            spec = _with_function(spec, self.functions[spec.function_id])
        lease.in_flight[task.spec.task_id] = task
        lease.dispatched += 1
        task.lease = lease
        self.result_handlers[task.spec.task_id] = self._on_task_result
        link.conn.send(spec)

    def _on_task_result(self, msg: P.TaskResult) -> None:
        task = self.tasks.get(msg.task_id)
        if task is None or task.lease is None:
            return
        lease = task.lease
        lease.in_flight.pop(msg.task_id, None)
        task.lease = None
        self._note_duration(task, msg)
        if msg.error and self._retry_on_error(task, msg.error):
            self._enqueue(task)
        else:
            task.where = (lease.node_id, lease.worker_id, lease.pid)
            self._finish(task, msg)
        self._pump(lease.key)

    def _note_duration(self, task: PendingTask, msg: P.TaskResult) -> None:
        """A running average per function, which decides whether its tasks may queue behind
        others on a worker. A cancelled run says nothing of how long the function takes."""
        if task.cancelled:
            return
        took = max(0.0, msg.end - msg.start)
        prev = self.durations.get(task.spec.function_id)
        self.durations[task.spec.function_id] = took if prev is None else 0.8 * prev + 0.2 * took

    def _retry_on_error(self, task: PendingTask, error: bytes) -> bool:
        if task.cancelled or task.retries_left == 0 or not task.retry_exceptions or error[:1] != b"T":
            return False
        if task.retry_exceptions is not True:
            from .session import decode_error
            cause = getattr(decode_error(error), "cause", None)
            if not isinstance(cause, tuple(task.retry_exceptions)):
                return False
        task.retries_left -= 1
        return True

    def _finish(self, task: PendingTask, msg: P.TaskResult) -> None:
        self.tasks.pop(msg.task_id, None)
        self.result_handlers.pop(msg.task_id, None)
        self.session.complete_returns(task.spec.return_ids, msg)
        if not msg.error:
            self._remember_lineage(task, msg.returns)
        state = "FAILED" if msg.error else "FINISHED"
        events = self.session.events
        if events.enabled:  # the owner reports its tasks' ends: the result says when, the lease where
            if state == "FINISHED" and task.where:
                events.task_returned(msg.task_id, task.name, msg.start, msg.end, task.where)
            else:
                events.task_ended(msg.task_id, state, task.name, msg.start, msg.end, msg.error, task.where)
        self.session.task_finished(msg.task_id, task.name, state, msg.start, msg.end, task.where)

    # ---- lineage: rebuilding objects lost with a node --------------------------------------

    def _remember_lineage(self, task: PendingTask, returns: list) -> None:
        """Keep the spec (and so its arguments) of tasks whose results live in a store."""
        for ret in returns:
            if ret.in_store:
                self.lineage[ret.object_id] = task
                self.lineage.move_to_end(ret.object_id)
        while len(self.lineage) > LINEAGE_LIMIT:
            self.lineage.popitem(last=False)

    def can_rebuild(self, object_id: str) -> bool:
        task = self.lineage.get(object_id)
        return task is not None and task.retries_left != 0

    def rebuild(self, object_id: str) -> None:
        """Re-run the task that made ``object_id``, first rebuilding its lost stored arguments."""
        task = self.lineage.get(object_id)
        if task is None or task.spec.task_id in self.tasks:
            return  # gone, or already being rebuilt
        task.retries_left -= 1 if task.retries_left > 0 else 0
        log.warning("rebuilding %s: re-running %s() (its result was lost with a node)", object_id, task.name)
        for rid in task.spec.return_ids:
            self._reset_entry(rid)
        self.tasks[task.spec.task_id] = task  # marks it as rebuilding
        stored = [d.hex() for d in task.deps if self._stored(d.hex())]
        remaining = [len(stored)]
        if not stored:
            self._resubmit(task)
        for dep in stored:
            probe = self.session._locate(dep, pin=False, node_hint=self.session.owned[dep].node)
            probe.add_done_callback(lambda f, d=dep: self.session.post(self._probed, task, d, f, remaining))

    def _stored(self, object_id: str) -> bool:
        entry = self.session.owned.get(object_id)
        return entry is not None and entry.in_store and entry.ready.done()

    def _probed(self, task: PendingTask, dep: str, fut, remaining: list) -> None:
        source = fut.result()
        if source[0] == "error" and self.can_rebuild(dep):
            self.rebuild(dep)
        remaining[0] -= 1
        if remaining[0] == 0:
            self._resubmit(task)

    def _resubmit(self, task: PendingTask) -> None:
        del self.tasks[task.spec.task_id]
        self._submit(task)

    def _reset_entry(self, object_id: str) -> None:
        entry = self.session.owned.get(object_id)
        if entry is not None:
            entry.ready = LightFuture()
            entry.inline, entry.in_store, entry.error, entry.node = None, False, None, ""

    def _fail(self, task: PendingTask, error: bytes) -> None:
        self._finish(task, P.TaskResult(task.spec.task_id, error=error, start=time.time(), end=time.time()))

    # ---- worker links ---------------------------------------------------------------------

    def link_for(self, address: str) -> WorkerLink:
        link = self.links.get(address)
        if link is None or link.closed:
            link = self.links[address] = WorkerLink(address)
            background.start(self.session.loop, self._open_link(link))
        return link

    async def _open_link(self, link: WorkerLink) -> None:
        session = self.session
        try:
            sock, _welcome, _fds = await session.loop.run_in_executor(
                None, wire.connect, link.address, session.token, "owner")
            link.conn = await wire.Connection.adopt(sock, f"worker {link.address}")
        except Exception as exc:  # noqa: BLE001
            link.closed = True
            link.ready.set_exception(exc)
            link.ready.exception()
            return
        link.ready.set_result(True)
        await link.conn.run(lambda m: self._on_link_message(link, m))
        self._on_link_lost(link)

    def _on_link_message(self, link: WorkerLink, msg: P.Msg) -> None:
        if isinstance(msg, P.TaskResult):
            handler = self.result_handlers.get(msg.task_id)
            if handler is not None:
                handler(msg)
        elif isinstance(msg, P.OutputLines):
            self.session.deliver_output(msg)

    def _on_link_lost(self, link: WorkerLink) -> None:
        link.closed = True
        if self.links.get(link.address) is link:
            del self.links[link.address]
        self.session.actors.on_link_lost(link)
        for key, leases in self.leases.items():
            for lease in [lease for lease in leases if lease.link is link]:
                leases.remove(lease)
                lease.dead = True
                self._await_death_info(lease)

    def _await_death_info(self, lease: Lease) -> None:
        if not lease.in_flight:
            return
        if lease.worker_id in self.death_info:
            self._worker_failed(lease)
        else:
            self.awaiting_death.setdefault(lease.worker_id, []).append(lease)
            self.session.loop.call_later(DEATH_INFO_WAIT, self._worker_failed, lease)

    def on_worker_died(self, msg: P.WorkerDied) -> None:
        self.death_info[msg.worker_id] = msg.description
        self._close_links_to(msg.worker_id)
        for lease in self.awaiting_death.pop(msg.worker_id, ()):
            self._worker_failed(lease)  # the later timer finds nothing left in flight
        self.session.actors.on_worker_died(msg)

    def _close_links_to(self, worker_id: str) -> None:
        """A worker reported dead (e.g. its node was cut off): drop our link to it now, so a
        late, stale result can never arrive on it; its tasks are retried or failed."""
        for leases in self.leases.values():
            for lease in leases:
                if lease.worker_id == worker_id and lease.link.conn is not None and not lease.link.closed:
                    lease.link.conn.close()

    def _worker_failed(self, lease: Lease) -> None:
        self.awaiting_death.pop(lease.worker_id, None)
        desc = self.death_info.get(lease.worker_id, "the connection to it was lost (exit status unknown)")
        tasks, lease.in_flight = list(lease.in_flight.values()), {}
        for task in tasks:
            task.lease = None
            self._task_lost_worker(task, lease, desc)
        self._pump(lease.key)

    def _task_lost_worker(self, task: PendingTask, lease: Lease, desc: str) -> None:
        from .session import encode_system_error
        if task.cancelled:
            self._fail(task, encode_system_error(TaskCancelledError(task.spec.task_id)))
        elif task.retries_left != 0:
            task.retries_left -= 1
            log.warning("worker pid=%s running %s() died (%s); retrying the task", lease.pid, task.name, desc)
            self._enqueue(task)
        else:
            err = WorkerCrashedError(
                f"the worker (pid={lease.pid}, node={lease.node_id[:8]}) running {task.name}() died: "
                f"{desc}. The task was not retried further (max_retries exhausted).")
            self._fail(task, encode_system_error(err))

    # ---- cancellation ---------------------------------------------------------------------

    def cancel(self, task_id: str, force: bool) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        task.cancelled = True
        from .session import encode_system_error
        queue = self.queues.get(task.key)
        if task.lease is None:
            if queue and task in queue:
                queue.remove(task)
            self._fail(task, encode_system_error(TaskCancelledError(task_id)))
            return
        task.lease.link.conn.send(P.CancelTask(task_id, force))

    def on_node_lost(self) -> None:
        from .session import encode_system_error
        from .exceptions import NodeDiedError
        err = encode_system_error(NodeDiedError("the node agent exited: the cluster is gone"))
        for task in list(self.tasks.values()):
            self._fail(task, err)

    def close(self) -> None:
        for link in list(self.links.values()):
            if link.conn is not None:
                link.conn.close()


def _with_function(spec: P.ExecuteTask, function: bytes) -> P.ExecuteTask:
    import msgspec
    return msgspec.structs.replace(spec, function=function)
