"""The wire on a real cluster: authentication, hostile bytes before and after it, version checks.

Every listener (the node agent's socket and each worker's ``w-*.sock``) must survive anything a
peer sends: a bad connection is closed, never the process, and nothing a peer sends before it
authenticated is ever unpickled.
"""
from __future__ import annotations

import glob
import os
import pickle
import socket
import struct
import threading
import time

import psutil
import pytest

import nebula
from nebula import protocol as P
from nebula import wire
from nebula.exceptions import AuthenticationError

pytestmark = pytest.mark.timeout(60)


@nebula.remote
def ping():
    return os.getpid()


class CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def token_of(info) -> bytes:
    with open(os.path.join(info["session_dir"], "token"), "rb") as f:
        return f.read().strip()


def worker_addresses(info) -> list[str]:
    return [f"unix:{path}" for path in glob.glob(os.path.join(info["session_dir"], "w-*.sock"))]


def raw_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address[5:])
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 8.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return received
    finally:
        sock.close()


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def hostile_payloads(marker: str) -> dict[str, bytes]:
    bomb = pickle.dumps(CreatesFileWhenUnpickled(marker))
    hello = wire.encode_frame(P.Hello(wire.VERSION, wire.PYTHON, "driver", os.urandom(16)))
    return {
        "random bytes": os.urandom(3000),
        "huge length prefix": struct.pack("<I", 0xFFFFFFFF) + os.urandom(64),
        "oversized handshake frame": frame(os.urandom(wire.HANDSHAKE_LIMIT + 1)),
        "truncated frame": struct.pack("<I", 200) + os.urandom(20),
        "a pickle as a frame": frame(bomb),
        "a bare pickle": bomb,
        "a task before authenticating": wire.encode_frame(P.ExecuteTask(
            "t", "f", bomb, bomb, [], "evil", "o", "j", arg_refs=[["x", bomb]])),
        "hello, then a pickle instead of the proof": hello + frame(bomb),
        "hello, then garbage": hello + os.urandom(500),
        "empty frame": frame(b""),
        "zero bytes, then close": b"",
    }


def node_agent_pid() -> int:
    agents = [p.pid for p in psutil.Process().children() if "nebula.node_main" in " ".join(p.cmdline())]
    assert len(agents) == 1
    return agents[0]


def assert_cluster_serves(info, worker_pids: set) -> None:
    assert nebula.get(ping.remote(), timeout=30)
    alive = {w["pid"] for w in nebula.state.snapshot().workers}
    assert worker_pids <= alive, "a worker died from bytes a stranger sent it"


@pytest.fixture
def listeners(cluster):
    nebula.get([ping.remote(), ping.remote()])  # the workers are up and listening
    workers = worker_addresses(cluster)
    assert workers
    return {"node": cluster["address"], "worker": workers[0]}


# ---- authentication ----------------------------------------------------------------------

def test_wrong_token_is_refused(cluster, listeners):
    for address in listeners.values():
        with pytest.raises(AuthenticationError):
            wire.connect(address, b"not-the-token", "driver")


def test_right_token_is_welcomed(cluster):
    sock, welcome, fds = wire.connect(cluster["address"], token_of(cluster), "driver")
    try:
        assert welcome.node_id == cluster["node_id"]
        assert len(fds) == 1  # the object store's memory
    finally:
        for fd in fds:
            os.close(fd)
        sock.close()


def test_version_mismatch_is_refused_naming_both_versions(cluster, listeners):
    for address in listeners.values():
        sock = raw_socket(address)
        sock.sendall(wire.encode_frame(P.Hello("0.0.0-other", "2.7", "driver", os.urandom(16))))
        reply = read_until_closed(sock)
        (length,) = struct.unpack("<I", reply[:4])
        refused = wire.decode_message(reply[4:4 + length])
        assert isinstance(refused, P.Refused)
        assert "0.0.0-other" in refused.reason and wire.VERSION in refused.reason
        assert "2.7" in refused.reason and wire.PYTHON in refused.reason


