"""Caller-side actors: create them through the node, then call them directly, in order.

    create ─► node places the actor (CreateActor) ─► ActorInfo(ALIVE, address)
    call   ─► channel queue (submission order) ─► ExecuteTask on the actor's link ─► TaskResult
    link lost ─► ask the node: RESTARTING → resend (max_task_retries) / DEAD → ActorDiedError

Runs on the session's I/O thread, except ``create`` and ``submit``. A call with no ref
arguments to an actor that is ALIVE and connected, with nothing queued ahead of it (no call,
nor anything else this process posted to its I/O thread), is sent straight from the calling
thread (no wake-up of the I/O thread); ``lock`` keeps that in step with the I/O thread, whose
entry points here all hold it.
"""
from __future__ import annotations

import collections
import functools
import logging
import pickle
import threading

from . import background
from . import protocol as P
from .exceptions import ActorDiedError
from .ids import new_id, return_id
from .options import resource_shape, strategy_fields
from .serialization import serialize
from .task_args import pack_args

log = logging.getLogger("nebula.actors")


class ActorCall:
    __slots__ = ("spec", "deps", "nested", "sources", "resolved", "retries_left")

    def __init__(self, spec, deps, nested, retries):
        self.spec, self.deps, self.nested = spec, deps, nested
        self.sources: list = []
        self.resolved = False
        self.retries_left = retries


class ActorChannel:
    """What one caller knows of one actor: its state, its link and the calls in order."""

    def __init__(self, actor_id: str):
        self.actor_id = actor_id
        self.state = "UNKNOWN"
        self.link = None
        self.queue: collections.deque[ActorCall] = collections.deque()
        self.in_flight: dict[str, ActorCall] = {}
        self.reason = ""
        self.max_task_retries = 0
        self.waiting_info = False
        self.release_when_idle = False
        self.orphaned: list[ActorCall] = []  # in flight when the link broke; failed once we know why
        self.incarnation = -1
        self.on_result = None  # the result handler of this channel's calls (set by ActorCaller)


def _locked(method):
    """An I/O-thread entry point: holds the caller's lock, so a direct send never interleaves."""
    @functools.wraps(method)
    def locked(self, *args):
        with self.lock:
            return method(self, *args)
    return locked


