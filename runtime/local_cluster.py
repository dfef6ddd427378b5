"""Starting a node agent on this machine: the embedded default and ``nebula start``.

The agent is spawned from one long-lived thread of this process (the parent-death signal
fires when the *thread* that started a child exits), gets its config and token through
the environment (never argv), and is ready when it writes ``ready`` in its session dir.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time

from .child_process import spawn_child, terminate_tree
from .node_resources import NodeResources
from .session_files import check_socket_room, new_session_dir, prune_old_sessions, write_token_file
from .store_arena import default_store_capacity, parse_memory_size

log = logging.getLogger("nebula.cluster")
READY_TIMEOUT = 30.0


class LocalCluster:
    """Node agents this process started (and will stop): the first is the head."""

    def __init__(self, popen, session_dir: str, address: str, token: bytes, tcp_address: str = ""):
        self.popen, self.session_dir, self.address, self.token = popen, session_dir, address, token
        self.tcp_address = tcp_address
        self.extra_nodes: list = []
        self.draining_nodes: list = []  # removed with remove_node(): finishing their work, then exiting

    @property
    def token_file(self) -> str:
        return os.path.join(self.session_dir, "token")

    def add_node(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None) -> str:
        """Start one more node agent on this machine that joins this (multi-node) cluster."""
        if not self.tcp_address:
            raise RuntimeError("this cluster was started single-node; start it with num_nodes >= 2 (or "
                               "multi_node=True) to add nodes")
        index = len(self.extra_nodes) + len(self.draining_nodes) + 2
        node_dir = os.path.join(self.session_dir, f"n{index}")
        check_socket_room(node_dir)
        for sub in ("", "logs", "spill"):
            os.makedirs(os.path.join(node_dir, sub), mode=0o700, exist_ok=True)
        config = _node_config(node_dir, num_cpus, num_gpus, resources, object_store_memory, logging.INFO)
        config.update({"tcp_host": "127.0.0.1", "join": self.tcp_address})
        popen = _spawner().spawn(_node_argv(), _node_env(config, self.token), node_dir)
        popen.node_address = _wait_ready(popen, node_dir)[0]
        popen.node_dir = node_dir
        self.extra_nodes.append(popen)
        return node_dir

    def remove_node(self, grace_s: float = 30.0, prefer_idle: bool = True, wait: bool = False) -> str:
        """Drain one added node and return its id: it takes no new work, its running tasks get
        ``grace_s`` seconds to finish, then it exits with its workers (see node_drain.py).
        ``prefer_idle``: the node running the least work (ties: the newest); else the newest.
        ``wait``: return only once it has exited."""
        from .node_drain import node_load, send_drain
        nodes = [p for p in self.extra_nodes if p.poll() is None]
        if not nodes:
            raise ValueError("no added node is running: the head node stays while the cluster runs "
                             "(stop() stops the whole cluster)")
        if prefer_idle:
            loads = {p.pid: _load_or_busy(node_load, p, self.token) for p in nodes}
            nodes.sort(key=lambda p: loads[p.pid], reverse=True)  # stable: the newest idle one ends last
        popen = nodes[-1]
        popen.node_id = send_drain(popen.node_address, self.token, grace_s)
        self.extra_nodes.remove(popen)
        self.draining_nodes.append(popen)
        if wait:
            popen.wait(grace_s + 15.0)
        return popen.node_id

    def stop(self) -> None:
        for popen in self.extra_nodes + self.draining_nodes:
            terminate_tree(popen, timeout=3.0)
        terminate_tree(self.popen, timeout=3.0)
        _remove_secrets(self.session_dir)


def _remove_secrets(session_dir: str) -> None:
    """The cluster is gone: its token and sockets go too; its logs stay for reading."""
    import glob
    for path in [os.path.join(session_dir, "token"), *glob.glob(os.path.join(session_dir, "*.sock")),
                 *glob.glob(os.path.join(session_dir, "n*", "*.sock"))]:
        try:
            os.unlink(path)
        except OSError:
            pass


def _load_or_busy(node_load, popen, token: bytes) -> float:
    try:
        return node_load(popen.node_address, token)
    except Exception as exc:  # noqa: BLE001 - any failure to ask means the same
        log.warning("could not ask node pid %d how busy it is (%s); draining it last", popen.pid, exc)
        return float("inf")


def _node_env(config: dict, token: bytes) -> dict:
    env = {**os.environ, "NEBULA_NODE_CONFIG": json.dumps(config), "NEBULA_TOKEN": token.decode()}
    env.pop("NEBULA_TOKEN_FILE", None)
    if _package_dir() is not None:  # for _NODE_BOOT
        env.update({"NEBULA_BOOT_PATH": os.pathsep.join(p for p in sys.path if p), "NEBULA_BOOT_PACKAGE": _package_dir()})
    return env


# The node agent's interpreter starts without `site` (-S): site-packages' .pth files cost every
# interpreter tens of milliseconds at start-up, and the node agent runs none of the user's
# code, so it needs none of their effects. It gets this process's sys.path instead (for
# msgspec, psutil, ...), and the nebula package from the directory this process imported it
# from (an editable install finds it through a .pth file's import hook, which -S skips).
# Its workers and zygote start with `site` as usual: they run the user's code.
_NODE_BOOT = (
    "import os, sys; "
    "sys.path.extend(p for p in os.environ.pop('NEBULA_BOOT_PATH').split(os.pathsep) if p not in sys.path); "
    "import importlib.util as u; d = os.environ.pop('NEBULA_BOOT_PACKAGE'); "
    "s = u.spec_from_file_location('nebula', os.path.join(d, '__init__.py'), submodule_search_locations=[d]); "
    "sys.modules['nebula'] = m = u.module_from_spec(s); s.loader.exec_module(m); "
    "from nebula.node_main import main; main()")


def _package_dir() -> str | None:
    """Where this process imported nebula from, if _NODE_BOOT can load it from there."""
    directory = os.path.dirname(os.path.abspath(__file__))
    return directory if os.path.isfile(os.path.join(directory, "__init__.py")) else None


def _node_argv() -> list[str]:
    if _package_dir() is None or sys.flags.no_site:
        return [sys.executable, "-m", "nebula.node_main"]
    return [sys.executable, "-S", "-c", _NODE_BOOT]


def start_local_cluster(num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                        logging_level=logging.INFO, extra_config: dict | None = None,
                        num_nodes: int = 1, multi_node: bool = False, meanwhile=None) -> LocalCluster:
    """Start a head node agent (and ``num_nodes - 1`` more joining it) on this machine.
    ``meanwhile()`` runs while the head starts (then this waits for it to be ready)."""
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}")
    session_dir = new_session_dir(prune=False)  # old ones are pruned while the node agent starts
    token = write_token_file(os.path.join(session_dir, "token"))
    config = _node_config(session_dir, num_cpus, num_gpus, resources, object_store_memory, logging_level,
                          detect_in_node=True)
    if num_nodes > 1 or multi_node:
        config.update({"tcp_host": "127.0.0.1", "tcp_port": 0})
    config.update(extra_config or {})
    popen = _spawner().spawn(_node_argv(), _node_env(config, token), session_dir)
    try:
        prune_old_sessions()
        if meanwhile is not None:
            meanwhile()
    except BaseException:
        terminate_tree(popen)
        raise
    address, tcp_address = _wait_ready(popen, session_dir)
    cluster = LocalCluster(popen, session_dir, address, token, tcp_address)
    try:
        for _ in range(num_nodes - 1):
            cluster.add_node(num_cpus, num_gpus, resources, object_store_memory)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_config(session_dir, num_cpus, num_gpus, resources, object_store_memory, logging_level,
                 detect_in_node: bool = False) -> dict:
    """The node's config. ``detect_in_node``: what was not given (CPUs, GPUs, memory, store size)
    is detected by the node agent (node_launch.detect_resources) while its first worker starts,
    not here before it starts; the arguments are checked here all the same."""
    config = {"session_dir": session_dir, "logging_level": logging_level, "prestart_env": _prestart_env()}
    if detect_in_node:
        config["detect"] = _checked_request(num_cpus, num_gpus, resources, object_store_memory)
        return config
    total = NodeResources.detect(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources).total
    capacity = parse_memory_size(object_store_memory) if object_store_memory else default_store_capacity()
    config.update({"resources": total, "store_capacity": capacity})
    return config


def _checked_request(num_cpus, num_gpus, resources, object_store_memory) -> dict:
    """The resource arguments, checked (ValueError as NodeResources.detect raises it) and made
    plain (JSON) values, detecting nothing."""
    given = NodeResources.detect(num_cpus=0 if num_cpus is None else num_cpus,
                                 num_gpus=0 if num_gpus is None else num_gpus, resources=resources, memory=0).total
    return {"num_cpus": None if num_cpus is None else given["CPU"],
            "num_gpus": None if num_gpus is None else given.get("GPU", 0),
            "resources": {k: v for k, v in given.items() if k not in ("CPU", "GPU", "memory")} or None,
            "store_capacity": parse_memory_size(object_store_memory) if object_store_memory else None}


def _prestart_env() -> list:
    """Warm up workers for the environment this process's own tasks will ask for."""
    import pickle
    from .options import runtime_env_key
    env = {"_python": sys.executable, "_cwd": os.getcwd(),
           "_sys_path": [p for p in sys.path if p and os.path.isdir(p) and "-packages" not in p]}
    return [runtime_env_key(env), pickle.dumps(env).hex()]


