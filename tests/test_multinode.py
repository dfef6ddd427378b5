"""Several node agents on one machine (each with its own store): placement, data plane, failures."""
from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

import nebula
from nebula.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@pytest.fixture(scope="module")
def three_nodes():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=3, num_cpus=1, object_store_memory="256MiB",
                _node_config={"heartbeat_timeout": 3.0})
    _wait_for_nodes(3)
    yield [n["NodeID"] for n in nebula.nodes()]
    nebula.shutdown()


def _wait_for_nodes(count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(n["Alive"] for n in nebula.nodes()) < count:
        assert time.monotonic() < deadline, f"only {nebula.nodes()} joined"
        time.sleep(0.1)


@nebula.remote
def node_of(delay: float = 0.0):
    time.sleep(delay)
    return nebula.get_runtime_context().get_node_id()


@nebula.remote
def make_array(n: int):
    return np.arange(n, dtype=np.float64)


@nebula.remote
def array_sum(a):
    return float(a.sum()), nebula.get_runtime_context().get_node_id()


def on(node_id: str, soft: bool = False):
    return NodeAffinitySchedulingStrategy(node_id, soft=soft)


def test_nodes_and_cluster_resources_cover_every_node(three_nodes):
    assert len(three_nodes) == 3 and len(set(three_nodes)) == 3
    assert nebula.cluster_resources()["CPU"] == 3


def test_work_spills_over_to_nodes_with_free_cpus(three_nodes):
    used = set(nebula.get([node_of.remote(1.0) for _ in range(8)], timeout=60))
    assert len(used) >= 2


def test_node_affinity_places_the_task_on_that_node(three_nodes):
    for node_id in three_nodes:
        assert nebula.get(node_of.options(scheduling_strategy=on(node_id)).remote(), timeout=30) == node_id


def test_hard_affinity_to_an_unknown_node_fails(three_nodes):
    ref = node_of.options(scheduling_strategy=on("f" * 28)).remote()
    with pytest.raises(nebula.exceptions.NodeDiedError):
        nebula.get(ref, timeout=30)


def test_spread_uses_every_node(three_nodes):
    refs = [node_of.options(scheduling_strategy="SPREAD").remote(0.2) for _ in range(3)]
    assert set(nebula.get(refs, timeout=30)) == set(three_nodes)


def test_objects_move_between_nodes_intact(three_nodes):
    n = 3 * 2**20  # 24 MiB: several transfer chunks
    source = make_array.options(scheduling_strategy=on(three_nodes[1])).remote(n)
    total, where = nebula.get(array_sum.options(scheduling_strategy=on(three_nodes[2])).remote(source), timeout=60)
    assert where == three_nodes[2]
    assert total == float(np.arange(n, dtype=np.float64).sum())
    local = nebula.get(source, timeout=60)  # the driver's node pulls it too
    assert np.array_equal(local, np.arange(n, dtype=np.float64))


def test_custom_resources_place_work_on_the_node_that_has_them(three_nodes):
    nebula.shutdown()  # a fresh cluster whose second node alone has a custom resource
    from nebula.local_cluster import start_local_cluster
    cluster = start_local_cluster(num_cpus=1, multi_node=True)
    try:
        node_dir = cluster.add_node(num_cpus=1, resources={"fpga": 1})
        os.environ["NEBULA_ADDRESS"], os.environ["NEBULA_TOKEN_FILE"] = cluster.address, cluster.token_file
        nebula.init()
        _wait_for_nodes(2)
        fpga_node = next(n["NodeID"] for n in nebula.nodes() if n["Resources"].get("fpga"))
        refs = [node_of.options(resources={"fpga": 1}).remote() for _ in range(3)]
        assert set(nebula.get(refs, timeout=30)) == {fpga_node}
        assert os.path.isdir(node_dir)
    finally:
        nebula.shutdown()
        os.environ.pop("NEBULA_ADDRESS", None)
        os.environ.pop("NEBULA_TOKEN_FILE", None)
        cluster.stop()
        nebula.init(address="local", num_nodes=3, num_cpus=1, object_store_memory="256MiB")
        _wait_for_nodes(3)


def test_killed_node_is_detected_and_its_tasks_retry_elsewhere():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=2, num_cpus=2, _node_config={"heartbeat_timeout": 3.0})
    try:
        _wait_for_nodes(2)
        refs = [node_of.options(max_retries=3).remote(1.0) for _ in range(8)]
        time.sleep(0.5)
        victim = nebula.api.local_cluster().extra_nodes[0]
        victim.kill()
        head = nebula.get_runtime_context().get_node_id()
        assert set(nebula.get(refs, timeout=60)) == {head}
        deadline = time.monotonic() + 10
        while all(n["Alive"] for n in nebula.nodes()):
            assert time.monotonic() < deadline, "the dead node was never marked dead"
            time.sleep(0.2)
    finally:
        nebula.shutdown()


