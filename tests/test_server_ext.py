"""The Jupyter server extension, run in real ``jupyter server`` processes.

The REST API (auth, XSRF, a non-root base_url), a kernel started through the server joining
the server's cluster with plain ``nebula.init()``, attaching to an existing cluster, several
local nodes scaled up and down through the API, and no node agent or worker left behind after
SIGTERM, ``POST /api/shutdown`` or SIGKILL.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests
from jupyter_client import BlockingKernelClient

pytestmark = pytest.mark.timeout(120)

TOKEN = "nebula-test-token"
ONLY_NEBULA = ("--ServerApp.jpserver_extensions={'nebula': True, 'jupyterlab': False, 'jupyter_lsp': False, "
               "'notebook_shim': False, 'jupyter_server_terminals': False}")


class Server:
    """A ``jupyter server`` with the nebula extension, isolated from the user's Jupyter files."""

    def __init__(self, tmp_path, *args, base_url: str = "/"):
        self.base_url, self.port = base_url, _free_port()
        self.url = f"http://127.0.0.1:{self.port}{base_url}"
        self.dirs = {k: tmp_path / k for k in ("config", "data", "runtime", "root")}
        for path in self.dirs.values():
            path.mkdir(exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")},
               "JUPYTER_CONFIG_DIR": str(self.dirs["config"]), "JUPYTER_DATA_DIR": str(self.dirs["data"]),
               "JUPYTER_RUNTIME_DIR": str(self.dirs["runtime"])}
        self.log = open(tmp_path / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", "--port-retries=0", f"--IdentityProvider.token={TOKEN}", ONLY_NEBULA,
             f"--ServerApp.base_url={base_url}", f"--ServerApp.root_dir={self.dirs['root']}",
             "--NebulaApp.num_cpus=2", *args], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.kernel_clients: list = []
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "jupyter server exited: " + self.log_text()
            try:
                if self.get("api/status").status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("jupyter server did not answer: " + self.log_text())

    def log_text(self) -> str:
        self.log.flush()
        return open(self.log.name).read()[-4000:]

    def get(self, path: str, token: bool = True, **kw):
        return requests.get(self.url + path, headers=_auth(token), timeout=60, **kw)

    def post(self, path: str, token: bool = True, **kw):
        return requests.post(self.url + path, headers=_auth(token), timeout=60, **kw)

    def cluster(self) -> dict:
        reply = self.get("nebula/api/cluster")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def nebula_processes(self) -> list:
        """Node agents and workers started under this server (kept even once they are orphaned)."""
        return [p for p in psutil.Process(self.process.pid).children(recursive=True) if _is_nebula(p)]

    def start_kernel(self) -> BlockingKernelClient:
        reply = self.post("api/kernels", json={"name": "python3"})
        assert reply.status_code == 201, reply.text
        path = self.dirs["runtime"] / f"kernel-{reply.json()['id']}.json"
        client = BlockingKernelClient(connection_file=str(path))
        client.load_connection_file()
        client.start_channels()
        self.kernel_clients.append(client)
        wait_ready(client)
        return client

    def stop(self) -> None:
        kernels = [p for p in _descendants(self.process.pid) if "ipykernel" in " ".join(_cmdline(p))]
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        for client in self.kernel_clients:
            client.stop_channels()
        for proc in kernels:
            _kill_quietly(proc)
        self.log.close()


