"""Nodes as separate hosts (network namespaces): crash a host, cut and heal its link.

Needs root and iproute2 (``tests/hosts.sh``); skipped with the reason otherwise. Each host
runs ``nebula start --block`` with its own NEBULA_TMPDIR; the driver runs on "head".
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

HOSTS = os.path.join(os.path.dirname(__file__), "hosts.sh")
HEAD_IP = "10.77.0.1"
PORT = 6390
TOKEN = "netns-test-token-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None,
    reason="needs root and iproute2 to build network namespaces")


def hosts(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", HOSTS, *args], capture_output=True, text=True, check=check, timeout=60)


class Cluster:
    """A head and ``n`` nodes, each in its own namespace, started with ``nebula start --block``."""

    def __init__(self, nodes: int):
        self.root = tempfile.mkdtemp(prefix="nebula-netns-")
        self.procs: dict[str, subprocess.Popen] = {}
        hosts("down", check=False)
        hosts("up", str(nodes))
        self.start("head", ["--head", "--host", HEAD_IP, "--port", str(PORT)])
        for k in range(1, nodes + 1):
            self.start(f"n{k}", ["--address", f"{HEAD_IP}:{PORT}", "--host", f"10.77.0.{k + 1}"])

    def env(self, host: str) -> dict:
        tmp = os.path.join(self.root, host)
        os.makedirs(tmp, exist_ok=True)
        return {**os.environ, "NEBULA_TMPDIR": tmp, "NEBULA_TOKEN": TOKEN}

    def start(self, host: str, args: list[str]) -> None:
        cmd = ["bash", HOSTS, "exec", host, sys.executable, "-m", "nebula.cli", "start", "--num-cpus", "2",
               "--heartbeat-timeout", "3", "--no-tls", "--block", *args]
        self.procs[host] = subprocess.Popen(cmd, env=self.env(host), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)

    def drive(self, script: str, timeout: float = 120) -> dict:
        """Run ``script`` as a driver on the head host; it prints one JSON line as its result."""
        code = "import json, time, nebula\nnebula.init(address='auto')\n" + textwrap.dedent(script)
        out = subprocess.run(["bash", HOSTS, "exec", "head", sys.executable, "-c", code], env=self.env("head"),
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, alive: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.drive("print(json.dumps(sum(n['Alive'] for n in nebula.nodes())))", timeout=30)
            except (AssertionError, ValueError, IndexError):
                got = -1
            if got == alive:
                return
            assert time.monotonic() < deadline, f"{got} nodes alive, wanted {alive}"
            time.sleep(0.5)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        hosts("down", check=False)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster(2)
    try:
        c.wait_nodes(3, timeout=90)
        yield c
    finally:
        c.close()


PLACE = """
from nebula.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
import numpy as np
@nebula.remote
def where():
    return nebula.get_runtime_context().get_node_id()
@nebula.remote
def make(n):
    return np.arange(n, dtype=np.float64)
@nebula.remote
def total(a):
    return float(a.sum())
ids = [n['NodeID'] for n in nebula.nodes()]
placed = [nebula.get(where.options(scheduling_strategy=On(i)).remote()) for i in ids]
x = make.options(scheduling_strategy=On(ids[1])).remote(2**21)
s = nebula.get(total.options(scheduling_strategy=On(ids[2])).remote(x))
print(json.dumps({"ids": ids, "placed": placed, "sum": s}))
"""


def test_tasks_and_objects_cross_hosts(cluster):
    out = cluster.drive(PLACE)
    assert out["placed"] == out["ids"]
    assert out["sum"] == float(sum(range(2**21)))


RETRY = """
@nebula.remote(max_retries=5)
def step(i):
    time.sleep(1.0)
    return i * i
refs = [step.remote(i) for i in range(12)]
time.sleep(1.5)
open(ACTION_FILE, 'w').write('go')
while os.path.exists(ACTION_FILE):
    time.sleep(0.1)
print(json.dumps(nebula.get(refs, timeout=90)))
"""


def _with_fault(cluster: Cluster, fault) -> list:
    action = os.path.join(cluster.root, "action")
    script = "import os\nACTION_FILE = " + repr(action) + "\n" + RETRY
    code = "import json, time, nebula\nnebula.init(address='auto')\n" + script
    proc = subprocess.Popen(["bash", HOSTS, "exec", "head", sys.executable, "-c", code], env=cluster.env("head"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(action):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    fault()
    os.unlink(action)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_crashed_host_loses_no_results(cluster):
    assert _with_fault(cluster, lambda: hosts("crash", "n1")) == [i * i for i in range(12)]


def test_a_cut_off_host_delivers_nothing_stale_after_healing(cluster):
    def cut_then_heal_later():
        hosts("cut", "n2")
        subprocess.Popen(["bash", "-c", f"sleep 6; bash {HOSTS} heal n2"])
    assert _with_fault(cluster, cut_then_heal_later) == [i * i for i in range(12)]
    cluster.wait_nodes(3, timeout=90)  # healed: it rejoined as a new incarnation
