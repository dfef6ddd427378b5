"""A worker process: takes tasks from its owners' links and runs them on its main thread.

    owners ──task link──► nebula-io thread ──queue──► main thread: fetch args, run, store result
                       ◄── TaskResult / OutputLines ◄──┘
    node agent ──node link──► BecomeActor: this worker now hosts one actor instance

User code runs on the main thread (signals, and so cancellation, work there), or for
actors with ``max_concurrency > 1`` on a thread pool, or for ``async def`` methods on an
event loop thread. The worker is itself a Session client, so tasks may submit tasks.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import queue
import signal
import socket
import threading
import time

from . import background
from . import protocol as P
from . import wire
from .cluster_info import ASYNC_CALL_TASK_ID
from .events import error_summary
from .exceptions import ActorDiedError, TaskCancelledError, capture_task_error
from .object_ref import ObjectRef
from .output_capture import OutputCapture, OutputTarget
from .serialization import deserialize, serialize
from .session import INLINE_LIMIT, Session, encode_system_error
from .task_args import unpack_args

log = logging.getLogger("nebula.worker")


class ExitActor(BaseException):
    """Raised by ``nebula.actor.exit_actor()`` inside an actor method."""


class Worker:
    """See the module docstring."""

    def __init__(self, session: Session, worker_id: str, address: str, capture: OutputCapture):
        self.session, self.worker_id, self.address, self.capture = session, worker_id, address, capture
        self.unreported: dict[str, tuple] = {}  # task id -> (spec, start): running, not yet in the feed
        self.async_calls: dict[str, asyncio.Task] = {}  # an async actor's calls in progress
        self.actor_resources: dict = {}  # what the actor this worker hosts holds while alive
        self.actor_gpu_ids: list = []  # the GPUs it holds
        self.env_before: dict = {}  # what a GPU task's CUDA variables replaced (None: unset)
        session.events.flush_hooks.append(self._report_running)
        self.functions: dict[str, object] = {}
        self.inbox: queue.SimpleQueue = session.worker_inbox
        self.current: P.ExecuteTask | None = None
        self.interruptible = False  # a cancel signal raises only while a task's own work runs
        self.cancelled: set[str] = set()
        self.children: dict[str, list] = {}  # running task id -> ids of the tasks it submitted
        self.actor = None
        self.actor_id = ""
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.node_short = session.node_id[:4]
        signal.signal(signal.SIGUSR1, self._on_cancel_signal)

    # ---- the task link server ---------------------------------------------------------------

    def serve_links(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept_loop, args=(listener,), name="nebula-accept", daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        try:
            wire.server_handshake(sock, self.session.token, self.session.node_id)
        except Exception as exc:  # noqa: BLE001 - a bad peer loses only its connection
            log.warning("refused a task connection: %s", exc)
            sock.close()
            return
        background.start_threadsafe(self.session.loop, self._serve_link(sock))

    async def _serve_link(self, sock: socket.socket) -> None:
        conn = await wire.Connection.adopt(sock, "owner")
        await conn.run(lambda msg: self._on_link_message(conn, msg))

    def _on_link_message(self, conn: wire.Connection, msg: P.Msg) -> None:
        if isinstance(msg, P.ExecuteTask):
            if self.actor_pool is not None or self.actor_loop is not None:
                self._run_concurrent(conn, msg)
            else:
                self.inbox.put(("task", msg, conn))
        elif isinstance(msg, P.CancelTask):
            self._cancel(msg)

    # ---- cancellation -----------------------------------------------------------------------

    def _cancel(self, msg: P.CancelTask) -> None:
        self.cancelled.add(msg.task_id)
        call = self.async_calls.get(msg.task_id)
        if call is not None and not msg.force:  # an async actor's call: cancel its asyncio task
            self.actor_loop.call_soon_threadsafe(call.cancel)
            return
        current = self.current
        if current is None or current.task_id != msg.task_id:
            return
        if msg.force:
            os._exit(1)
        for child in list(self.children.get(msg.task_id, ())):  # this runs on the I/O thread
            self.session.tasks.cancel(child, False)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def _on_cancel_signal(self, _signum, _frame) -> None:
        current = self.current
        if self.interruptible and current is not None and current.task_id in self.cancelled:
            self.interruptible = False  # once: never again while the outcome is being made
            raise TaskCancelledError(current.task_id)

    # ---- the main loop ----------------------------------------------------------------------

    def _retire(self) -> None:
        """The node needs this idle worker's slot for another pool: exit, unless this process
        hosts an actor or still owns objects or tasks (their references would die with it)."""
        session = self.session
        if self.actor_id or session.owned or session.tasks.tasks:
            session.send_node(P.RetireDeclined())
            return
        log.info("retiring: idle, and the node needs the slot for a worker of another pool")
        logging.shutdown()
        os._exit(0)

    def run_forever(self) -> None:
        while True:
            kind, msg, conn = self.inbox.get()
            try:
                if kind == "actor":
                    self._become_actor(msg)
                elif kind == "retire":
                    self._retire()
                else:
                    self._execute(conn, msg)
            except TaskCancelledError:
                log.info("a cancellation arrived after its task had finished; ignored")

    def _execute(self, conn: wire.Connection, spec: P.ExecuteTask) -> None:
        start = time.time()
        if spec.task_id in self.cancelled:
            self._reply(conn, _cancelled(spec, start, start))
            return
        self.current = spec
        self._enter_task(spec, conn)
        try:
            result = self._run(spec, start)
        finally:
            self._leave_task()
            self.current = None
        self._reply(conn, result, spec)

    def _enter_task(self, spec: P.ExecuteTask, conn: wire.Connection) -> None:
        local = self.session.current_task
        local.task_id, local.borrowed, local.children = spec.task_id, [], []
        self.children[spec.task_id] = local.children
        local.gpu_ids = list(self.actor_gpu_ids if spec.actor_id else spec.gpu_ids)
        local.actor_id, local.job_id = self.actor_id, spec.job_id
        local.resources = self.actor_resources if spec.actor_id else spec.resources
        if spec.gpu_ids and not spec.actor_id:  # an actor's are set once, for its whole process
            self.env_before = _set_env(_gpu_env(spec.gpu_ids))
        self._begin_output(spec, conn)
        self._report_start(spec)

    def _begin_output(self, spec: P.ExecuteTask, conn: wire.Connection) -> None:
        prefix = f"{spec.name} pid={os.getpid()} node={self.node_short}"
        self.capture.begin(OutputTarget(spec.task_id, prefix, lambda stream, lines: conn.send_threadsafe(
            P.OutputLines(spec.task_id, prefix, stream, lines))))

    def _leave_task(self) -> None:
        local = self.session.current_task
        self.capture.end(local.task_id)
        self.children.pop(local.task_id, None)
        if local.borrowed:
            self.session.confirm_borrows()
        local.task_id = None
        if self.env_before:  # the next task on this worker sees what was there before
            _set_env(self.env_before)
            self.env_before = {}

    # ---- the state feed: a run still going, and an actor's calls, are reported here -----------

    def _where(self, spec: P.ExecuteTask) -> dict:
        fields = {"name": spec.name, "owner": spec.owner, "node": self.session.node_id, "worker": self.worker_id,
                  "pid": self.session.pid}
        if spec.actor_id:
            fields["actor"] = spec.actor_id
        return fields

    def _report_start(self, spec: P.ExecuteTask) -> None:
        """A run is reported RUNNING only if it still runs at the next flush: a short task's
        end event carries its start, so it costs one event rather than two."""
        events = self.session.events
        if events.enabled:
            self.unreported[spec.task_id] = (spec, time.time())
            events.flush_soon()

    def _report_running(self) -> None:
        """The flush hook (I/O thread): what started since the last flush and still runs."""
        for task_id in list(self.unreported):
            started = self.unreported.pop(task_id, None)
            if started is not None:
                self.session.events.add("task", task_id, "RUNNING", self._where(started[0]), at=started[1])

    def _report_end(self, spec: P.ExecuteTask, result: P.TaskResult) -> None:
        """An actor call's end (a task's is reported by its owner, which the result reaches)."""
        events = self.session.events
        self.unreported.pop(spec.task_id, None)
        if not (events.enabled and spec.actor_id):
            return
        fields = self._where(spec)
        fields.update(start=result.start, end=result.end)
        if result.error:
            fields["error"] = error_summary(result.error)
        events.add("task", spec.task_id, "FAILED" if result.error else "FINISHED", fields)
        result.reported = True

    def _reply(self, conn: wire.Connection, result: P.TaskResult, spec: P.ExecuteTask | None = None) -> None:
        if spec is not None:
            self._report_end(spec, result)
        if self.session.quiet():
            conn.send_threadsafe(result)  # from this thread, behind this call's output lines
        else:  # behind what the call still has queued for the node (e.g. sealing a stored result)
            self.session.post(conn.send, result)
        if getattr(self, "exiting", False):  # after the reply, so the caller learns why it ends
            self.session.send_node(P.KillActor(self.actor_id, True))

    def _run(self, spec: P.ExecuteTask, start: float) -> P.TaskResult:
        """The task's outcome. A cancel signal raises only in here (``interruptible``): one that
        came while the task was being set up or ended would otherwise escape with no reply. A
        cancel that came after the check in ``_execute`` is caught by the check here, or, coming
        after this one, finds the task current and interruptible and signals."""
        try:
            self.interruptible = True
            if spec.task_id in self.cancelled:  # cancelled while being set up: its signal was ignored
                raise TaskCancelledError(spec.task_id)
            result = self._outcome(spec, start)
            self.interruptible = False
            return result
        except TaskCancelledError as exc:  # also one raised while another outcome was being made
            self.interruptible = False
            return P.TaskResult(spec.task_id, error=encode_system_error(exc), start=start, end=time.time())

    def _outcome(self, spec: P.ExecuteTask, start: float) -> P.TaskResult:
        try:
            call = self._resolve_call(spec)
            args, kwargs = unpack_args(spec.args, self._fetch_args(spec))
            value = call(*args, **kwargs)
            returns = self._store_returns(spec, value)
            return P.TaskResult(spec.task_id, returns, start=start, end=time.time())
        except ExitActor:
            return self._exit_actor(spec, start)
        except TaskCancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - user errors go back to the owner
            return self._error_result(spec, exc, start)

    def _error_result(self, spec: P.ExecuteTask, exc: BaseException, start: float) -> P.TaskResult:
        payload = capture_task_error(exc, function_name=spec.name, task_id=spec.task_id, pid=os.getpid(),
                                     node_id=self.session.node_id, actor_id=spec.actor_id or None)
        return P.TaskResult(spec.task_id, error=b"T" + payload, start=start, end=time.time())

    def _resolve_call(self, spec: P.ExecuteTask):
        if spec.method and getattr(self, "exiting", False):
            raise ExitActor()  # calls that arrive after exit_actor() while the process winds down
        if spec.method:
            if self.actor is None:
                raise ActorDiedError("this worker hosts no actor (it restarted?)")
            return getattr(self.actor, spec.method)
        fn = self.functions.get(spec.function_id)
        if fn is None:
            fn = self.functions[spec.function_id] = deserialize_function(spec.function)
        return fn

    def _fetch_args(self, spec: P.ExecuteTask) -> dict:
        """Values of the top-level ref arguments. Their refs are not counted here (no borrow to
        confirm): the caller keeps each argument alive until the result arrives, and a pin keeps
        the store memory behind zero-copy values alive after that."""
        values, to_get = {}, []
        for object_id, inline in spec.arg_refs:
            if inline:
                values[object_id] = deserialize(inline)
            else:
                to_get.append(ObjectRef(object_id, spec.owner, self.session, counted=False))
        if to_get:
            for ref, value in zip(to_get, self.session.get(to_get, None, lend_cpu=False)):
                values[ref.hex()] = value
        return values

    def _store_returns(self, spec: P.ExecuteTask, value) -> list:
        count = len(spec.return_ids)
        if count == 0:
            return []
        values = [value] if count == 1 else list(value)
        if len(values) != count:
            raise ValueError(f"{spec.name} declared num_returns={count} but returned {len(values)} values")
        return [self._store_return(spec, object_id, v) for object_id, v in zip(spec.return_ids, values)]

    def _store_return(self, spec: P.ExecuteTask, object_id: str, value) -> P.TaskReturn:
        obj = serialize(value)
        if obj.total_size <= INLINE_LIMIT and not obj.contained:
            return P.TaskReturn(object_id, obj.to_bytes(), size=obj.total_size)
        self.session.escape(obj.contained)
        self.session.write_to_store(object_id, obj, spec.owner)
        return P.TaskReturn(object_id, in_store=True, size=obj.total_size, node_id=self.session.node_id)

    # ---- actors -----------------------------------------------------------------------------

    def _become_actor(self, msg: P.BecomeActor) -> None:
        self.actor_id = msg.actor_id
        self.actor_resources = self.session.current_task.resources = dict(msg.resources)
        self.actor_gpu_ids = list(msg.gpu_ids)
        if msg.gpu_ids:
            _set_env(_gpu_env(msg.gpu_ids))
        self.session.actor_incarnation = msg.incarnation
        self.session.current_task.actor_id = msg.actor_id
        try:
            cls, data, dep_ids, meta = deserialize(msg.spec)
            spec = P.ExecuteTask("init-" + msg.actor_id, "", b"", data, [], f"{cls.__name__}.__init__", "", "",
                                 arg_refs=[[d, b""] for d in dep_ids])
            args, kwargs = unpack_args(data, self._fetch_args(spec))
            self.actor = cls(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the node, which marks the actor dead
            text = _format_init_error(exc)
            self.session.send_node(P.ActorReady(msg.actor_id, text.encode()))
            return
        self._start_concurrency(msg.max_concurrency, meta)
        self.session.send_node(P.ActorReady(msg.actor_id))

    def _start_concurrency(self, max_concurrency: int, meta: dict) -> None:
        if meta.get("__async__"):
            self.actor_loop = asyncio.new_event_loop()
            self.actor_semaphore = None
            self.actor_limit = max_concurrency
            threading.Thread(target=self.actor_loop.run_forever, name="nebula-actor-loop", daemon=True).start()
        elif max_concurrency > 1:
            self.actor_pool = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="nebula-actor")

    def _run_concurrent(self, conn: wire.Connection, spec: P.ExecuteTask) -> None:
        if self.actor_loop is not None:
            background.start_threadsafe(self.actor_loop, self._run_async(conn, spec))
        else:
            self.actor_pool.submit(self._run_threaded, conn, spec)

    def _run_threaded(self, conn: wire.Connection, spec: P.ExecuteTask) -> None:
        self._enter_task(spec, conn)
        try:
            result = self._run(spec, time.time())
        finally:
            self._leave_task()
        self._reply(conn, result, spec)

    async def _run_async(self, conn: wire.Connection, spec: P.ExecuteTask) -> None:
        if self.actor_semaphore is None:
            self.actor_semaphore = asyncio.Semaphore(self.actor_limit)
        self.async_calls[spec.task_id] = asyncio.current_task()
        try:
            await self._run_async_call(conn, spec)
        except asyncio.CancelledError:  # cancelled while it waited for its turn (max_concurrency)
            now = time.time()
            self._reply(conn, _cancelled(spec, now, now), spec)
        finally:
            self.async_calls.pop(spec.task_id, None)

    async def _run_async_call(self, conn: wire.Connection, spec: P.ExecuteTask) -> None:
        async with self.actor_semaphore:
            start = time.time()
            local = self.session.current_task  # the loop thread's: shared by the calls interleaving here
            local.actor_id, local.job_id, local.resources = self.actor_id, spec.job_id, self.actor_resources
            ASYNC_CALL_TASK_ID.set(spec.task_id)  # this asyncio task's own (get_task_id reads it)
            self._begin_output(spec, conn)
            self._report_start(spec)
            try:
                method = self._resolve_call(spec)
                args, kwargs = unpack_args(spec.args, await asyncio.to_thread(self._fetch_args, spec))
                value = method(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                returns = await asyncio.to_thread(self._store_returns, spec, value)
                result = P.TaskResult(spec.task_id, returns, start=start, end=time.time())
            except ExitActor:
                result = self._exit_actor(spec, start)
            except asyncio.CancelledError:  # nebula.cancel() of this call
                result = _cancelled(spec, start, time.time())
            except BaseException as exc:  # noqa: BLE001
                result = self._error_result(spec, exc, start)
            await asyncio.to_thread(self.capture.end, spec.task_id)
        self._reply(conn, result, spec)

    def _exit_actor(self, spec: P.ExecuteTask, start: float) -> P.TaskResult:
        self.exiting = True
        err = ActorDiedError("the actor exited via exit_actor()", actor_id=self.actor_id)
        return P.TaskResult(spec.task_id, error=encode_system_error(err), start=start, end=time.time())


def bind_listener(address: str) -> socket.socket:
    """Listen on the worker's socket before registering, so owners never race its start."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(address[5:])
    os.chmod(address[5:], 0o600)
    sock.listen(128)
    return sock


def bind_tcp_listener(host: str) -> tuple[socket.socket, str]:
    """A TCP listener for owners on other nodes (multi-node clusters only)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock, f"{host}:{sock.getsockname()[1]}"


def deserialize_function(data: bytes):
    import cloudpickle
    return cloudpickle.loads(data)


def _format_init_error(exc: BaseException) -> str:
    import traceback
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _gpu_env(gpu_ids) -> dict:
    from .node_resources import gpu_env_for  # only GPU tasks need it: not imported at start-up
    return gpu_env_for(gpu_ids)


def _set_env(values: dict) -> dict:
    """Set each variable (None: unset it); returns what they were, for setting them back."""
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def _cancelled(spec: P.ExecuteTask, start: float, end: float) -> P.TaskResult:
    return P.TaskResult(spec.task_id, error=encode_system_error(TaskCancelledError(spec.task_id)), start=start, end=end)