class ActorCaller:
    """See the module docstring."""

    def __init__(self, session):
        self.session = session
        self.channels: dict[str, ActorChannel] = {}
        self.create_replies: dict[str, object] = {}
        self.creation_args: dict[str, list] = {}
        self.lock = threading.RLock()

    # ---- caller thread --------------------------------------------------------------------

    def create(self, cls, args, kwargs, options, class_name: str, method_meta: dict, handle_meta: bytes) -> str:
        import concurrent.futures
        session = self.session
        actor_id = new_id(12)
        data, deps, nested = pack_args(session, args, kwargs, f"{class_name}.__init__()")
        session.escape(deps)
        session.escape(nested)
        self.creation_args[actor_id] = [*deps, *nested]
        spec = serialize((cls, data, [d.hex() for d in deps], method_meta)).to_bytes()
        held = resource_shape(options.num_cpus or 0, options.num_gpus, options.resources, options.memory)
        placement = dict(held) if options.num_cpus is not None else {**held, "CPU": 1.0}
        env, env_key = session.worker_env(options.runtime_env)
        concurrency = options.max_concurrency or (1000 if method_meta.get("__async__") else 1)
        kind, node, _soft = strategy_fields(options.scheduling_strategy)
        namespace = options.namespace if options.namespace is not None else session.namespace
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.create_replies[actor_id] = fut
        session.send_node(P.CreateActor(
            actor_id, spec, held, placement, env_key, pickle.dumps(env), options.name or "",
            namespace or "", options.get_if_exists, options.lifetime == "detached", options.max_restarts,
            concurrency, class_name, node if kind == "NODE_AFFINITY" else "", handle_meta))
        reply = fut.result(60)
        if reply.error:
            self.creation_args.pop(actor_id, None)
            raise ValueError(reply.error)
        return reply.existing_actor_id or actor_id

    def submit(self, actor_id: str, method: str, args, kwargs, num_returns: int, retries: int, label: str):
        session = self.session
        task_id = new_id(12)
        data, deps, nested = pack_args(session, args, kwargs, f"{label}()")
        session.escape(nested)
        session.escape(deps)
        return_ids = [return_id(task_id, i) for i in range(num_returns)]
        refs = [session.new_owned(rid, task_id) for rid in return_ids]
        spec = P.ExecuteTask(task_id, "", b"", data, return_ids, label, session.client_id, session.job_id,
                             method=method, actor_id=actor_id)
        session.remember_context(task_id)
        call = ActorCall(spec, deps, nested, retries)
        if not self._send_now(call):
            session.post(self._submit, call)
        return refs

    def _send_now(self, call: ActorCall) -> bool:
        """Send a call from this thread if nothing can be ahead of it; False: post it instead."""
        channel = self.channels.get(call.spec.actor_id)
        with self.lock:
            link = channel.link if channel is not None else None
            if call.deps or link is None or channel.queue or channel.state != "ALIVE" \
                    or channel.release_when_idle or link.conn is None or link.conn.closed \
                    or self.session.events.enabled or not self.session.quiet():
                return False  # posted: while it waits there, the session is not quiet()
            channel.in_flight[call.spec.task_id] = call
            self.session.tasks.result_handlers[call.spec.task_id] = channel.on_result
            link.conn.send_threadsafe(call.spec)
        return True

    # ---- I/O thread -----------------------------------------------------------------------

    def on_create_reply(self, msg: P.ActorCreateReply) -> None:
        fut = self.create_replies.pop(msg.actor_id, None)
        if fut is not None:
            fut.set_result(msg)

    def _channel(self, actor_id: str) -> ActorChannel:
        channel = self.channels.get(actor_id)
        if channel is None:
            channel = ActorChannel(actor_id)
            channel.on_result = functools.partial(self._on_result, channel)
            self.channels[actor_id] = channel
        return channel

    @_locked
    def _submit(self, call: ActorCall) -> None:
        channel = self._channel(call.spec.actor_id)
        events = self.session.events
        if events.enabled:
            events.add("task", call.spec.task_id, "SUBMITTED", {
                "name": call.spec.name, "actor": channel.actor_id, "owner": self.session.client_id,
                "job": self.session.job_id, "deps": tuple(d.hex() for d in call.deps)})
        if channel.state == "DEAD":
            self._fail_call(call, channel)
            return
        channel.queue.append(call)
        call.sources = [self.session.readiness(d) for d in call.deps]
        for fut in call.sources:
            if not fut.done():
                fut.add_done_callback(lambda _f: self.session.post(self._drain, channel))
        self._drain(channel)

    @_locked
    def _drain(self, channel: ActorChannel) -> None:
        if channel.state != "ALIVE" or channel.link is None or channel.link.conn is None:
            self._ask_state(channel)
            return
        while channel.queue and all(f.done() for f in channel.queue[0].sources):
            call = channel.queue.popleft()
            self._send(channel, call)

    def _send(self, channel: ActorChannel, call: ActorCall) -> None:
        inline = []
        for dep in call.deps:
            entry = self.session.owned.get(dep.hex())
            if entry is not None and entry.error is not None:
                self._finish(call, P.TaskResult(call.spec.task_id, error=entry.error))
                return
            inline.append([dep.hex(), entry.inline if entry is not None and entry.inline else b""])
        call.spec.arg_refs = inline
        channel.in_flight[call.spec.task_id] = call
        self.session.tasks.result_handlers[call.spec.task_id] = channel.on_result
        channel.link.conn.send(call.spec)

    @_locked
    def _on_result(self, channel: ActorChannel, msg: P.TaskResult) -> None:
        call = channel.in_flight.pop(msg.task_id, None)
        if call is not None:
            self._finish(call, msg)
        if channel.release_when_idle and not channel.queue and not channel.in_flight:
            self.handle_released(channel.actor_id)

    def _finish(self, call: ActorCall, msg: P.TaskResult) -> None:
        self.session.tasks.result_handlers.pop(call.spec.task_id, None)
        self.session.complete_returns(call.spec.return_ids, msg)
        state = "FAILED" if msg.error else "FINISHED"
        if not msg.reported:  # the actor's worker reports the calls it ran; the caller what ended otherwise
            self.session.events.task_ended(call.spec.task_id, state, call.spec.name, msg.start, msg.end,
                                           msg.error)
        self.session.task_finished(call.spec.task_id, call.spec.name, state, msg.start, msg.end,
                                   (self.session.node_id, "", 0))

    def _fail_call(self, call: ActorCall, channel: ActorChannel, detail: str = "") -> None:
        from .session import encode_system_error
        err = ActorDiedError(f"the actor {channel.actor_id[:8]} is dead: {channel.reason or 'unknown cause'}"
                             f"{detail}", actor_id=channel.actor_id)
        self._finish(call, P.TaskResult(call.spec.task_id, error=encode_system_error(err)))

    # ---- actor state ----------------------------------------------------------------------

    def _ask_state(self, channel: ActorChannel) -> None:
        if not channel.waiting_info and channel.state != "DEAD":
            channel.waiting_info = True
            self.session.node.send(P.WaitActor(next(self.session.request_ids), channel.actor_id))

    @_locked
    def on_killed(self, actor_id: str) -> None:
        """This process called nebula.kill(): fail what is pending now; the actor never comes back."""
        channel = self._channel(actor_id)
        channel.state, channel.reason = "DEAD", "killed by nebula.kill()"
        if channel.orphaned:
            self._fail_orphaned(channel, "DEAD", channel.reason)
        self._fail_all(channel)

    @_locked
    def on_actor_info(self, msg: P.ActorInfo) -> None:
        channel = self._channel(msg.actor_id)
        if channel.state == "DEAD" and msg.state != "DEAD":
            return  # a stale answer: a dead actor stays dead
        if msg.state in ("RESTARTING", "DEAD") and channel.link is not None and channel.link.conn is not None:
            channel.link.conn.close()  # never read a stale reply from the old incarnation
        channel.waiting_info = msg.state not in ("ALIVE", "DEAD")
        channel.state, channel.reason = msg.state, msg.reason
        channel.max_task_retries = msg.max_task_retries
        if channel.orphaned and (msg.state != "ALIVE" or msg.incarnation != channel.incarnation):
            self._fail_orphaned(channel, msg.state, msg.reason or "its process exited")
        if msg.state == "ALIVE":
            channel.incarnation = msg.incarnation
        if msg.state == "DEAD":
            self._fail_all(channel)
        elif msg.state == "ALIVE":
            channel.link = self.session.tasks.link_for(msg.address)
            background.start(self.session.loop, self._await_link(channel, channel.link))

    async def _await_link(self, channel: ActorChannel, link) -> None:
        try:
            await link.ready
            failed = False
        except Exception:  # noqa: BLE001 - the actor died between ALIVE and connect
            failed = True
        with self.lock:
            if failed:
                channel.state = "UNKNOWN"
            if channel.orphaned and channel.state == "ALIVE":
                self._fail_orphaned(channel, "ALIVE", "the connection to it was lost")
            self._drain(channel)

    def _fail_orphaned(self, channel: ActorChannel, state: str, why: str) -> None:
        from .session import encode_system_error
        calls, channel.orphaned = channel.orphaned, []
        after = ("it will not be restarted" if state == "DEAD" else
                 "set max_task_retries to retry such calls on the restarted actor")
        err = ActorDiedError(f"the actor {channel.actor_id[:8]} died while running this call ({why}); {after}",
                             actor_id=channel.actor_id)
        for call in calls:
            self._finish(call, P.TaskResult(call.spec.task_id, error=encode_system_error(err)))

    def _fail_all(self, channel: ActorChannel) -> None:
        calls = list(channel.in_flight.values()) + list(channel.queue)
        channel.in_flight.clear()
        channel.queue.clear()
        for call in calls:
            self._fail_call(call, channel)

    @_locked
    def on_link_lost(self, link) -> None:
        for channel in self.channels.values():
            if channel.link is link:
                self._actor_link_lost(channel)

    def _actor_link_lost(self, channel: ActorChannel) -> None:
        channel.link, channel.state = None, "UNKNOWN"
        lost = list(channel.in_flight.values())
        channel.in_flight.clear()
        for call in reversed(lost):
            if call.retries_left != 0:
                call.retries_left -= 1
                channel.queue.appendleft(call)
            else:
                channel.orphaned.append(call)
        self._ask_state(channel)

    @_locked
    def on_worker_died(self, msg: P.WorkerDied) -> None:
        for channel in self.channels.values():
            if channel.state == "ALIVE" and channel.link is not None and msg.worker_id in channel.link.address:
                channel.reason = msg.description

    @_locked
    def cancel(self, task_id: str) -> None:
        """Drop a queued call, or ask the actor to interrupt a running one."""
        for channel in self.channels.values():
            for call in list(channel.queue):
                if call.spec.task_id == task_id:
                    channel.queue.remove(call)
                    from .session import encode_system_error
                    from .exceptions import TaskCancelledError
                    self._finish(call, P.TaskResult(task_id, error=encode_system_error(TaskCancelledError(task_id))))
                    return
            if task_id in channel.in_flight and channel.link is not None and channel.link.conn is not None:
                channel.link.conn.send(P.CancelTask(task_id, False))
                return

    @_locked
    def handle_released(self, actor_id: str) -> None:
        """The last handle went away: the actor ends once the calls made through it are done."""
        channel = self.channels.get(actor_id)
        if channel is not None and channel.state != "DEAD" and (channel.queue or channel.in_flight):
            channel.release_when_idle = True
            return
        self.session.node.send(P.ActorHandleReleased(actor_id))
