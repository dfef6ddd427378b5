"""What a node agent does before anything else: bind its socket and start its first workers.

A worker needs a few hundred milliseconds to start Python and import the runtime, and the
node agent about as long to import itself. ``node_main`` therefore binds the node's socket
and starts the first prestarted worker with only this (light) module loaded, then imports
the node agent (and detects the node's resources) while it starts; a worker that connects
early waits in the socket's backlog. The node agent adopts it (NodeAgent ``prestarted=``)
and starts its other workers through the same functions.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys

from .ids import new_id
from .thread_limits import thread_limit_env


def detect_resources(config: dict) -> None:
    """Fill in ``resources`` and ``store_capacity`` from ``config["detect"]``: what the starting
    process was asked for (checked there), the rest detected here (psutil, NVML: tens of
    milliseconds, spent while the first worker starts). Values already in the config stay."""
    wanted = config.pop("detect", None)
    if wanted is None:
        return
    if "resources" not in config:
        from .node_resources import NodeResources
        config["resources"] = NodeResources.detect(num_cpus=wanted["num_cpus"], num_gpus=wanted["num_gpus"],
                                                   resources=wanted["resources"]).total
    if "store_capacity" not in config:
        from .store_arena import default_store_capacity
        config["store_capacity"] = wanted["store_capacity"] or default_store_capacity()


def start_huge_page_file(config: dict):
    """Start making the store's huge-page file (store_hugepages.py) while the node imports
    itself; None where NEBULA_HUGE_PAGES=0 turned that off."""
    from .store_hugepages import HugePageFile, huge_pages_wanted
    if not huge_pages_wanted():
        return None
    return HugePageFile(config["store_capacity"], config["session_dir"])


def node_address(session_dir: str) -> str:
    return f"unix:{os.path.join(session_dir, 'node.sock')}"


def bind_node_listener(address: str) -> socket.socket:
    """The node's listening Unix socket (owner-only); connections queue until it accepts."""
    path = address[5:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(512)
    return sock


def prestart_count(config: dict, resources: dict) -> int:
    """How many workers a node starts for the driver's environment (one per CPU)."""
    if not config.get("prestart_env"):
        return 0
    return int(config.get("prestart_workers", resources.get("CPU", 1)))


def _cpus_known_early(config: dict) -> float:
    """The node's CPUs before detection: as given, else at least 1 (what detection finds)."""
    if "resources" in config:
        return config["resources"].get("CPU", 1)
    wanted = (config.get("detect") or {}).get("num_cpus")
    return 1 if wanted is None else wanted


def worker_environment(worker_id: str, runtime_env: bytes, *, address: str, session_dir: str,
                       token: bytes, tcp_host: str = "") -> tuple[dict, str | None, str]:
    """The environment, working directory and interpreter of one worker process."""
    env = dict(os.environ)
    user_env = pickle.loads(runtime_env) if runtime_env else {}
    env.update(user_env.get("env_vars") or {})
    env.update(thread_limit_env(1, env))
    if tcp_host:
        env["NEBULA_TCP_HOST"] = tcp_host
    env.update({"NEBULA_NODE_ADDRESS": address, "NEBULA_WORKER_ID": worker_id,
                "NEBULA_SESSION_DIR": session_dir, "NEBULA_TOKEN": token.decode(),
                "NEBULA_WORKER_ENV": runtime_env.hex()})
    cwd = user_env.get("working_dir") or user_env.get("_cwd") or None
    if cwd and not os.path.isdir(cwd):
        cwd = None
    extra_path = [p for p in [user_env.get("working_dir"), *user_env.get("_sys_path", [])] if p]
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(extra_path + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env, cwd, user_env.get("_python") or sys.executable


def worker_log_path(session_dir: str, worker_id: str) -> str:
    return os.path.join(session_dir, "logs", f"worker-{worker_id}.out")


def spawn_worker_process(python: str, env: dict, cwd: str | None, log_path: str):
    """Start ``python -m nebula.worker_main`` as a child of this process (the slow way, no zygote)."""
    from .child_process import spawn_child
    log_file = open(log_path, "ab")
    try:
        return spawn_child([python, "-m", "nebula.worker_main"], env=env, cwd=cwd,
                           stdout=log_file, stderr=log_file, name="worker")
    finally:
        log_file.close()


def start_early_workers(config: dict, token: bytes) -> tuple[socket.socket | None, list]:
    """node_main's first step: the node's listener and its first prestarted worker, as
    ``(listener, [(worker_id, popen)])`` (the node starts the others once that one is up);
    ``(None, [])`` where the node starts it later (a node joining a cluster, or one that
    prestarts no worker)."""
    if config.get("join") or prestart_count(config, {"CPU": _cpus_known_early(config)}) <= 0:
        return None, []
    session_dir = config["session_dir"]
    address = node_address(session_dir)
    listener = bind_node_listener(address)
    worker_id = new_id(8)
    env, cwd, python = worker_environment(worker_id, bytes.fromhex(config["prestart_env"][1]), address=address,
                                          session_dir=session_dir, token=token, tcp_host=config.get("tcp_host", ""))
    return listener, [(worker_id, spawn_worker_process(python, env, cwd, worker_log_path(session_dir, worker_id)))]
