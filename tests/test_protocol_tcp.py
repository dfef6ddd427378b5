"""The TCP listeners of a head and a node survive hostile bytes and refuse wrong tokens."""
from __future__ import annotations

import os
import socket
import time

import pytest

import nebula
from nebula import wire
from nebula.exceptions import AuthenticationError
from test_protocol import hostile_payloads, read_until_closed

pytestmark = pytest.mark.timeout(120)


@nebula.remote
def node_of():
    return nebula.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def tcp_listeners():
    nebula.shutdown()
    info = nebula.init(address="local", num_nodes=2, num_cpus=1)
    deadline = time.monotonic() + 30
    while sum(n["Alive"] for n in nebula.nodes()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    other = next(n for n in nebula.nodes() if n["NodeID"] != info["node_id"])
    yield {"head": info["tcp_address"], "node": other["NodeManagerAddress"]}
    nebula.shutdown()


def tcp_socket(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


@pytest.mark.parametrize("target", ["head", "node"])
def test_wrong_token_is_refused_over_tcp(tcp_listeners, target):
    with pytest.raises(AuthenticationError):
        wire.connect(tcp_listeners[target], b"wrong-token", "node")


@pytest.mark.parametrize("target", ["head", "node"])
def test_hostile_bytes_over_tcp_are_dropped_and_never_unpickled(tcp_listeners, tmp_path, target):
    marker = str(tmp_path / "unpickled")
    for name, payload in hostile_payloads(marker).items():
        sock = tcp_socket(tcp_listeners[target])
        if payload:
            sock.sendall(payload)
        read_until_closed(sock)
    assert not os.path.exists(marker), "a stranger's pickle was unpickled"
    refs = [node_of.options(scheduling_strategy="SPREAD").remote() for _ in range(2)]
    assert len(set(nebula.get(refs, timeout=60))) == 2  # both nodes still serve