def wait_ready(client: BlockingKernelClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:  # its heartbeat may not beat yet: wait_for_ready then says "died"; ask again
        try:
            client.wait_for_ready(timeout=10)
            return
        except RuntimeError:
            assert time.monotonic() < deadline, "the kernel did not start"
            time.sleep(0.5)


def _auth(token: bool) -> dict:
    return {"Authorization": f"token {TOKEN}"} if token else {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cmdline(proc) -> list:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _is_nebula(proc) -> bool:
    text = " ".join(_cmdline(proc))
    return any(m in text for m in ("nebula.node_main", "nebula.worker_main", "nebula.zygote"))


def _alive(procs: list) -> list:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def _wait_gone(procs: list, timeout: float = 15) -> list:
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(procs)


def _kill_quietly(proc) -> None:
    try:
        proc.kill()
    except psutil.Error:
        pass


def run_in_kernel(client: BlockingKernelClient, code: str) -> str:
    """Run ``code``; returns what it printed, fails on an error."""
    printed = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append("\n".join(msg["content"]["traceback"]))
    reply = client.execute_interactive(code, timeout=60, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(printed)
    return "".join(printed)


JOIN_AND_RUN = ("import nebula\ninfo = nebula.init()\n@nebula.remote\ndef one():\n    return 1\n"
                "assert nebula.get(one.remote()) == 1\nprint(info['node_id'], info['embedded'])")


# ---- one lazy server under a non-root base_url, for the REST API ------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("lazy-server"), base_url="/jh/user/")
    yield srv
    srv.stop()


def test_api_refuses_requests_without_the_token(server):
    for path in ("cluster", "cluster/start", "cluster/stop", "cluster/scale"):
        call = server.get if path == "cluster" else server.post
        assert call(f"nebula/api/{path}", token=False).status_code == 403


def test_lazy_cluster_starts_with_the_first_kernel_which_joins_it(server):
    assert not server.nebula_processes()
    kernel = server.start_kernel()
    assert any("nebula.node_main" in " ".join(_cmdline(p)) for p in server.nebula_processes())
    node_id, embedded = run_in_kernel(kernel, JOIN_AND_RUN).split()
    cluster = server.cluster()
    assert cluster["running"] and cluster["managed"] and embedded == "False"
    assert [n["node_id"] for n in cluster["nodes"]] == [node_id]


def test_cluster_json_has_nodes_resources_and_counts(server):
    cluster = server.cluster()
    assert cluster["resources"]["total"]["CPU"] == 2 and "available" in cluster["resources"]
    assert cluster["address"].startswith("unix:") and cluster["num_nodes_requested"] == 1
    assert {"tasks", "workers", "actors", "objects", "clients"} <= set(cluster)
    assert cluster["nodes"][0]["alive"] and cluster["nodes"][0]["store"]["capacity"] > 0


def test_scale_refuses_bad_input(server):
    for body in ({"num_nodes": 3}, {"nodes": 0}, {"nodes": "3"}, {"nodes": 2.5}, {"nodes": True}, [3],
                 {"nodes": 100000}, {"nodes": 2, "grace_s": -1}):
        reply = server.post("nebula/api/cluster/scale", json=body)
        assert reply.status_code == 400, body
        assert ("grace_s" if "grace_s" in body else "nodes") in reply.json()["message"], body
    reply = server.post("nebula/api/cluster/scale", data=b"three")
    assert reply.status_code == 400 and "not JSON" in reply.json()["message"]


def test_cookie_authenticated_posts_need_the_xsrf_token(server):
    browser = requests.Session()
    browser.get(server.url + "login", timeout=30)
    xsrf = browser.cookies["_xsrf"]
    login = browser.post(server.url + "login", data={"password": TOKEN, "_xsrf": xsrf}, timeout=30,
                         allow_redirects=False)
    assert login.status_code in (200, 302)
    assert browser.get(server.url + "nebula/api/cluster", timeout=30).status_code == 200
    assert browser.post(server.url + "nebula/api/cluster/start", timeout=30).status_code == 403
    assert browser.post(server.url + "nebula/api/cluster/start", headers={"X-XSRFToken": xsrf},
                        timeout=30).status_code == 200


def test_stop_and_start_through_the_api(server):
    agents = server.nebula_processes()
    stopped = server.post("nebula/api/cluster/stop")
    assert stopped.status_code == 200 and stopped.json()["running"] is False
    assert not _wait_gone(agents)
    assert server.cluster()["running"] is False  # an explicit stop is not undone by the next GET
    started = server.post("nebula/api/cluster/start").json()
    assert started["running"] and started["nodes"][0]["alive"]


def test_a_cluster_that_died_starts_again_on_next_use(server):
    old = server.cluster()
    for agent in server.nebula_processes():
        if "nebula.node_main" in " ".join(_cmdline(agent)):
            agent.kill()
    time.sleep(0.5)
    new = server.cluster()
    assert new["running"] and new["address"] != old["address"] and new["nodes"][0]["alive"]
    kernel_id = server.get("api/kernels").json()[0]["id"]
    assert server.post(f"api/kernels/{kernel_id}/restart").status_code == 200
    kernel = server.kernel_clients[0]
    wait_ready(kernel)
    node_id, _ = run_in_kernel(kernel, JOIN_AND_RUN).split()  # a restarted kernel joins the new cluster
    assert node_id == new["nodes"][0]["node_id"]


def test_an_unreachable_attached_cluster_is_reported(tmp_path, monkeypatch):
    import nebula
    from nebula.kernel_ext.cluster_keeper import ClusterKeeper, ClusterUnreachable
    if nebula.is_initialized():
        pytest.skip("this process is connected to a cluster already")
    token = tmp_path / "token"
    token.write_text("0" * 64)
    monkeypatch.setenv("NEBULA_ADDRESS", "")  # restored afterwards: start() exports the attached address
    monkeypatch.setenv("NEBULA_TOKEN_FILE", "")
    keeper = ClusterKeeper(address=f"unix:{tmp_path}/nobody.sock", token_file=str(token))
    keeper.start()
    with pytest.raises(ClusterUnreachable, match="does not answer"):
        keeper.describe()
    assert not nebula.is_initialized()


# ---- the cluster ends with the server ----------------------------------------------------------------

def _server_with_workers(tmp_path, run_a_task: bool = False) -> tuple:
    """An autostart server, its node agent and (prestarted, or used by a kernel's task) workers."""
    srv = Server(tmp_path, "--NebulaApp.autostart=True")
    if run_a_task:
        run_in_kernel(srv.start_kernel(), JOIN_AND_RUN)
    deadline = time.monotonic() + 30
    while not any(m in " ".join(_cmdline(p)) for p in srv.nebula_processes() for m in ("nebula.worker_main", "nebula.zygote")):
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.1)
    return srv, srv.nebula_processes()


def test_sigterm_stops_the_cluster(tmp_path):
    srv, procs = _server_with_workers(tmp_path)
    try:
        srv.process.send_signal(signal.SIGTERM)
        srv.process.wait(30)
        assert not _wait_gone(procs)
    finally:
        srv.stop()


def test_api_shutdown_stops_the_cluster(tmp_path):
    srv = Server(tmp_path, "--NebulaApp.autostart=True")
    try:
        procs = srv.nebula_processes()
        assert procs, "autostart=True starts the cluster with the server"
        assert srv.post("api/shutdown").status_code == 200
        srv.process.wait(30)
        assert not _wait_gone(procs)
    finally:
        srv.stop()


def test_sigkill_of_the_server_leaves_no_nebula_process(tmp_path):
    srv, procs = _server_with_workers(tmp_path, run_a_task=True)
    try:
        srv.process.kill()
        srv.process.wait(30)
        assert not _wait_gone(procs)
    finally:
        srv.stop()


def test_attaching_to_an_existing_cluster(tmp_path):
    from nebula.local_cluster import start_local_cluster
    external = start_local_cluster(num_cpus=1)
    token_file = os.path.join(external.session_dir, "token")
    srv = Server(tmp_path, f"--NebulaApp.address={external.address}", f"--NebulaApp.token_file={token_file}")
    try:
        cluster = srv.cluster()
        assert cluster["running"] and not cluster["managed"] and cluster["address"] == external.address
        assert cluster["resources"]["total"]["CPU"] == 1
        stop = srv.post("nebula/api/cluster/stop")
        assert stop.status_code == 409 and "does not manage" in json.loads(stop.text)["message"]
        scale = srv.post("nebula/api/cluster/scale", json={"nodes": 2})
        assert scale.status_code == 409 and "does not manage" in scale.json()["message"]
        srv.process.send_signal(signal.SIGTERM)
        srv.process.wait(30)
        assert external.popen.poll() is None, "the server must not stop a cluster it only attached to"
    finally:
        srv.stop()
        external.stop()


# ---- several local nodes, scaled through the API ----------------------------------------------------

def _alive_nodes(cluster: dict) -> list:
    return [n["node_id"] for n in cluster["nodes"] if n["alive"] and not n.get("draining")]


def _node_agents(srv) -> list:
    return _alive([p for p in srv.nebula_processes() if "nebula.node_main" in " ".join(_cmdline(p))])


def test_a_server_with_two_local_nodes_scales_up_and_down(tmp_path):
    srv = Server(tmp_path, "--NebulaApp.num_nodes=2", "--NebulaApp.autostart=True")
    try:
        cluster = srv.cluster()
        head = cluster["nodes"][0]["node_id"]
        assert len(_alive_nodes(cluster)) == 2 and cluster["num_nodes_requested"] == 2
        assert cluster["resources"]["total"]["CPU"] == 4 and len(_node_agents(srv)) == 2

        up = srv.post("nebula/api/cluster/scale", json={"nodes": 3})
        assert up.status_code == 200, up.text
        assert len(_alive_nodes(up.json())) == 3 and up.json()["num_nodes_requested"] == 3
        assert up.json()["resources"]["total"]["CPU"] == 6 and len(_node_agents(srv)) == 3

        down = srv.post("nebula/api/cluster/scale", json={"nodes": 1, "grace_s": 10})
        assert down.status_code == 200, down.text
        assert _alive_nodes(down.json()) == [head]  # the drained idle nodes are gone at once
        assert down.json()["resources"]["total"]["CPU"] == 2
        deadline = time.monotonic() + 15
        while len(_node_agents(srv)) > 1:
            assert time.monotonic() < deadline, "drained node agents did not exit"
            time.sleep(0.1)
        assert _alive_nodes(srv.cluster()) == [head]
    finally:
        srv.stop()