@nebula.remote(num_cpus=1, max_restarts=1)
class NodeCounter:
    def __init__(self):
        self.calls = 0

    def where(self):
        self.calls += 1
        return nebula.get_runtime_context().get_node_id(), self.calls


def test_actors_are_placed_on_other_nodes_and_found_by_name():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=3, num_cpus=1)
    try:
        _wait_for_nodes(3)
        actors = [NodeCounter.remote() for _ in range(3)]
        placed = nebula.get([a.where.remote() for a in actors], timeout=60)
        assert len({node for node, _ in placed}) == 3
        NodeCounter.options(name="svc", num_cpus=0).remote()
        assert nebula.get(nebula.get_actor("svc").where.remote(), timeout=30)[1] == 1
    finally:
        nebula.shutdown()


def test_actor_on_a_dead_node_restarts_on_another():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=2, num_cpus=2, _node_config={"heartbeat_timeout": 2.0})
    try:
        _wait_for_nodes(2)
        head, other = (n["NodeID"] for n in nebula.nodes())
        actor = NodeCounter.options(scheduling_strategy=on(other, soft=True)).remote()
        assert nebula.get(actor.where.remote(), timeout=30) == (other, 1)
        victim = nebula.api.local_cluster().extra_nodes[0]
        its_processes = psutil.Process(victim.pid).children(recursive=True)
        victim.kill()
        victim.wait()
        _, alive = psutil.wait_procs(its_processes, timeout=10)  # they die with it (parent-death signal)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        node, calls = nebula.get(actor.where.remote(), timeout=60)
        assert (node, calls) == (head, 1)  # state rebuilt by __init__ on the surviving node
    finally:
        nebula.shutdown()


@nebula.remote
def doubled(a):
    return a * 2


def test_objects_lost_with_a_node_are_rebuilt_from_lineage_or_reported():
    nebula.shutdown()
    nebula.init(address="local", num_nodes=2, num_cpus=1, _node_config={"heartbeat_timeout": 2.0})
    try:
        _wait_for_nodes(2)
        other = nebula.nodes()[1]["NodeID"]
        source = make_array.options(scheduling_strategy=on(other, soft=True)).remote(2**20)
        result = doubled.options(scheduling_strategy=on(other, soft=True)).remote(source)
        nebula.wait([result], timeout=30)
        put_elsewhere = doubled.options(scheduling_strategy=on(other, soft=True), max_retries=0).remote(source)
        nebula.wait([put_elsewhere], timeout=30)
        victim = nebula.api.local_cluster().extra_nodes[0]
        victim.kill()
        victim.wait()
        expected = np.arange(2**20, dtype=np.float64) * 2
        assert np.array_equal(nebula.get(result, timeout=60), expected)  # rebuilt: doubled(make())
        with pytest.raises(nebula.exceptions.ObjectLostError, match="died"):
            nebula.get(put_elsewhere, timeout=60)  # max_retries=0: not rebuilt, and the error says why
    finally:
        nebula.shutdown()


@nebula.remote(max_retries=10)
def seed_value(i):
    time.sleep(0.002)
    return i


@nebula.remote(max_retries=10)
def combine(a, b):
    time.sleep(0.002)
    return a + 2 * b


