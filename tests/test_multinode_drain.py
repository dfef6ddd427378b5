"""Draining a node of a local cluster: LocalCluster.remove_node picks it, it takes no new work,
its running tasks finish (or are retried after the grace period), then it exits."""
from __future__ import annotations

import time

import pytest

import nebula
from nebula.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def three_nodes():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=3, num_cpus=1, _node_config={"heartbeat_timeout": 3.0})
    _wait_until(lambda: sum(n["Alive"] for n in nebula.nodes()) == 3, "three nodes alive")
    yield [n["NodeID"] for n in nebula.nodes()]
    nebula.shutdown()


def _wait_until(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in nebula.nodes())


@nebula.remote(max_retries=3)
def stamped(delay: float = 0.0):
    started = time.time()
    time.sleep(delay)
    return nebula.get_runtime_context().get_node_id(), started


def on(node_id: str, soft: bool = False):
    return NodeAffinitySchedulingStrategy(node_id, soft=soft)


def _drained_popen(cluster, node_id: str):
    return next(p for p in cluster.draining_nodes if p.node_id == node_id)


def test_the_idle_node_goes_first_and_the_busy_one_finishes_its_task(three_nodes):
    head, busy, idle = three_nodes
    cluster = nebula.api.local_cluster()
    running = stamped.options(scheduling_strategy=on(busy)).remote(3.0)
    _wait_until(lambda: nebula.available_resources().get("CPU", 0) <= 2, "the task to start")

    assert cluster.remove_node(grace_s=30.0) == idle
    assert _drained_popen(cluster, idle).wait(10) == 0
    _wait_until(lambda: not _alive(idle), "the drained node shown dead")
    assert [p.node_id for p in cluster.draining_nodes] == [idle] and len(cluster.extra_nodes) == 1

    drained_at = time.time()
    assert cluster.remove_node(grace_s=30.0) == busy
    time.sleep(0.5)  # the head and the other nodes learn it is draining
    assert any(n["NodeID"] == busy and n["Alive"] for n in nebula.nodes()), "still finishing its task"
    later = [stamped.remote(0.05) for _ in range(4)]
    later += [stamped.options(scheduling_strategy="SPREAD").remote(0.05) for _ in range(4)]
    later += [stamped.options(scheduling_strategy=on(busy, soft=True)).remote(0.05) for _ in range(2)]
    assert {node for node, _ in nebula.get(later, timeout=30)} == {head}
    with pytest.raises(nebula.exceptions.NodeDiedError, match="draining"):
        nebula.get(stamped.options(scheduling_strategy=on(busy)).remote(), timeout=30)

    node, started = nebula.get(running, timeout=30)
    assert node == busy and started < drained_at  # ran to its end there, not retried elsewhere
    assert _drained_popen(cluster, busy).wait(15) == 0
    _wait_until(lambda: not _alive(busy), "the drained node shown dead")
    assert nebula.get(stamped.remote(), timeout=30)[0] == head


def test_an_owner_stops_reusing_a_lease_on_a_draining_node(three_nodes):
    cluster = nebula.api.local_cluster()
    refs = [stamped.remote(0.3) for _ in range(24)]  # every node takes a lease and reuses it
    time.sleep(1.0)
    drained_at = time.time()
    gone = cluster.remove_node(grace_s=30.0, prefer_idle=False)
    results = nebula.get(refs, timeout=60)
    assert len(results) == 24
    late_there = [started for node, started in results if node == gone and started > drained_at + 0.3]
    assert not late_there, f"{len(late_there)} tasks started on the draining node after it was drained"
    assert _drained_popen(cluster, gone).wait(15) == 0
    _wait_until(lambda: not _alive(gone), "the drained node shown dead")


def test_after_the_grace_period_the_node_exits_and_its_tasks_retry_elsewhere(three_nodes):
    head, busy, _ = three_nodes
    cluster = nebula.api.local_cluster()
    slow = stamped.options(scheduling_strategy=on(busy, soft=True), max_retries=2).remote(4.0)
    _wait_until(lambda: nebula.available_resources().get("CPU", 0) <= 2, "the task to start")
    busy_popen = next(p for p in cluster.extra_nodes if p.node_dir.endswith("n2"))
    cluster.remove_node(grace_s=0.5, prefer_idle=False)  # the newest (idle) one
    gone = cluster.remove_node(grace_s=0.5)
    assert gone == busy and busy_popen.wait(10) == 0
    node, _ = nebula.get(slow, timeout=60)
    assert node == head  # retried on the one node left
    with pytest.raises(ValueError, match="head node stays"):
        cluster.remove_node()
