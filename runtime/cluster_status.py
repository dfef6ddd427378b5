"""``nebula status`` and ``nebula logs``: read a running cluster through its public state feed."""
from __future__ import annotations

import glob
import json
import os
import time


def print_status(address: str, as_json: bool) -> int:
    import nebula
    nebula.init(address=address)
    try:
        snap = nebula.state.snapshot()
        if as_json:
            print(json.dumps(snap.to_dict(), default=_plain, indent=1))
        else:
            print(format_status(snap))
    finally:
        nebula.shutdown()
    return 0


def _plain(value):
    return dict(value) if hasattr(value, "items") else str(value)


def format_status(snap) -> str:
    lines = [f"Nebula cluster: {len(snap.nodes)} node(s)"]
    for node in snap.nodes:
        total, free = node["resources_total"], node["resources_available"]
        used = ", ".join(f"{k} {total[k] - free.get(k, 0):g}/{total[k]:g}" for k in sorted(total) if k != "memory")
        store = node["store"]
        lines.append(f"  {node['node_id'][:12]}  {'alive' if node['alive'] else 'DEAD '}  {used}  "
                     f"store {store.get('used', 0) / 2**20:.1f}/{store.get('capacity', 0) / 2**20:.0f} MiB, "
                     f"{store.get('objects', 0)} objects")
    lines.append(f"  actors: {sum(1 for a in snap.actors if a['state'] != 'DEAD')} alive, "
                 f"workers: {len(snap.workers)} on this node")
    if snap.tasks_by_state:
        lines.append("  tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(snap.tasks_by_state.items())))
    return "\n".join(lines)


def print_logs(node: str | None, worker_pid: int | None, follow: bool) -> int:
    files = _log_files(node, worker_pid)
    if not files:
        print("no log files found (is a cluster of yours running? see `nebula start`)")
        return 1
    positions = {}
    for path in files:
        print(f"==> {path} <==")
        positions[path] = _print_from(path, 0)
    while follow:
        time.sleep(0.5)
        for path in files:
            positions[path] = _print_from(path, positions[path])
    return 0


def _print_from(path: str, offset: int) -> int:
    with open(path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
        print(text, end="", flush=True)
        return f.tell()


def _log_files(node: str | None, worker_pid: int | None) -> list[str]:
    from .session_files import current_cluster_file
    try:
        with open(current_cluster_file()) as f:
            session_dir = json.load(f)["session_dir"]
    except (OSError, ValueError, KeyError):
        return []
    if node and os.path.isdir(node):
        session_dir = node
    files = sorted(glob.glob(os.path.join(session_dir, "logs", "*")))
    if worker_pid is not None:
        files = [f for f in files if _mentions_pid(f, worker_pid)]
    return files


def _mentions_pid(path: str, pid: int) -> bool:
    try:
        with open(path, errors="replace") as f:
            return f"pid={pid}" in f.read()
    except OSError:
        return False
