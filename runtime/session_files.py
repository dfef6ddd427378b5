"""Where a cluster keeps its files: a 0700 session directory, the token, sockets and logs.

    /tmp/nebula-<uid>/                 0700, one per user
        current                        address and token file of this user's `nebula start`
        s-<time>-<pid>/                one per cluster (0700)
            token                      0600, created with O_EXCL
            node.sock, w-<id>.sock     Unix sockets (the directory's mode guards them)
            logs/                      rotating log files of every process
            spill/                     objects spilled to disk
"""
from __future__ import annotations

import os
import secrets
import tempfile
import time


def user_root() -> str:
    base = os.environ.get("NEBULA_TMPDIR") or tempfile.gettempdir()
    root = os.path.join(base, f"nebula-{os.getuid()}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{root} must be a directory owned by you with mode 0700 (it holds cluster "
            "tokens); remove it or set NEBULA_TMPDIR to a private directory")
    return root


KEEP_SESSIONS = 20


def new_session_dir(prune: bool = True) -> str:
    """A new session directory; ``prune=False``: the caller prunes old ones later (prune_old_sessions)."""
    if prune:
        prune_old_sessions()
    name = f"s-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"
    path = os.path.join(user_root(), name)
    check_socket_room(path)
    os.mkdir(path, 0o700)
    for sub in ("logs", "spill"):
        os.mkdir(os.path.join(path, sub), 0o700)
    return path


def check_socket_room(directory: str) -> None:
    """Unix socket paths hold 107 bytes at most: fail now, with what to do, not at bind time."""
    longest = os.path.join(directory, "w-" + "0" * 16 + ".sock")
    if len(longest.encode()) > 107:
        raise ValueError(f"the directory {directory} is too long for Unix socket paths (107 bytes at most); "
                         "set NEBULA_TMPDIR to a shorter directory, such as /tmp")


def prune_old_sessions(keep: int = KEEP_SESSIONS) -> None:
    """Remove the oldest finished session directories (their logs) beyond the ``keep`` newest."""
    import shutil
    root = user_root()
    sessions = sorted((d for d in os.listdir(root) if d.startswith("s-")),
                      key=lambda d: _mtime(os.path.join(root, d)))
    for name in sessions[:-keep] if keep else sessions:
        path = os.path.join(root, name)
        if not _node_listening(os.path.join(path, "node.sock")):
            shutil.rmtree(path, ignore_errors=True)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _node_listening(sock_path: str) -> bool:
    import socket
    if not os.path.exists(sock_path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.2)
        probe.connect(sock_path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def write_token_file(path: str, token: bytes | None = None) -> bytes:
    """Create ``path`` (mode 0600, must not exist) holding a fresh or given token."""
    token = token or secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token)
    return token


def read_token(path: str | None = None) -> bytes:
    """The token from ``path``, else NEBULA_TOKEN, else NEBULA_TOKEN_FILE."""
    if path:
        return _read_token_file(path)
    if os.environ.get("NEBULA_TOKEN"):
        return os.environ["NEBULA_TOKEN"].strip().encode()
    if os.environ.get("NEBULA_TOKEN_FILE"):
        return _read_token_file(os.environ["NEBULA_TOKEN_FILE"])
    raise ValueError("no cluster token: set NEBULA_TOKEN_FILE (or NEBULA_TOKEN), or pass token=")


def _read_token_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the cluster token file {path}: {exc}") from None


def current_cluster_file() -> str:
    return os.path.join(user_root(), "current")
