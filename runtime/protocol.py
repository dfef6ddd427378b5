"""Every message Nebula processes exchange, as typed msgspec structs (one per intent).

Control fields are plain typed values, validated by msgspec while decoding; user payloads
(pickled functions, arguments, results) travel as opaque ``bytes`` that only the receiver
unpickles, and only after the connection authenticated (see ``wire.py``).

    driver/worker Session  --(node link)-->  NodeAgent      leases, objects, actors, state
    owner Session          --(task link)-->  worker          tasks, actor calls, cancels
    worker                 --(task link)-->  owner           results, output lines
"""
from __future__ import annotations

import msgspec


class Msg(msgspec.Struct, tag=True, array_like=True, omit_defaults=True):
    """Base of every message: encoded as a tagged msgpack array."""


# ---- handshake (the only frames accepted before authentication) -------------------------

class Hello(Msg):
    version: str
    python: str
    role: str
    nonce: bytes


class Challenge(Msg):
    version: str
    python: str
    nonce: bytes
    proof: bytes


class Proof(Msg):
    proof: bytes


class Welcome(Msg):
    node_id: str
    fds: int = 0


class Refused(Msg):
    reason: str


# ---- session <-> node agent -------------------------------------------------------------

class RegisterClient(Msg):
    kind: str  # "driver" or "worker"
    pid: int
    worker_id: str = ""
    job_id: str = ""
    namespace: str = ""
    tcp_address: str = ""


class Registered(Msg):
    client_id: str
    job_id: str
    node_id: str
    session_dir: str
    store_capacity: int
    store_backing: str
    config: dict = {}


class RequestLease(Msg):
    request_id: int
    shape: dict
    env_key: str
    runtime_env: bytes = b""
    strategy: str = "DEFAULT"
    node_affinity: str = ""
    soft: bool = True
    preferred_node: str = ""
    forwarded: bool = False


class LeaseGranted(Msg):
    request_id: int
    lease_id: str
    worker_id: str
    address: str
    pid: int
    node_id: str
    gpu_ids: list = []


class LeaseInfeasible(Msg):
    request_id: int
    message: str


class LeaseFailed(Msg):
    request_id: int
    error: bytes


class ReturnLease(Msg):
    lease_id: str


class CancelLeaseRequest(Msg):
    request_id: int


class WorkerDied(Msg):
    worker_id: str
    description: str
    exit_code: int


class WorkerBlocked(Msg):
    blocked: bool


class CreateActor(Msg):
    actor_id: str
    spec: bytes
    shape: dict
    placement_shape: dict
    env_key: str
    runtime_env: bytes = b""
    name: str = ""
    namespace: str = ""
    get_if_exists: bool = False
    detached: bool = False
    max_restarts: int = 0
    max_concurrency: int = 1
    class_name: str = ""
    node_affinity: str = ""
    meta: bytes = b""
    owner: str = ""


class ActorCreateReply(Msg):
    actor_id: str
    existing_actor_id: str = ""
    error: str = ""


class WaitActor(Msg):
    request_id: int
    actor_id: str


class ActorInfo(Msg):
    request_id: int
    actor_id: str
    state: str  # PENDING, ALIVE, RESTARTING, DEAD
    address: str = ""
    incarnation: int = 0
    reason: str = ""
    class_name: str = ""
    max_task_retries: int = 0


class GetNamedActor(Msg):
    request_id: int
    name: str
    namespace: str


class NamedActorReply(Msg):
    request_id: int
    actor_id: str = ""
    spec_meta: bytes = b""
    error: str = ""


class KillActor(Msg):
    actor_id: str
    no_restart: bool = True


class ActorHandleReleased(Msg):
    actor_id: str


class AllocObject(Msg):
    request_id: int
    object_id: str
    size: int
    owner: str


class Allocated(Msg):
    request_id: int
    offset: int = -1
    error: str = ""


class SealObject(Msg):
    object_id: str
    contained: list = []


class DeclareObject(Msg):
    object_id: str


class FailObject(Msg):
    object_id: str
    error: bytes


class AddRefs(Msg):
    object_ids: list
    holder: str = ""
    request_id: int = 0


class RemoveRefs(Msg):
    object_ids: list
    holder: str = ""


class RefsAck(Msg):
    request_id: int


class GetObject(Msg):
    request_id: int
    object_id: str
    pin: bool = True
    node_hint: str = ""  # the owner's word on which node sealed it (if that node dies unheard: lost)


class ObjectLocation(Msg):
    request_id: int
    object_id: str
    offset: int = -1
    size: int = 0
    error: bytes = b""


