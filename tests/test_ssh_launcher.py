"""``nebula up`` / ``nebula down`` against a real sshd on hosts made of network namespaces.

Needs root, iproute2 (``tests/hosts.sh``) and openssh-server (``/usr/sbin/sshd``); skipped
with the reason otherwise. head, n1 and n2 run sshd on port 2222 with a test key; n3 runs
none (an unreachable node). ``nebula up`` runs on the head (the root namespace has no route
to the hosts), and so does the driver.
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
SSHD = "/usr/sbin/sshd"
SUBNET = "10.78.0"
HEAD, N1, N2, N3 = (f"{SUBNET}.{k}" for k in (1, 2, 3, 4))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare") or not os.path.exists(SSHD)
    or not shutil.which("ssh") or not shutil.which("ssh-keygen"),
    reason="needs root, iproute2 and openssh (server and client) to run sshd in network namespaces")

SSHD_CONFIG = """\
Port 2222
HostKey {root}/host_key
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
PidFile none
"""


class SSHHosts:
    """head, n1, n2 (sshd on 2222) and n3 (no sshd) on a private bridge; own namespaces and subnet."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="nbs-")  # short: Unix socket paths are limited
        self.env = {**os.environ, "HOSTS_PREFIX": "nsh-", "HOSTS_SUBNET": SUBNET,
                    "HOSTS_STATE_DIR": os.path.join(self.root, "hosts-state")}
        self.sshd: list[subprocess.Popen] = []
        self.key = os.path.join(self.root, "id_test")
        self._make_keys()
        self.hosts("up", "3")
        for host in ("head", "n1", "n2"):
            self._start_sshd(host)

    def hosts(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", HOSTS, *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=60)

    def _make_keys(self) -> None:
        for path in (self.key, os.path.join(self.root, "host_key")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True, timeout=30)
        shutil.copy(self.key + ".pub", os.path.join(self.root, "authorized_keys"))
        with open(os.path.join(self.root, "sshd_config"), "w") as f:
            f.write(SSHD_CONFIG.format(root=self.root))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def _start_sshd(self, host: str) -> None:
        log = os.path.join(self.root, f"sshd-{host}.log")
        with open(log, "wb") as out:
            self.sshd.append(subprocess.Popen(
                ["bash", HOSTS, "exec", host, SSHD, "-D", "-e", "-f", os.path.join(self.root, "sshd_config")],
                env=self.env, stdout=out, stderr=out))
        deadline = time.monotonic() + 20
        while "Server listening" not in open(log).read():
            assert self.sshd[-1].poll() is None and time.monotonic() < deadline, open(log).read()
            time.sleep(0.05)

    def on_head(self, argv: list, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", HOSTS, "exec", "head", *argv], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def cluster_file(self, name: str, nodes: list, port: int, python: str = sys.executable) -> str:
        path = os.path.join(self.root, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                # a test cluster
                cluster_name: {name}
                no_tls: true
                ssh_user: root
                ssh_port: 2222
                ssh_key: {self.key}
                ssh_options:
                  - StrictHostKeyChecking=no
                  - UserKnownHostsFile=/dev/null
                  - LogLevel=ERROR
                python: {python}
                head: {HEAD}
                nodes: [{', '.join(nodes)}]
                port: {port}
                num_cpus: 1
                tmpdir: {self.root}/{name}/{{host}}   # one per host: the hosts share a filesystem
                """))
        return path

    def nebula(self, *args: str) -> subprocess.CompletedProcess:
        """``nebula ARGS`` run on the head, with its own local state dir."""
        return self.on_head([sys.executable, "-m", "nebula.cli", *args],
                            env={"NEBULA_TMPDIR": os.path.join(self.root, "local")})

    def node_agents(self) -> list:
        """Command lines of node agents running in any of the hosts' namespaces."""
        found = []
        for host in ("head", "n1", "n2", "n3"):
            pids = subprocess.run(["ip", "netns", "pids", f"nsh-{host}"], capture_output=True, text=True).stdout
            found += [cmd for cmd in map(_cmdline, pids.split()) if "nebula.node_main" in cmd]
        return found

    def close(self) -> None:
        for proc in self.sshd:
            proc.terminate()
        self.hosts("down", check=False)
        for proc in self.sshd:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def ssh_hosts():
    hosts = SSHHosts()
    try:
        yield hosts
    finally:
        hosts.close()


DRIVE = """
import json, socket, time, nebula
from nebula.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
nebula.init(address="auto")
deadline = time.monotonic() + 40
while sum(n["Alive"] for n in nebula.nodes()) < 3 and time.monotonic() < deadline:
    time.sleep(0.2)
@nebula.remote
def where():
    return socket.gethostname(), nebula.get_runtime_context().get_node_id()
ids = [n["NodeID"] for n in nebula.nodes() if n["Alive"]]
print(json.dumps({"ids": ids, "placed": nebula.get([where.options(scheduling_strategy=On(i)).remote() for i in ids])}))
"""


def _wait_no_agents(ssh_hosts: SSHHosts, timeout: float = 15) -> list:
    deadline = time.monotonic() + timeout
    while ssh_hosts.node_agents() and time.monotonic() < deadline:
        time.sleep(0.2)
    return ssh_hosts.node_agents()


@pytest.mark.timeout(150)
def test_up_runs_a_task_on_every_host_and_down_stops_them(ssh_hosts):
    config = ssh_hosts.cluster_file("demo", [N1, N2], port=6391)
    up = ssh_hosts.nebula("up", config)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"{HEAD}:6391" in up.stdout and "nebula.init(address='auto')" in up.stdout
    token_file = os.path.join(ssh_hosts.root, "local", "nebula-0", "clusters", "demo.token")
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    token = open(token_file).read().strip()
    agents = ssh_hosts.node_agents()
    assert len(agents) == 3 and not any(token in cmd for cmd in agents)
    assert token not in up.stdout + up.stderr

    drive = ssh_hosts.on_head([sys.executable, "-c", DRIVE],
                              env={"NEBULA_TMPDIR": os.path.join(ssh_hosts.root, "demo", HEAD)}, timeout=90)
    assert drive.returncode == 0, drive.stderr[-3000:]
    out = json.loads(drive.stdout.strip().splitlines()[-1])
    assert len(out["ids"]) == 3
    assert [node for _, node in out["placed"]] == out["ids"]
    assert sorted(host for host, _ in out["placed"]) == ["head", "n1", "n2"]

    again = ssh_hosts.nebula("up", config)
    assert again.returncode == 1 and "already up" in again.stderr

    down = ssh_hosts.nebula("down", config)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _wait_no_agents(ssh_hosts) == []
    assert not os.path.exists(token_file)


@pytest.mark.timeout(120)
def test_unreachable_node_and_missing_interpreter_are_named(ssh_hosts):
    config = ssh_hosts.cluster_file("partial", [N1, N3], port=6392)
    up = ssh_hosts.nebula("up", config)
    assert up.returncode == 1, up.stdout + up.stderr
    assert f"node {N3} did not start: could not reach {N3} over SSH" in up.stdout, up.stdout + up.stderr
    assert "Connection refused" in up.stdout and "1 of 2 node(s)" in up.stdout
    down = ssh_hosts.nebula("down", config)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped on 2 of 2 host(s)" in down.stdout
    assert _wait_no_agents(ssh_hosts) == []

    broken = ssh_hosts.cluster_file("broken", [N1], port=6393, python="/nonexistent/python3")
    up = ssh_hosts.nebula("up", broken)
    assert up.returncode == 1
    assert f"on {HEAD} failed (exit 127)" in up.stderr and "set `python:`" in up.stderr
    assert ssh_hosts.node_agents() == []
