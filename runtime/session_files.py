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


def new_session_dir() -> str:
    name = f"s-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"
    path = os.path.join(user_root(), name)
    os.mkdir(path, 0o700)
    for sub in ("logs", "spill"):
        os.mkdir(os.path.join(path, sub), 0o700)
    return path


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