class Unpin(Msg):
    object_ids: list


class StateQuery(Msg):
    request_id: int
    what: str  # "snapshot" | "nodes"


class StateReply(Msg):
    request_id: int
    payload: bytes


class Subscribe(Msg):
    kinds: list


class Unsubscribe(Msg):
    pass


class FeedControl(Msg):
    enabled: bool
    others: bool = True  # someone other than the receiver subscribes: ship events to the node


class Events(Msg):
    events: bytes  # an encoded FeedBatch (state_events.py): nodes pass it on undecoded


class EventBatch(Msg):
    events: bytes  # decoded by the receiving process's delivery thread, off its I/O thread


# ---- node agent -> worker (control) ------------------------------------------------------

class BecomeActor(Msg):
    actor_id: str
    spec: bytes
    max_concurrency: int
    incarnation: int
    resources: dict = {}  # what the actor holds while alive (get_assigned_resources)
    gpu_ids: tuple = ()  # the GPUs it holds (its CUDA_VISIBLE_DEVICES)


class Retire(Msg):
    """To an idle worker: the node needs its slot for another pool; exit unless you own objects."""


class RetireDeclined(Msg):
    pass


class ActorReady(Msg):
    actor_id: str
    error: bytes = b""



# ---- owner <-> worker (task link) --------------------------------------------------------

class ExecuteTask(Msg):
    task_id: str
    function_id: str
    function: bytes
    args: bytes
    return_ids: list
    name: str
    owner: str
    job_id: str
    arg_refs: tuple = ()  # tuples, not lists: an empty default allocates nothing
    method: str = ""
    actor_id: str = ""
    retriable: bool = False
    gpu_ids: tuple = ()
    resources: dict = {}  # what the task was granted (get_assigned_resources)


class TaskReturn(Msg):
    object_id: str
    inline: bytes = b""
    in_store: bool = False
    size: int = 0
    node_id: str = ""


class TaskResult(Msg):
    task_id: str
    returns: list[TaskReturn] = []
    error: bytes = b""
    start: float = 0.0
    end: float = 0.0
    reported: bool = False  # an actor's worker put the call's end in the state feed (the caller need not)


class CancelTask(Msg):
    task_id: str
    force: bool = False


class OutputLines(Msg):
    task_id: str
    prefix: str
    stream: str
    lines: list


# ---- node <-> node (membership, forwarded leases, object transfer) -----------------------

class NodeHello(Msg):
    node_id: str
    address: str
    resources: dict
    incarnation: str


class NodeHeartbeat(Msg):
    available: dict
    store_used: int = 0
    store_capacity: int = 0
    store_objects: int = 0
    draining: bool = False


class NodeInfo(Msg):
    node_id: str
    address: str
    resources_total: dict
    resources_available: dict
    alive: bool
    incarnation: str = ""
    store_used: int = 0
    draining: bool = False  # takes no new work; leaves once its running tasks end
    store_capacity: int = 0
    store_objects: int = 0


class ClusterView(Msg):
    head_id: str
    nodes: list[NodeInfo]


class ObjectsSealed(Msg):
    object_ids: list


class ObjectsFreed(Msg):
    object_ids: list


class WhereIs(Msg):
    request_id: int
    object_id: str
    node_hint: str = ""


class ObjectAt(Msg):
    request_id: int
    object_id: str
    node_id: str = ""
    error: str = ""


class PullObject(Msg):
    pull_id: int
    object_id: str


class ObjectChunk(Msg):
    pull_id: int
    object_id: str
    offset: int
    total: int
    data: bytes = b""
    error: str = ""


class PutChunk(Msg):
    """A part of an object sent by a process without the node's store mapped (a remote driver)."""
    object_id: str
    owner: str
    offset: int
    total: int
    data: bytes
    contained: list = []


class ClientGone(Msg):
    client_id: str


class ActorHome(Msg):
    actor_id: str
    node_id: str
    name: str = ""
    namespace: str = ""
    meta: bytes = b""
    dead: bool = False


# ---- draining a node (see node_drain.py) -------------------------------------------------

class DrainNode(Msg):
    """To a node: take no new work, let running tasks finish for ``grace_s`` seconds, then exit."""
    grace_s: float


class LeaseDeclined(Msg):
    """A draining node does not take this forwarded request: its sender places it elsewhere."""
    request_id: int


class LeaseRevoked(Msg):
    """To a lease holder: the worker's node is draining; finish what runs there, send no more, return it."""
    lease_id: str


MESSAGE_TYPES = tuple(Msg.__subclasses__())
