"""A process's link to its cluster: the I/O thread, reference counts, owned objects, get/put/wait.

    caller threads (notebook, user)          nebula-io thread (one asyncio loop)
    ───────────────────────────────          ─────────────────────────────────────
    put/submit/get/wait ── _post(fn) ──────► node link: leases, store, refs, actors
           ▲                                 task links: ExecuteTask ► / ◄ TaskResult
           └──── concurrent futures ◄──────── handlers resolve futures, never block

Every process that uses the API (a driver, or a worker running tasks that submit tasks)
has one Session. It *owns* what it creates (Ray's ownership model): results of the tasks it
submits and the values it puts live in its table until their last reference is dropped.
Small values stay inline here; large ones and any that escape to another process live in
the node's shared-memory store, found through the node agent.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import pickle
import queue
import sys
import threading
import time
import weakref

from . import output
from . import protocol as P
from . import wire
from .events import EventRecorder
from .exceptions import (GetTimeoutError, NebulaError, ObjectLostError, ObjectStoreFullError,
                         restore_task_error)
from .ids import new_id
from .light_future import LightFuture
from .options import runtime_env_key
from .object_ref import ObjectRef
from .serialization import SerializedObject, deserialize, serialize
from .store_arena import Arena

log = logging.getLogger("nebula.session")

INLINE_LIMIT = 100 * 1024
RELAY_CHUNK = 4 * 2**20
NOWHERE = ("", "", 0)  # the (node, worker, pid) of a task that never ran
_session: "Session | None" = None
_session_lock = threading.RLock()


def current_session_or_none() -> "Session | None":
    return _session


def current_session() -> "Session":
    if _session is None:
        from .api import _auto_init
        return _auto_init()
    _session.check_fork()
    return _session


def set_current_session(session: "Session | None") -> None:
    global _session
    _session = session


# ---- error payloads: b"T"+task error | b"S"+pickled system error ---------------------------

def encode_system_error(exc: BaseException) -> bytes:
    return b"S" + pickle.dumps(exc)


def decode_error(payload: bytes) -> BaseException:
    if payload[:1] == b"S":
        return pickle.loads(payload[1:])
    return restore_task_error(payload[1:])


class ObjectEntry:
    """An object this process owns: pending, or ready inline / in the store, or failed."""

    __slots__ = ("ready", "inline", "in_store", "error", "escaped", "task_id", "size", "node")

    def __init__(self, task_id: str = ""):
        self.ready = LightFuture()  # drops its callbacks once they ran (they may hold ObjectRefs)
        self.inline: bytes | None = None
        self.in_store = False
        self.error: bytes | None = None
        self.escaped = False
        self.task_id = task_id
        self.size = 0
        self.node = ""


class Session:
    """The client side of one process: see the module docstring."""

    def __init__(self, address: str, token: bytes, *, kind: str = "driver", worker_id: str = "",
                 job_id: str = "", namespace: str = "", tcp_address: str = ""):
        self.address, self.token, self.kind = address, token, kind
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.refs: dict[str, int] = {}
        self.owned: dict[str, ObjectEntry] = {}
        self.requests: dict[int, concurrent.futures.Future] = {}
        self.request_ids = itertools.count(1)
        self._inbox: collections.deque = collections.deque()
        self._wakeup_pending = False
        self.closed = False
        self.task_contexts: dict[str, object] = {}
        self.task_log: collections.deque = collections.deque(maxlen=100000)
        self.current_task = threading.local()
        self.worker_inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.namespace = namespace
        self.inherited_env: dict = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nebula-io", daemon=True)
        self._thread.start()
        self._connect_node(address, token, kind)
        self.events = EventRecorder(self)
        reg = self.request_sync(lambda rid: P.RegisterClient(kind, os.getpid(), worker_id, job_id, namespace, tcp_address), rid_field=False)
        self._apply_registration(reg)
        from .task_submitter import TaskSubmitter
        from .actor_caller import ActorCaller
        self.tasks = TaskSubmitter(self)
        self.actors = ActorCaller(self)

    # ---- connection and loop plumbing -----------------------------------------------------

    def _connect_node(self, address: str, token: bytes, kind: str) -> None:
        sock, welcome, fds = wire.connect(address, token, kind)
        self.node_id = welcome.node_id
        self._store_fd = fds[0] if fds else None
        self.node = self.run_in_loop(wire.Connection.adopt(sock, "node"))
        self.registration: concurrent.futures.Future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._start_node_reader)

    def _start_node_reader(self) -> None:
        self._node_task = self.loop.create_task(self.node.run(self._on_node_message))
        self._node_task.add_done_callback(lambda _t: self._on_node_lost())

    def _apply_registration(self, reg: P.Registered) -> None:
        self.client_id, self.job_id = reg.client_id, reg.job_id
        self.session_dir, self.config = reg.session_dir, reg.config
        self.store_capacity = reg.store_capacity
        self.arena = Arena.attach(self._store_fd, reg.store_capacity) if self._store_fd is not None else None
        self.store_view = self.arena.view() if self.arena else None

    def run_in_loop(self, coro, timeout: float | None = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread soon; cheap and callable from any thread."""
        self._inbox.append((fn, args))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:
                pass  # loop closed: the session is shutting down

    def run_on_loop(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the I/O thread: now if already there (a dependency finishing
        there unblocks its dependents without another loop turn), else soon."""
        if threading.get_ident() == self._thread.ident:
            fn(*args)
        else:
            self.post(fn, *args)

    def _drain_inbox(self) -> None:
        self._wakeup_pending = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox[0]  # taken off only once it ran: see quiet()
            try:
                fn(*args)
            except Exception:  # one bad callback must not stop the I/O thread
                log.exception("internal error in %s", getattr(fn, "__name__", fn))
            finally:
                inbox.popleft()

    def quiet(self) -> bool:
        """Everything posted to the I/O thread so far has run, and all it sent the node has left
        this process: a message another thread now writes straight to a socket cannot overtake
        any of it (e.g. a result reaching its owner before the node learns the result is stored)."""
        return not self._inbox and self.node.idle()

    def request(self, make_msg) -> concurrent.futures.Future:
        """Send ``make_msg(request_id)`` to the node; the future gets the reply."""
        rid = next(self.request_ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.requests[rid] = fut
        self.send_node_soon(make_msg(rid))
        return fut

    def request_sync(self, make_msg, timeout: float = 30.0, rid_field: bool = True):
        if not rid_field:
            self.post(self._send_node, make_msg(0))
            return self.registration.result(timeout)
        return self.request(make_msg).result(timeout)

    def _send_node(self, msg: P.Msg) -> None:
        self.node.send(msg)

    def send_node(self, msg: P.Msg) -> None:
        self.post(self._send_node, msg)

    def send_node_soon(self, msg: P.Msg) -> None:
        """``send_node``, but straight from this thread when that keeps the order (``quiet()``):
        a request then costs no wake-up of the I/O thread on its way out."""
        if self.quiet():
            self.node.send_threadsafe(msg)
        else:
            self.post(self._send_node, msg)

    # ---- node messages (I/O thread) -------------------------------------------------------

    def _on_node_message(self, msg: P.Msg) -> None:
        handler = self._node_handlers().get(type(msg))
        if handler is None:
            log.warning("unexpected %s from the node agent", type(msg).__name__)
            return
        handler(msg)

    def _node_handlers(self):
        handlers = getattr(self, "_handlers", None)
        if handlers is None:
            handlers = self._handlers = {
                P.Registered: lambda m: self.registration.set_result(m),
                P.Allocated: self._resolve_request,
                P.ObjectLocation: self._resolve_request,
                P.ObjectChunk: self._on_relayed_chunk,
                P.StateReply: self._resolve_request,
                P.RefsAck: self._resolve_request,
                P.LeaseGranted: lambda m: self.tasks.on_lease_granted(m),
                P.LeaseFailed: lambda m: self.tasks.on_lease_failed(m),
                P.WorkerDied: lambda m: self.tasks.on_worker_died(m),
                P.LeaseRevoked: lambda m: self.tasks.on_lease_revoked(m),
                P.ActorInfo: lambda m: self.actors.on_actor_info(m),
                P.NamedActorReply: self._resolve_request,
                P.ActorCreateReply: lambda m: self.actors.on_create_reply(m),
                P.FeedControl: lambda m: self.events.set_enabled(m.enabled, m.others),
                P.EventBatch: lambda m: self.events.deliver(m.events),
                P.BecomeActor: lambda m: self.worker_inbox.put(("actor", m, None)),
                P.Retire: lambda m: self.worker_inbox.put(("retire", m, None)),
                P.LeaseInfeasible: lambda m: log.warning(m.message),
            }
            handlers.update(getattr(self, "extra_node_handlers", {}))
        return handlers

    def _on_relayed_chunk(self, msg: P.ObjectChunk) -> None:
        parts = self.__dict__.setdefault("_relayed", {})
        buffer = parts.setdefault(msg.pull_id, bytearray(msg.total))
        buffer[msg.offset:msg.offset + len(msg.data)] = msg.data
        if msg.offset + len(msg.data) >= msg.total:
            del parts[msg.pull_id]
            fut = self.requests.pop(msg.pull_id, None)
            if fut is not None and not fut.done():
                fut.set_result(buffer)

    def _resolve_request(self, msg) -> None:
        fut = self.requests.pop(msg.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_node_lost(self) -> None:
        if self.closed:
            return
        err = ConnectionError("lost the connection to the Nebula node agent (it exited or was killed)")
        for fut in list(self.requests.values()):
            if not fut.done():
                fut.set_exception(err)
        self.requests.clear()
        if not self.registration.done():
            self.registration.set_exception(err)
        self.tasks.on_node_lost() if hasattr(self, "tasks") else None
        if self.kind == "worker":
            os._exit(1)

    # ---- reference counting ---------------------------------------------------------------

    def add_local_ref(self, object_id: str, owner: str) -> None:
        with self.lock:
            count = self.refs.get(object_id, 0)
            self.refs[object_id] = count + 1
        if count == 0 and owner != self.client_id and object_id not in self.owned:
            self.post(self._send_node, P.AddRefs([object_id]))

    def remove_local_ref(self, object_id: str) -> None:
        if self.closed:
            return
        with self.lock:
            count = self.refs.get(object_id, 0)
            if count > 1:
                self.refs[object_id] = count - 1
                return
            entry = self.owned.get(object_id)
            if count == 1 and entry is not None and entry.ready.done() and not entry.in_store \
                    and not entry.escaped and (entry.task_id or not self.events.enabled):
                # an inline value nobody else knows of: forget it here, no need to wake the I/O thread
                del self.refs[object_id]
                del self.owned[object_id]
                return
        self.post(self._release_ref, object_id)

    def _release_ref(self, object_id: str) -> None:
        with self.lock:
            count = self.refs.get(object_id, 0) - 1
            if count > 0:
                self.refs[object_id] = count
                return
            self.refs.pop(object_id, None)
            entry = self.owned.pop(object_id, None)
        if entry is None or entry.in_store or entry.escaped:
            self.node.send(P.RemoveRefs([object_id]))
        if entry is not None and not entry.task_id:
            self.events.object_freed(object_id)  # a put's end (its CREATED was recorded); the node
            # reports stored task results itself, and inline ones never reach the feed

    def borrow_ref(self, object_id: str, owner: str) -> ObjectRef:
        ref = ObjectRef(object_id, owner, self)
        borrowed = getattr(self.current_task, "borrowed", None)
        if borrowed is not None:
            borrowed.append(object_id)
        return ref

    def confirm_borrows(self) -> None:
        """Block until the node has counted every ref this thread deserialized (see worker)."""
        self.request(lambda rid: P.AddRefs([], request_id=rid)).result(30)

    # ---- owned objects --------------------------------------------------------------------

    def new_owned(self, object_id: str, task_id: str = "") -> ObjectRef:
        entry = ObjectEntry(task_id)
        with self.lock:
            self.owned[object_id] = entry
        return ObjectRef(object_id, self.client_id, self)

    def put(self, value, object_id: str | None = None) -> ObjectRef:
        obj = serialize(value)
        object_id = object_id or new_id(14)
        ref = self.new_owned(object_id)
        entry = self.owned[object_id]
        if obj.total_size <= INLINE_LIMIT and not obj.contained:
            entry.inline, entry.size = obj.to_bytes(), obj.total_size
        else:
            self.escape(obj.contained)
            self.write_to_store(object_id, obj, self.client_id)
            entry.in_store, entry.size, entry.node = True, obj.total_size, self.node_id
        entry.ready.set_result(True)
        self.events.object_created(object_id, entry.size, entry.in_store)
        return ref

    def write_to_store(self, object_id: str, obj: SerializedObject, owner: str) -> None:
        """Allocate, copy and seal ``obj`` in the node's store (blocking; not on the I/O thread)."""
        if self.store_view is None:
            buffer = bytearray(obj.total_size)
            obj.write_into(memoryview(buffer))
            self.post(self.relay_put, object_id, memoryview(buffer), owner, [r.hex() for r in obj.contained])
            return
        reply = self.request(lambda rid: P.AllocObject(rid, object_id, obj.total_size, owner)).result()
        if reply.error:
            raise ObjectStoreFullError(reply.error)
        obj.write_into(self.store_view[reply.offset:reply.offset + obj.total_size])
        self.send_node(P.SealObject(object_id, [r.hex() for r in obj.contained]))

    def escape(self, refs) -> None:
        """Refs of ours are about to leave this process: make them findable through the node."""
        for ref in refs:
            entry = self.owned.get(ref.hex())
            if entry is not None and not entry.escaped:
                entry.escaped = True
                self.post(self._publish_escaped, ref.hex(), entry)

    def _publish_escaped(self, object_id: str, entry: ObjectEntry) -> None:
        if entry.in_store:
            return
        self.node.send(P.DeclareObject(object_id))
        if entry.ready.done():
            self.publish_value(object_id, entry)

    def publish_value(self, object_id: str, entry: ObjectEntry) -> None:
        """Copy an escaped inline value (or its error) into the store (I/O thread)."""
        if entry.error is not None:
            self.node.send(P.FailObject(object_id, entry.error))
            return
        data = entry.inline
        if self.store_view is None:
            self.relay_put(object_id, memoryview(data), self.client_id, [])
            return
        rid = next(self.request_ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.requests[rid] = fut
        self.node.send(P.AllocObject(rid, object_id, len(data), self.client_id))
        fut.add_done_callback(lambda f: self.post(self._finish_publish, object_id, data, f))

    def relay_put(self, object_id: str, data: memoryview, owner: str, contained: list) -> None:
        """Send an object to the node in chunks (this process cannot map the node's store)."""
        total = len(data)
        for start in range(0, max(total, 1), RELAY_CHUNK):
            chunk = bytes(data[start:start + RELAY_CHUNK])
            last = start + RELAY_CHUNK >= total
            self.node.send(P.PutChunk(object_id, owner, start, total, chunk, contained if last else []))

    def _finish_publish(self, object_id: str, data: bytes, fut) -> None:
        reply = fut.result()
        if reply.error:
            self.node.send(P.FailObject(object_id, encode_system_error(ObjectStoreFullError(reply.error))))
            return
        self.store_view[reply.offset:reply.offset + len(data)] = data
        self.node.send(P.SealObject(object_id, []))

    def complete_returns(self, return_ids: list, msg: P.TaskResult) -> None:
        """A task or actor call ended: its error, or each returned value, completes its refs."""
        if msg.error:
            for rid in return_ids:
                self.complete_object(rid, error=msg.error)
            return
        for ret in msg.returns:
            self.complete_object(ret.object_id, inline=ret.inline or None, in_store=ret.in_store,
                                 size=ret.size, node=ret.node_id)

    def complete_object(self, object_id: str, *, inline: bytes | None = None, in_store: bool = False,
                        size: int = 0, error: bytes | None = None, node: str = "") -> None:
        """A task result arrived for ``object_id`` (I/O thread)."""
        entry = self.owned.get(object_id)
        if entry is None:
            if in_store:
                self.node.send(P.RemoveRefs([object_id]))
            return
        if entry.ready.done():
            return
        entry.inline, entry.in_store, entry.error, entry.size = inline, in_store, error, size
        entry.node = node
        if entry.escaped and not in_store:
            self.publish_value(object_id, entry)
        entry.ready.set_result(True)

    # ---- reading values -------------------------------------------------------------------

    def value_source(self, ref: ObjectRef) -> concurrent.futures.Future:
        """A future of ("inline", bytes) | ("store", offset, size) | ("error", payload)."""
        entry = self.owned.get(ref.hex())
        if entry is None:
            return self._locate(ref.hex(), pin=True)
        out = LightFuture()
        entry.ready.add_done_callback(lambda _f: self._source_from_entry(ref.hex(), entry, out))
        return out

    def _ready_inline(self, ref: ObjectRef):
        """A done future for an owned, ready, inline value (the common fast path), else None."""
        entry = self.owned.get(ref.hex())
        if entry is None or not entry.ready.done() or entry.in_store:
            return None
        return LightFuture.completed(("error", entry.error) if entry.error is not None else ("inline", entry.inline))

    def _source_from_entry(self, object_id: str, entry: ObjectEntry, out) -> None:
        if entry.error is not None:
            out.set_result(("error", entry.error))
        elif entry.in_store:
            self._locate(object_id, pin=True, node_hint=entry.node).add_done_callback(
                lambda f: self._located_or_rebuilt(object_id, entry, f, out))
        else:
            out.set_result(("inline", entry.inline))

    def _located_or_rebuilt(self, object_id: str, entry: ObjectEntry, fut, out) -> None:
        """A stored result lost with its node is rebuilt from lineage, then read again."""
        source = fut.result() if fut.exception() is None else ("error", encode_system_error(fut.exception()))
        if source[0] == "error" and source[1][:1] == b"S" and self.tasks.can_rebuild(object_id) and \
                isinstance(decode_error(source[1]), ObjectLostError):
            self.post(self._rebuild_then_read, object_id, entry, out)
        else:
            out.set_result(source)

    def _rebuild_then_read(self, object_id: str, entry: ObjectEntry, out) -> None:
        self.tasks.rebuild(object_id)
        entry.ready.add_done_callback(lambda _f: self._source_from_entry(object_id, entry, out))

    def _locate(self, object_id: str, pin: bool, node_hint: str = "") -> concurrent.futures.Future:
        """Ask the node where ``object_id`` is (``node_hint``: where this owner heard it was sealed)."""
        out = LightFuture()
        fut = self.request(lambda rid: P.GetObject(rid, object_id, pin, node_hint))  # unmapped store: pin = send bytes
        fut.add_done_callback(lambda f: _location_to_source(f, out))
        return out

    def readiness(self, ref: ObjectRef) -> concurrent.futures.Future:
        entry = self.owned.get(ref.hex())
        return entry.ready if entry is not None else self._locate(ref.hex(), pin=False)

    def materialize(self, object_id: str, source) -> object:
        kind = source[0]
        if kind == "inline":
            return deserialize(source[1])
        if kind == "error":
            raise decode_error(source[1])
        _, offset, size = source
        return self._read_store(object_id, offset, size)

    def _read_store(self, object_id: str, offset: int, size: int):
        release = _PinRelease(self, object_id)
        view = self.store_view[offset:offset + size].toreadonly()
        value = deserialize(view, release.hold)
        release.settle()
        return value

    def get(self, refs: list, timeout: float | None, *, lend_cpu: bool = True):
        """``lend_cpu=False`` for a task's own arguments: they already exist, so fetching them
        must not lend the task's CPU (the node would start another task on it meanwhile)."""
        sources = [self._ready_inline(r) or self.value_source(r) for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        observer = output.wait_observer()
        lending = self.blocked_in_get() if lend_cpu else contextlib.nullcontext()
        with lending, self.cancel_on_interrupt(refs):
            for ref, src in zip(refs, sources):
                self._await_future(src, deadline, ref, observer, refs)
        return [self.materialize(r.hex(), s.result()) for r, s in zip(refs, sources)]

    def value_future(self, ref: ObjectRef) -> concurrent.futures.Future:
        """A future of ``ref``'s value or error (``ObjectRef.future()``, ``await ref``).

        Values are rebuilt on a helper thread: unpickling runs user code, which may call get()."""
        out: concurrent.futures.Future = concurrent.futures.Future()

        def resolve(source: concurrent.futures.Future) -> None:
            try:
                out.set_result(self.materialize(ref.hex(), source.result()))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the future
                out.set_exception(exc)
        self.value_source(ref).add_done_callback(lambda f: self._materializer().submit(resolve, f))
        return out

    def _materializer(self) -> concurrent.futures.ThreadPoolExecutor:
        with self.lock:
            if getattr(self, "_materialize_pool", None) is None:
                self._materialize_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nebula-future")
            return self._materialize_pool

    def _await_future(self, fut, deadline, ref, observer, refs) -> None:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = 0.1 if observer is not None else remaining
            if remaining is not None and step is not None:
                step = min(step, remaining)
            try:
                fut.result(step)
                return
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise GetTimeoutError(f"get() timed out after waiting for {ref}: the task is still "
                                          "pending or running; raise timeout= or check nebula status") from None
                if observer is not None:
                    observer(refs)

    @property
    def wait_observer(self):
        return output.wait_observer()

    def worker_env(self, runtime_env: dict | None) -> tuple[dict, str]:
        """(environment, key) this process's tasks run in: its interpreter, cwd and sys.path,
        then the user's runtime_env. Workers are pooled per distinct environment (key)."""
        if self.kind == "worker":
            base = self.inherited_env
            marker = None
        else:
            marker = (os.getcwd(), tuple(sys.path))
            cached = getattr(self, "_env_cache", None)
            if cached is not None and cached[0] == marker:
                base = cached[1]
            else:
                base = {"_python": sys.executable, "_cwd": marker[0],
                        "_sys_path": [p for p in sys.path if p and os.path.isdir(p) and "-packages" not in p]}
                self._env_cache = (marker, base, runtime_env_key(base))
        if not runtime_env:
            if marker is None:
                if not hasattr(self, "_inherited_key"):
                    self._inherited_key = runtime_env_key(base)
                return base, self._inherited_key
            return base, self._env_cache[2]
        env = {**base, **runtime_env}
        return env, runtime_env_key(env)

    def remember_context(self, task_id: str) -> None:
        context = output.submit_context()
        if context is not None:
            self.task_contexts[task_id] = context

    def deliver_output(self, msg: P.OutputLines) -> None:
        output.deliver(self.task_contexts.get(msg.task_id), msg.prefix, msg.stream, msg.lines)

    def task_finished(self, task_id: str, name: str, state: str, start: float, end: float, where: tuple) -> None:
        """Log a task's end; ``where``: (node, worker, pid) of its run, () if it never ran."""
        self.task_contexts.pop(task_id, None)
        self.task_log.append((task_id, name, state, start, end) + (where or NOWHERE))

    def blocked_in_get(self):
        return _BlockedInGet(self)

    @contextlib.contextmanager
    def cancel_on_interrupt(self, refs):
        """Ctrl-C (or a notebook's stop button) while blocked cancels the tasks being waited on."""
        try:
            yield
        except KeyboardInterrupt:
            for ref in refs:
                if ref.hex() in self.owned and not self.owned[ref.hex()].ready.done():
                    self.post(self.tasks.cancel, ref.task_id(), False)
                    self.post(self.actors.cancel, ref.task_id())
            raise

    # ---- lifecycle ------------------------------------------------------------------------

    def check_fork(self) -> None:
        if os.getpid() != self.pid:
            raise NebulaError(
                "this process was forked from a process that had called nebula.init(); the child "
                "cannot use its parent's cluster connection. Call nebula.shutdown() and "
                "nebula.init() again in the child, or start children with the 'spawn' method")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._close_async(), self.loop).result(5)
        except Exception:  # noqa: BLE001 - closing must always finish
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if getattr(self, "_materialize_pool", None) is not None:
            self._materialize_pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            self.loop.close()
        if self.arena is not None:
            self.arena.close()  # the mapping itself stays while arrays from get() still use it

    async def _close_async(self) -> None:
        self.tasks.close()
        self.node.close()
        await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _chain(src: concurrent.futures.Future, out: concurrent.futures.Future) -> None:
    if src.exception() is not None:
        out.set_exception(src.exception())
    else:
        out.set_result(src.result())


def _location_to_source(fut: concurrent.futures.Future, out: concurrent.futures.Future) -> None:
    if fut.exception() is not None:
        out.set_result(("error", encode_system_error(ObjectLostError(str(fut.exception())))))
        return
    loc: P.ObjectLocation = fut.result()
    if isinstance(loc, (bytes, bytearray)):  # relayed to a process without the store mapped
        out.set_result(("inline", bytes(loc)))
        return
    if loc.error:
        out.set_result(("error", loc.error))
    else:
        out.set_result(("store", loc.offset, loc.size))


class _PinRelease:
    """Unpins a store object once every zero-copy view handed out by one read is gone."""

    def __init__(self, session: Session, object_id: str):
        self.session, self.object_id, self.live, self.settled = session, object_id, 0, False

    def hold(self, buffer: memoryview):
        import numpy as np  # only reads with zero-copy buffers need it; keeps `import nebula` light
        holder = np.frombuffer(buffer, dtype=np.uint8)
        self.live += 1
        weakref.finalize(holder, self._dropped)
        return holder

    def _dropped(self) -> None:
        self.live -= 1
        if self.live == 0 and self.settled:
            self.session.send_node_soon(P.Unpin([self.object_id]))

    def settle(self) -> None:
        self.settled = True
        if self.live == 0:
            self.session.send_node_soon(P.Unpin([self.object_id]))


class _BlockedInGet:
    """While a worker's task blocks in get/wait, its CPU is lent back to the node."""

    def __init__(self, session: Session):
        self.session = session
        self.active = session.kind == "worker" and getattr(session.current_task, "task_id", None)

    def __enter__(self):
        if self.active:
            self.session.send_node(P.WorkerBlocked(True))
        return self

    def __exit__(self, *exc):
        if self.active:
            self.session.send_node(P.WorkerBlocked(False))