def test_client_refuses_a_server_of_another_version(tmp_path):
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def fake_server():
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(wire.encode_frame(P.Challenge("9.9.9", "3.99", os.urandom(16), os.urandom(32))))
            conn.recv(4096)

    thread = threading.Thread(target=fake_server, daemon=True)
    thread.start()
    try:
        with pytest.raises(AuthenticationError) as info:
            wire.connect(f"unix:{path}", b"token", "driver")
        assert "9.9.9" in str(info.value) and wire.VERSION in str(info.value)
    finally:
        server.close()
        thread.join(5)


# ---- hostile bytes -----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["node", "worker"])
def test_hostile_bytes_before_authentication_are_dropped(cluster, listeners, tmp_path, target):
    marker = str(tmp_path / "unpickled")
    agent = node_agent_pid()
    worker_pids = {w["pid"] for w in nebula.state.snapshot().workers}
    for name, payload in hostile_payloads(marker).items():
        sock = raw_socket(listeners[target])
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if name == "truncated frame" or name == "zero bytes, then close":
            sock.shutdown(socket.SHUT_WR)  # the peer gives up half-way
        reply = read_until_closed(sock)
        assert b"Welcome" not in reply, f"{name}: a stranger was welcomed"
        assert not os.path.exists(marker), f"{name}: something was unpickled before authentication"
    assert_cluster_serves(cluster, worker_pids)
    assert node_agent_pid() == agent


@pytest.mark.parametrize("target", ["node", "worker"])
def test_hostile_frames_after_authentication_close_only_that_connection(cluster, listeners, target):
    worker_pids = {w["pid"] for w in nebula.state.snapshot().workers}
    bad_frames = {
        "a frame that is not a message": frame(os.urandom(300)),
        "a message of the wrong shape": frame(b"\x93\xa5Hello\x01\x02"),
        "huge length prefix": struct.pack("<I", 0xFFFFFFFF) + b"x" * 10,
        "truncated frame": struct.pack("<I", 1000) + b"x" * 10,
    }
    for name, payload in bad_frames.items():
        sock, _welcome, fds = wire.connect(listeners[target], token_of(cluster), "owner")
        for fd in fds:
            os.close(fd)
        sock.sendall(payload)
        if name == "truncated frame":
            sock.shutdown(socket.SHUT_WR)  # the peer gives up half-way through the frame
        try:
            read_until_closed(sock)  # the server hangs up on us
        except TimeoutError:
            pytest.fail(f"{name}: the {target} kept the connection open")
    assert_cluster_serves(cluster, worker_pids)


def test_a_silent_connection_does_not_block_others(cluster, listeners):
    silent = [raw_socket(address) for address in listeners.values()]
    try:
        started = time.monotonic()
        assert nebula.get(ping.remote(), timeout=30)
        sock, _welcome, fds = wire.connect(cluster["address"], token_of(cluster), "driver")
        for fd in fds:
            os.close(fd)
        sock.close()
        assert time.monotonic() - started < wire.HANDSHAKE_TIMEOUT  # not queued behind the silent peer
    finally:
        for sock in silent:
            sock.close()


def test_many_bad_connections_at_once(cluster, listeners):
    worker_pids = {w["pid"] for w in nebula.state.snapshot().workers}
    socks = []
    for i in range(50):
        sock = raw_socket(listeners["node" if i % 2 else "worker"])
        sock.sendall(os.urandom(100) if i % 3 else struct.pack("<I", 10**9))
        socks.append(sock)
    for sock in socks:
        read_until_closed(sock)
    assert_cluster_serves(cluster, worker_pids)


def test_a_malformed_state_feed_batch_costs_only_itself(cluster, caplog):
    """Nodes pass feed batches on undecoded; the subscriber's process drops a bad one and goes on."""
    import msgspec
    got = []
    with nebula.state.subscribe(got.extend):
        sock, _welcome, fds = wire.connect(cluster["address"], token_of(cluster), "driver")
        for fd in fds:
            os.close(fd)
        try:
            for garbage in (msgspec.msgpack.encode([["task", 1, None]]), b"\xc1", os.urandom(64)):
                sock.sendall(wire.encode_frame(P.Events(garbage)))
            time.sleep(0.5)
            nebula.get(ping.remote())
            deadline = time.monotonic() + 10
            while not any(e.kind == "task" and e.state == "FINISHED" for e in got):
                assert time.monotonic() < deadline, "the feed stopped after a bad batch"
                time.sleep(0.05)
        finally:
            sock.close()
    assert "dropped a state-feed batch" in caplog.text