def test_chaos_a_node_and_a_worker_die_during_a_stream_of_dependent_tasks():
    import random
    import psutil
    nebula.shutdown()
    nebula.init(address="local", num_nodes=3, num_cpus=2, _node_config={"heartbeat_timeout": 3.0})
    try:
        _wait_for_nodes(3)
        rng = random.Random(7)
        cluster = nebula.api.local_cluster()
        seeds = [seed_value.remote(i) for i in range(500)]
        time.sleep(rng.uniform(0.2, 1.0))
        node = psutil.Process(cluster.extra_nodes[0].pid)
        workers = [p for p in node.children(recursive=True) if p.ppid() != node.pid or "zygote" not in " ".join(p.cmdline())]
        if workers:
            rng.choice(workers).kill()  # a worker (not the zygote that forks them) dies at a random moment
        combined = [combine.remote(seeds[i], seeds[i - 1]) for i in range(1, 500)]
        time.sleep(rng.uniform(0.2, 1.0))
        cluster.extra_nodes[1].kill()  # and a whole node
        assert nebula.get(seeds, timeout=120) == list(range(500))
        assert nebula.get(combined, timeout=120) == [i + 2 * (i - 1) for i in range(1, 500)]
    finally:
        nebula.shutdown()


def test_a_driver_without_a_node_of_its_own_works_through_a_relay():
    """A laptop-style driver: it reaches the cluster over TCP and cannot map any store."""
    import json
    import pathlib
    import shutil
    import subprocess
    import sys
    import tempfile
    nebula.shutdown()
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="nb-"))  # short: Unix socket paths are limited
    env = {**os.environ, "NEBULA_TMPDIR": str(tmp_path / "cluster")}
    start = [sys.executable, "-m", "nebula.cli", "start", "--head", "--port", "0", "--nodes", "2", "--num-cpus", "1"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=60)
    saved = {k: os.environ.get(k) for k in ("NEBULA_TMPDIR", "NEBULA_TOKEN_FILE")}
    try:
        current = json.loads((tmp_path / "cluster" / f"nebula-{os.getuid()}" / "current").read_text())
        os.environ.update(NEBULA_TMPDIR=str(tmp_path / "driver"), NEBULA_TOKEN_FILE=current["token_file"])
        with pytest.warns(UserWarning, match="no Nebula node runs on this machine"):
            nebula.init(address=current["address"])
        _wait_for_nodes(2)
        data = np.arange(3 * 2**20, dtype=np.float64)
        stored = nebula.put(data)  # 24 MiB, sent in chunks to the node
        sums = nebula.get([array_sum.options(scheduling_strategy="SPREAD").remote(stored) for _ in range(2)],
                          timeout=60)
        assert {s for s, _ in sums} == {float(data.sum())} and len({n for _, n in sums}) == 2
        assert np.array_equal(nebula.get(make_array.remote(2**20), timeout=60), np.arange(2**20, dtype=np.float64))
        assert np.array_equal(nebula.get(stored, timeout=60), data)
    finally:
        nebula.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        subprocess.run([sys.executable, "-m", "nebula.cli", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_state_feed_spans_every_node():
    import collections
    nebula.shutdown()
    nebula.init(address="local", num_nodes=2, num_cpus=1)
    try:
        _wait_for_nodes(2)
        head, other = (n["NodeID"] for n in nebula.nodes())
        seen = collections.Counter()
        with nebula.state.subscribe(lambda batch: seen.update((e.kind, e.state, e.get("node")) for e in batch)):
            nebula.get([make_array.options(scheduling_strategy=on(other)).remote(2**17) for _ in range(3)], timeout=60)
            deadline = time.monotonic() + 10
            while not (seen[("node", "TELEMETRY", other)] and seen[("node", "TELEMETRY", head)]):
                assert time.monotonic() < deadline, f"no telemetry from both nodes: {seen}"
                time.sleep(0.2)
        assert seen[("object", "SEALED", other)] >= 3  # results stored on the other node
        assert seen[("task", "FINISHED", other)] == 3  # where they ran: the node their owner's leases named
    finally:
        nebula.shutdown()