def _wait_ready(popen, session_dir: str) -> tuple[str, str]:
    ready = os.path.join(session_dir, "ready")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            with open(ready) as f:
                lines = f.read().split("\n")
            if len(lines) >= 2:
                return lines[0], lines[1]
        if popen.poll() is not None:
            raise RuntimeError(f"the Nebula node agent exited during start-up ({popen.returncode}); its log:\n"
                               + _log_tail(session_dir))
        time.sleep(0.002)
    terminate_tree(popen)
    raise RuntimeError(f"the Nebula node agent did not start within {READY_TIMEOUT:.0f} s; its log:\n"
                       + _log_tail(session_dir))


def _log_tail(session_dir: str) -> str:
    lines = []
    for name in ("node.out", "node.log"):
        try:
            with open(os.path.join(session_dir, "logs", name), errors="replace") as f:
                lines += f.readlines()[-30:]
        except OSError:
            pass
    return "".join(lines) or "(empty)"


class _Spawner:
    """A daemon thread that lives as long as this process and starts every child."""

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name="nebula-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            argv, env, session_dir, reply = self.requests.get()
            try:
                log_file = open(os.path.join(session_dir, "logs", "node.out"), "ab")
                reply.put(spawn_child(argv, env=env, stdout=log_file, stderr=log_file, name="node agent"))
                log_file.close()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                reply.put(exc)

    def spawn(self, argv, env, session_dir):
        reply: queue.Queue = queue.Queue()
        self.requests.put((argv, env, session_dir, reply))
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result


_spawner_instance: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawner() -> _Spawner:
    global _spawner_instance
    with _spawner_lock:
        if _spawner_instance is None or os.getpid() != getattr(_spawner_instance, "pid", os.getpid()):
            _spawner_instance = _Spawner()
            _spawner_instance.pid = os.getpid()
        return _spawner_instance
