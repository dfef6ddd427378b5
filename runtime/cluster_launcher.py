"""``nebula start`` / ``nebula stop``: node agents that outlive the command that started them.

Started in the background they run in their own session (no lifeline to the CLI) and are
recorded in ``/tmp/nebula-<uid>/started.json`` for ``nebula stop``; with ``--block`` the
CLI stays their parent, so killing it (even SIGKILL) takes the node and its workers along.
The token comes from ``--token-stdin``, ``--token-file``, ``NEBULA_TOKEN`` or a fresh 0600
file in the session directory: never from the command line.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from .child_process import spawn_child, terminate_tree
from .local_cluster import _node_config, _node_env, _wait_ready
from .session_files import current_cluster_file, new_session_dir, read_token, user_root, write_token_file


def start_from_cli(args) -> int:
    session_dir = new_session_dir()
    token, token_file = _token_for(args, session_dir)
    config = _node_config(session_dir, args.num_cpus, args.num_gpus, args.resources, args.object_store_memory,
                          logging.INFO)
    config.update(heartbeat_timeout=args.heartbeat_timeout, allow_plaintext=bool(getattr(args, "no_tls", False)))
    if args.head:
        config.update(tcp_host=args.host or "127.0.0.1", tcp_port=args.port)
    else:
        config.update(tcp_host=args.host or _route_to(args.address), join=args.address, prestart_workers=0)
    from .node_cluster import check_plaintext_allowed
    check_plaintext_allowed(config["tcp_host"], config["allow_plaintext"])  # fail here, not in the log
    if args.block:
        return _run_blocking(config, token, session_dir, token_file if args.head else "")
    unix_address, tcp_address = _start_detached(config, token, session_dir)
    if args.head:
        _write_current(tcp_address, unix_address, token_file, session_dir)
        if args.dashboard_port:
            _start_dashboard(args, unix_address, token_file, session_dir)
        for _ in range(args.nodes - 1):
            _start_extra_node(args, tcp_address, token)
    _print_started(args.head, tcp_address, token_file, session_dir)
    return 0


def _token_for(args, session_dir: str) -> tuple[bytes, str]:
    if getattr(args, "token_stdin", False):
        path = os.path.join(session_dir, "token")
        return write_token_file(path, _token_from_stdin()), path
    if args.token_file:
        return read_token(args.token_file), os.path.abspath(args.token_file)
    path = os.path.join(session_dir, "token")
    if os.environ.get("NEBULA_TOKEN"):
        return write_token_file(path, os.environ["NEBULA_TOKEN"].strip().encode()), path
    if not args.head:
        current = _read_current()
        if current and current.get("address") == args.address:
            return read_token(current["token_file"]), current["token_file"]
        raise ValueError("joining a cluster needs its token: pass --token-file FILE or set NEBULA_TOKEN")
    return write_token_file(path), path


def _token_from_stdin() -> bytes:
    token = sys.stdin.readline().strip()
    if not token:
        raise ValueError("--token-stdin found no token on standard input (pipe it in, one line)")
    return token.encode()


def _route_to(address: str) -> str:
    """The local address of the interface that routes to ``address`` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, int(port)))
        return probe.getsockname()[0]
    finally:
        probe.close()


def _start_detached(config: dict, token: bytes, session_dir: str) -> tuple[str, str]:
    log_file = open(os.path.join(session_dir, "logs", "node.out"), "ab")
    popen = subprocess.Popen([sys.executable, "-m", "nebula.node_main"], env=_node_env(config, token),
                             stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True)
    log_file.close()
    addresses = _wait_ready(popen, session_dir)
    _record_started(popen.pid, session_dir)
    return addresses


def _start_dashboard(args, unix_address: str, token_file: str, session_dir: str) -> None:
    """The dashboard page as its own process (it needs the notebook extras: bokeh)."""
    from .node_cluster import check_plaintext_allowed
    check_plaintext_allowed(args.dashboard_host, bool(args.no_tls))
    env = {**os.environ, "NEBULA_ADDRESS": unix_address, "NEBULA_TOKEN_FILE": token_file}
    env.pop("NEBULA_TOKEN", None)
    log_file = open(os.path.join(session_dir, "logs", "dashboard.out"), "ab")
    popen = subprocess.Popen([sys.executable, "-m", "nebula.widgets.standalone", "--port", str(args.dashboard_port),
                              "--host", args.dashboard_host], env=env, stdin=subprocess.DEVNULL,
                             stdout=log_file, stderr=log_file, start_new_session=True)
    log_file.close()
    _record_started(popen.pid, session_dir)
    print(f"dashboard: http://{args.dashboard_host}:{args.dashboard_port}/dashboard?token=<contents of the token file>")


def _start_extra_node(args, head_address: str, token: bytes) -> None:
    node_dir = new_session_dir()
    config = _node_config(node_dir, args.num_cpus, args.num_gpus, args.resources, args.object_store_memory,
                          logging.INFO)
    config.update(tcp_host=args.host or "127.0.0.1", join=head_address, prestart_workers=0,
                  heartbeat_timeout=args.heartbeat_timeout)
    _start_detached(config, token, node_dir)


def _run_blocking(config: dict, token: bytes, session_dir: str, head_token_file: str) -> int:
    log_file = open(os.path.join(session_dir, "logs", "node.out"), "ab")
    popen = spawn_child([sys.executable, "-m", "nebula.node_main"], env=_node_env(config, token),
                        stdout=log_file, stderr=log_file, name="node agent")
    unix_address, tcp_address = _wait_ready(popen, session_dir)
    if head_token_file:
        _write_current(tcp_address, unix_address, head_token_file, session_dir)
    print(f"node agent running at {tcp_address} (session {session_dir}); Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return popen.wait() or 0
    except KeyboardInterrupt:
        terminate_tree(popen)
        return 0


def _print_started(head: bool, tcp_address: str, token_file: str, session_dir: str) -> None:
    what = "head" if head else "node"
    print(f"started a Nebula {what} at {tcp_address}\n  session: {session_dir}\n  token file: {token_file}")
    if head:
        print(f"join from another machine (copy the token file there first):\n"
              f"  nebula start --address {tcp_address} --token-file TOKEN_FILE\n"
              "connect a driver on this machine with nebula.init(address='auto')")


def _started_file() -> str:
    return os.path.join(user_root(), "started.json")


def _record_started(pid: int, session_dir: str) -> None:
    entries = _read_json(_started_file(), [])
    entries.append({"pid": pid, "session_dir": session_dir, "started": time.time()})
    _write_json(_started_file(), entries)


def _write_current(tcp_address: str, unix_address: str, token_file: str, session_dir: str) -> None:
    _write_json(current_cluster_file(), {"address": tcp_address, "unix_address": unix_address,
                                         "token_file": token_file, "session_dir": session_dir})


def _read_current() -> dict | None:
    return _read_json(current_cluster_file(), None)


def _read_json(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json(path: str, value) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def stop_started() -> int:
    entries = _read_json(_started_file(), [])
    for entry in reversed(entries):
        _stop_pid(entry["pid"])
    for path in (_started_file(), current_cluster_file()):
        if os.path.exists(path):
            os.unlink(path)
    print(f"stopped {len(entries)} process(es) (node agents and dashboards)")
    return 0


def _stop_pid(pid: int) -> None:
    import psutil
    try:
        proc = psutil.Process(pid)
        if not any(m in " ".join(proc.cmdline()) for m in ("nebula.node_main", "nebula.widgets.standalone")):
            return  # the pid was reused by something else
        proc.terminate()
        proc.wait(5)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        pass
