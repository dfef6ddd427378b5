"""The user API: init/shutdown, remote, get/put/wait, cancel/kill, cluster information.

``init()`` finds its cluster in this order: the ``address=`` argument (``"local"`` always
starts a private embedded cluster, ``"auto"`` joins the one this user started with
``nebula start``); ``NEBULA_ADDRESS`` with ``NEBULA_TOKEN_FILE``; otherwise it starts an
embedded cluster in the background, which ends with this process.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import warnings

from .exceptions import NebulaError
from .object_ref import ObjectRef
from .options import ActorOptions, TaskOptions, make_options


class _ImportedOnFirstUse:
    """``nebula.session``, imported when first used (then it replaces this stand-in): ``init()``
    starts the embedded cluster's node agent first and imports the client side (asyncio, the
    protocol, the store) while the agent starts, instead of before."""

    def __getattr__(self, name: str):
        global session_module
        from . import session
        session_module = session
        return getattr(session, name)


session_module = _ImportedOnFirstUse()


def _session_if_any():
    """The current session, without importing nebula.session: none exists before it is imported."""
    module = sys.modules.get(f"{__package__}.session")
    return module.current_session_or_none() if module is not None else None


log = logging.getLogger("nebula")
_lock = threading.RLock()
_state: dict = {"cluster": None, "args": None}
_CLUSTER_SHAPING = ("num_cpus", "num_gpus", "resources", "object_store_memory", "num_nodes")


class ClusterInfo(dict):
    """What ``init()`` returns: a dict of addresses and resources (Ray's context shape)."""

    @property
    def address_info(self) -> dict:
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()


def init(address: str | None = None, *, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
         namespace: str | None = None, runtime_env: dict | None = None, ignore_reinit_error: bool = True,
         logging_level=logging.INFO, token: str | None = None, num_nodes: int | None = None,
         _node_config: dict | None = None, **unsupported):
    """Connect to (or start) a cluster; see the module docstring for how it is found."""
    _reject_unsupported(unsupported)
    args = dict(address=address, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                object_store_memory=object_store_memory, namespace=namespace, runtime_env=runtime_env,
                num_nodes=num_nodes)
    with _lock:
        if _session_if_any() is not None:
            return _reinit(args, ignore_reinit_error)
        _check_platform()
        session = _connect(args, token, logging_level, _node_config)
        session_module.set_current_session(session)
        _state["args"] = args
        return _cluster_info(session)


def _reject_unsupported(unsupported: dict) -> None:
    ignored = {"include_dashboard", "dashboard_host", "dashboard_port", "configure_logging", "log_to_driver",
               "_temp_dir", "_system_config", "local_mode", "job_config", "_enable_object_reconstruction"}
    bad = sorted(set(unsupported) - ignored)
    if bad:
        raise TypeError(f"init() got unexpected argument(s): {', '.join(bad)}")
    if unsupported.get("local_mode"):
        raise NotImplementedError("local_mode is not supported: Nebula's embedded cluster starts in well "
                                  "under a second, so debug against it directly")


def _check_platform() -> None:
    import sys
    if not sys.platform.startswith("linux"):
        raise NebulaError(f"Nebula runs on Linux (x86_64, aarch64); this is {sys.platform}. On Windows use WSL2; "
                          "on macOS run Nebula inside a Linux container or VM")


def _reinit(args: dict, ignore_reinit_error: bool):
    session = session_module.current_session_or_none()
    previous = _state["args"] or {}
    ignored = [k for k, v in args.items() if v is not None and v != previous.get(k)]
    if not ignore_reinit_error:
        raise RuntimeError("nebula.init() was already called; call nebula.shutdown() first, or pass "
                           "ignore_reinit_error=True")
    if ignored:
        warnings.warn(f"nebula.init() was already called; ignoring {', '.join(ignored)} (call nebula.shutdown() "
                      "first to change them)", stacklevel=3)
    return _cluster_info(session)


def _connect(args: dict, token: str | None, logging_level, node_config):
    address = args["address"]
    if address == "local" or (address is None and not os.environ.get("NEBULA_ADDRESS")):
        return _start_embedded(args, logging_level, node_config)
    from .session import Session
    target, token_bytes = _resolve_address(address, token)
    target = _local_route(target)
    shaping = [k for k in _CLUSTER_SHAPING if args.get(k) is not None]
    if shaping:
        raise ValueError(f"{', '.join(shaping)} shape a new cluster and cannot be given when joining the existing "
                         f"cluster at {target}; drop them, or use address='local' for a private cluster")
    return Session(target, token_bytes, namespace=args.get("namespace") or "")


def _resolve_address(address: str | None, token: str | None) -> tuple[str, bytes]:
    from .session_files import current_cluster_file, read_token
    if address in (None, "auto") and os.environ.get("NEBULA_ADDRESS") and address is None:
        address = os.environ["NEBULA_ADDRESS"]
    elif address == "auto":
        return _auto_address(current_cluster_file())
    if token is not None:
        return address, token.encode()
    return address, read_token()


def _local_route(address: str) -> str:
    """Drivers use a node on their own machine (Unix socket, shared-memory store)."""
    if address.startswith("unix:"):
        return address
    import json
    from .session_files import current_cluster_file
    try:
        with open(current_cluster_file()) as f:
            info = json.load(f)
        if info.get("address") == address and info.get("unix_address"):
            return info["unix_address"]
    except (OSError, ValueError):
        pass
    warnings.warn(f"no Nebula node runs on this machine: objects this driver puts or gets travel through the "
                  f"node at {address} (slower for large data); run `nebula start --address {address}` here to "
                  "give this machine a node and its shared-memory store", stacklevel=4)
    return address


def _auto_address(path: str) -> tuple[str, bytes]:
    import json
    from .session_files import read_token
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        raise ConnectionError("address='auto' found no running cluster of yours on this machine: start one "
                              "with `nebula start --head`, or call nebula.init() for an embedded one") from None
    return info.get("unix_address") or info["address"], read_token(info["token_file"])


def _start_embedded(args: dict, logging_level, node_config):
    from .local_cluster import start_local_cluster
    cluster = start_local_cluster(args["num_cpus"], args["num_gpus"], args["resources"],
                                  args["object_store_memory"], logging_level, node_config,
                                  num_nodes=args.get("num_nodes") or 1, meanwhile=_import_client_side)
    from .session import Session
    try:
        session = Session(cluster.address, cluster.token, namespace=args.get("namespace") or "")
    except BaseException:
        cluster.stop()
        raise
    _state["cluster"] = cluster
    return session


def _import_client_side() -> None:
    """What this process needs to connect, imported while the node agent starts."""
    from . import session, task_submitter, actor_caller  # noqa: F401


def _cluster_info(session) -> ClusterInfo:
    cluster = _state["cluster"]
    return ClusterInfo(address=session.address, node_id=session.node_id, session_dir=session.session_dir,
                       resources=dict(session.config.get("resources", {})),
                       embedded=cluster is not None, job_id=session.job_id,
                       tcp_address=cluster.tcp_address if cluster is not None else "")


def local_cluster():
    """The LocalCluster this process started with init() (None when it joined one)."""
    return _state["cluster"]


def _auto_init():
    with _lock:
        if session_module.current_session_or_none() is None:
            init()
        return session_module.current_session_or_none()


def join_env() -> dict[str, str]:
    """Environment variables with which a process on this machine joins the cluster this process
    is connected to (``NEBULA_ADDRESS``, ``NEBULA_TOKEN``): its ``nebula.init()`` then needs no
    arguments. Give them to a child through its environment, never on its command line."""
    session = session_module.current_session_or_none()
    if session is None:
        raise RuntimeError("not connected to a cluster: call nebula.init() first")
    return {"NEBULA_ADDRESS": session.address, "NEBULA_TOKEN": session.token.decode()}


def is_initialized() -> bool:
    return session_module.current_session_or_none() is not None


def shutdown() -> None:
    """Disconnect; stop the embedded cluster if this process started it (nothing is left behind)."""
    with _lock:
        session = _session_if_any()  # at exit of a process that never connected: imports nothing
        if session is not None:
            session_module.set_current_session(None)
        if session is not None and session.pid == os.getpid():
            session.close()
        cluster, _state["cluster"] = _state["cluster"], None
        if cluster is not None and session is not None and session.pid == os.getpid():
            cluster.stop()
        _state["args"] = None


atexit.register(shutdown)


# ---- remote -----------------------------------------------------------------------------------

def remote(*args, **kwargs):
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function (a task) or a class (an actor)."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@nebula.remote takes keyword options only, e.g. @nebula.remote(num_cpus=2)")
    return lambda target: _make_remote(target, kwargs)


