"""Multi-node figures on one machine: cross-node tasks, transfers vs a raw socket, failure times.

    python benchmarks/bench_multinode.py [--repeat 5]

Nodes are separate node agents (own stores) talking TCP over loopback, as on a LAN of one.
Prints medians; asserts nothing.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

import numpy as np

import nebula
from nebula.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On


@nebula.remote
def noop():
    return None


@nebula.remote
def make(n: int):
    return np.ones(n, dtype=np.uint8)


@nebula.remote
def touch(a):
    return int(a[-1])


def cross_node_tasks(remote_node: str, count: int = 2000) -> float:
    refs = [noop.options(scheduling_strategy=On(remote_node)).remote() for _ in range(count)]
    start = time.perf_counter()
    nebula.get(refs)
    return count / (time.perf_counter() - start)


def transfer_gbps(source: str, target: str, size: int) -> float:
    ref = make.options(scheduling_strategy=On(source)).remote(size)
    nebula.wait([ref])
    start = time.perf_counter()
    nebula.get(touch.options(scheduling_strategy=On(target)).remote(ref))
    return size / (time.perf_counter() - start) / 1e9


def raw_socket_gbps(size: int) -> float:
    """The same bytes through one loopback TCP socket, Python to Python, for comparison."""
    server = socket.create_server(("127.0.0.1", 0))
    payload = b"\x01" * (4 * 2**20)
    received = bytearray(size)

    def receive():
        conn, _ = server.accept()
        view, got = memoryview(received), 0
        while got < size:
            got += conn.recv_into(view[got:], min(4 * 2**20, size - got))
        conn.close()

    reader = threading.Thread(target=receive)
    reader.start()
    client = socket.create_connection(server.getsockname())
    start = time.perf_counter()
    for offset in range(0, size, len(payload)):
        client.sendall(payload[:min(len(payload), size - offset)])
    reader.join()
    elapsed = time.perf_counter() - start
    client.close()
    server.close()
    return size / elapsed / 1e9


def failure_times(repeat: int) -> tuple[list, list]:
    detect, rebuild = [], []
    for _ in range(repeat):
        nebula.shutdown()
        nebula.init(address="local", num_nodes=2, num_cpus=1, _node_config={"heartbeat_timeout": 3.0})
        _wait_nodes(2)
        other = nebula.nodes()[1]["NodeID"]
        lost = make.options(scheduling_strategy=On(other, soft=True)).remote(10 * 2**20)
        nebula.wait([lost])
        victim = nebula.api.local_cluster().extra_nodes[0]
        start = time.perf_counter()
        victim.kill()
        nebula.get(lost)  # rebuilt from lineage on the surviving node
        rebuild.append(time.perf_counter() - start)
        while all(n["Alive"] for n in nebula.nodes()):
            time.sleep(0.05)
        detect.append(time.perf_counter() - start)
    return detect, rebuild


def _wait_nodes(count: int) -> None:
    while sum(n["Alive"] for n in nebula.nodes()) < count:
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    nebula.init(address="local", num_nodes=2, num_cpus=2)
    _wait_nodes(2)
    head, other = (n["NodeID"] for n in nebula.nodes())
    nebula.get(noop.options(scheduling_strategy=On(other)).remote())
    rows = [("cross-node tasks async (tasks/s)", [cross_node_tasks(other) for _ in range(args.repeat)])]
    for size, label in ((100 * 2**20, "100 MB"), (2**30, "1 GB")):
        rows.append((f"transfer {label} node to node (GB/s)",
                     [transfer_gbps(other, head, size) for _ in range(max(2, args.repeat // 2))]))
        rows.append((f"raw loopback socket {label} (GB/s)", [raw_socket_gbps(size) for _ in range(3)]))
    detect, rebuild = failure_times(max(2, args.repeat // 2))
    rows += [("dead node detected (s, heartbeat timeout 3 s)", detect),
             ("lost 10 MB object rebuilt from lineage (s)", rebuild)]
    nebula.shutdown()
    for label, values in rows:
        print(f"{label:48s} median {statistics.median(values):10.3f}   runs {[round(v, 3) for v in values]}")


if __name__ == "__main__":
    main()