def _make_remote(target, options: dict):
    import inspect
    from .actor import ActorClass
    from .remote_function import RemoteFunction
    if inspect.isclass(target):
        return ActorClass(target, make_options(ActorOptions, **options))
    if not callable(target):
        raise TypeError(f"@nebula.remote needs a function or a class, got {type(target).__name__}")
    return RemoteFunction(target, make_options(TaskOptions, **options))


# ---- objects ----------------------------------------------------------------------------------

def put(value) -> ObjectRef:
    if isinstance(value, ObjectRef):
        raise TypeError("nebula.put() of an ObjectRef is not allowed; pass the ref itself, or wrap it in a list")
    return session_module.current_session().put(value)


def get(refs, *, timeout: float | None = None):
    """The value(s) of an ObjectRef or a list of them; blocks until ready or ``timeout`` s."""
    session = session_module.current_session()
    if isinstance(refs, ObjectRef):
        return session.get([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        _check_refs(refs, "get")
        return session.get(list(refs), timeout)
    if hasattr(refs, "_actor_id"):
        raise TypeError("nebula.get() takes ObjectRefs, not an actor handle: call a method with .remote() first")
    raise TypeError(f"nebula.get() takes an ObjectRef or a list of them, got {type(refs).__name__}")


def _check_refs(refs, fn: str) -> None:
    for i, ref in enumerate(refs):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"nebula.{fn}() got a {type(ref).__name__} at position {i}; it takes ObjectRefs "
                            "(the results of .remote() or nebula.put())")


def wait(refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True):
    """Wait until ``num_returns`` of ``refs`` are ready; returns (ready, not_ready) in input order."""
    from .waiting import wait_for
    if isinstance(refs, ObjectRef) or not isinstance(refs, (list, tuple)):
        raise TypeError("nebula.wait() takes a list of ObjectRefs")
    _check_refs(refs, "wait")
    if len(set(refs)) != len(refs):
        raise ValueError("nebula.wait() got duplicate ObjectRefs")
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns must be between 0 and len(refs) ({len(refs)}), got {num_returns}")
    return wait_for(session_module.current_session(), list(refs), num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``: pending ones are dropped, running ones interrupted."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"nebula.cancel() takes an ObjectRef, got {type(ref).__name__}")
    session = session_module.current_session()
    session.post(session.tasks.cancel, ref.task_id(), force)
    session.post(session.actors.cancel, ref.task_id())


def kill(actor, *, no_restart: bool = True) -> None:
    from . import protocol as P
    if not hasattr(actor, "_actor_id"):
        raise TypeError(f"nebula.kill() takes an actor handle, got {type(actor).__name__}")
    session = session_module.current_session()
    session.send_node(P.KillActor(actor._actor_id, no_restart))
    if no_restart:  # calls made after kill() fail at once, even before the process is gone
        session.post(session.actors.on_killed, actor._actor_id)


def get_actor(name: str, namespace: str | None = None):
    from . import protocol as P
    from .actor import handle_from_meta
    session = session_module.current_session()
    ns = namespace if namespace is not None else session.namespace
    reply = session.request(lambda rid: P.GetNamedActor(rid, name, ns)).result(30)
    if reply.error:
        raise ValueError(f"Failed to look up actor {name!r}: {reply.error}")
    return handle_from_meta(reply.actor_id, reply.spec_meta)
