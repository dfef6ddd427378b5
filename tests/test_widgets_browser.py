"""The dashboard in a real JupyterLab and its full page, seen by headless Chromium (playwright).

One Lab server (with the Nebula server extension, whose cluster the kernel joins) and one
browser serve the whole module. A notebook shows ``Dashboard()`` and runs waves of tasks:
the task graph must grow while they run, and once they are done the object placement and
node resources data in the browser must match ``nebula.state.snapshot()`` taken in the
kernel. The full-page dashboard must load with Jupyter's token and be refused without it.
Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from nebula.state import Event

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "nebula-widgets-test"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TASKS = 24  # 6 waves of 4, each task after (up to) two of the previous wave

CELLS = [
    "import json, time\nimport numpy as np\nimport nebula\nnebula.init()",
    "from nebula.widgets import Dashboard\ndashboard = Dashboard()\ndashboard",
    """@nebula.remote
def step(x, *parents):
    time.sleep(0.25)
    return np.full(50_000, float(x))   # 400 kB: kept in the object store

waves = []
for wave in range(6):
    parents = waves[-1] if waves else []
    waves.append([step.remote(10 * wave + i, *parents[i:i + 2]) for i in range(4)])
    time.sleep(0.3)
results = nebula.get([ref for wave in waves for ref in wave])
kept = nebula.put(np.ones(100_000))""",
]

SNAPSHOT_CODE = """
import json, nebula.state
_s = nebula.state.snapshot()
_n = _s.nodes[0]
_held = [o for o in _s.objects if o["state"] == "SEALED" and o["node"] == _n["node_id"] and not o["spilled"]]
print(json.dumps({"node": _n["node_id"], "capacity": _n["store"]["capacity"], "used": _n["store"]["used"],
                  "count": len(_held), "bytes": sum(o["size"] for o in _held)}))
"""

READ_SOURCE = """(name) => {
    for (const doc of Bokeh.documents) {
        const model = doc.get_model_by_name(name);
        if (model == null) continue;
        const data = model.data, out = {};
        const keys = data instanceof Map ? [...data.keys()] : Object.keys(data);
        for (const key of keys) out[key] = Array.from(data instanceof Map ? data.get(key) : data[key]);
        return out;
    }
    return null;
}"""

RUN_IN_KERNEL = """async (code) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute({code, store_history: false});
    let out = "", error = "";
    future.onIOPub = (msg) => {
        if (msg.header.msg_type === "stream") out += msg.content.text;
        if (msg.header.msg_type === "error") error += msg.content.ename + ": " + msg.content.evalue;
    };
    await future.done;
    return {out, error};
}"""

STATUS_SAYS = """(words) => Bokeh.documents.some(doc => {
    const status = doc.get_model_by_name("nebula_status");
    return status != null && status.text.includes(words);
})"""

KERNEL_IDLE = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.sessionContext && widget.sessionContext.session
        && widget.sessionContext.session.kernel;
    return kernel ? kernel.status === "idle" : false;
}"""


# ---- the Lab server and the browser ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Lab:
    """``jupyter lab`` with the Nebula server extension, isolated from the user's Jupyter files."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.root = tmp / "root"
        dirs = {name: tmp / name for name in ("config", "data", "runtime", "workspaces")}
        for path in (self.root, *dirs.values()):
            path.mkdir(parents=True, exist_ok=True)
        (dirs["config"] / "labconfig").mkdir()
        (dirs["config"] / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")},
               "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
               "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "BOKEH_RESOURCES": "inline"}
        self.log_path = tmp / "lab.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", "--port-retries=0", f"--IdentityProvider.token={TOKEN}",
             "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={dirs['workspaces']}",
             f"--ServerApp.root_dir={self.root}", *_extension_args(tmp)],
            env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "jupyter lab exited:\n" + self.log()
            if http_status(self.url + f"api/status?token={TOKEN}") == 200:
                return
            time.sleep(0.3)
        raise AssertionError("jupyter lab did not answer:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # the extension stops its cluster on the way out
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _extension_args(tmp: Path) -> list[str]:
    """The Nebula server extension; without it (not built yet), a test-only one mounting the page."""
    try:
        from nebula.kernel_ext import _jupyter_server_extension_points  # noqa: F401
    except ImportError:
        return _test_only_extension(tmp)
    return ["--ServerApp.jpserver_extensions={'nebula': True}", "--NebulaApp.num_cpus=2",
            "--NebulaApp.autostart=True"]


def _test_only_extension(tmp: Path) -> list[str]:
    """Start a cluster here and mount the dashboard handlers in the server; kernels join the cluster."""
    import nebula
    info = nebula.init(num_cpus=2, object_store_memory="512MiB")
    os.environ["NEBULA_ADDRESS"] = info["address"]
    os.environ["NEBULA_TOKEN_FILE"] = os.path.join(info["session_dir"], "token")
    package = tmp / "extension"
    package.mkdir()
    (package / "nebula_dashboard_for_tests.py").write_text(
        "def _jupyter_server_extension_points():\n"
        "    return [{'module': 'nebula_dashboard_for_tests'}]\n\n"
        "def _load_jupyter_server_extension(server):\n"
        "    from nebula.widgets.page import dashboard_handlers\n"
        "    server.web_app.add_handlers('.*$', dashboard_handlers(server.web_app.settings['base_url']))\n")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])
    return ["--ServerApp.jpserver_extensions={'nebula_dashboard_for_tests': True}"]


def http_status(url: str, headers: dict | None = None) -> int:
    """The status of a GET, redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError):
        return 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium fonts-dejavu-core)")
    saved = dict(os.environ)
    server = Lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium fonts-dejavu-core)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM, headless=True,
            args=BROWSER_FLAGS, viewport={"width": 1500, "height": 1300})
        yield context
        context.close()


RUN_FIRST_CELLS = """async () => {
    const app = window.jupyterapp;
    app.shell.currentWidget.content.activeCellIndex = 0;
    await app.commands.execute("notebook:run-cell-and-select-next");
    await app.commands.execute("notebook:run-cell-and-select-next");
}"""


@pytest.fixture(scope="module")
def notebook(lab, browser):
    """The dashboard notebook open in Lab: the dashboard shown, then the task cell started (as a user would)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(lab.root / "dashboard.ipynb"))
    page = browser.new_page()
    page.goto(f"{lab.url}lab/tree/dashboard.ipynb?reset&token={TOKEN}")
    page.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=200)
    page.evaluate(RUN_FIRST_CELLS)
    page.locator(".bk-Canvas >> visible=true").first.wait_for(timeout=60_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-cell'); }")  # the tasks
    return page


def read_source(page, name: str) -> dict | None:
    return page.evaluate(READ_SOURCE, name)


def run_in_kernel(page, code: str) -> str:
    result = page.evaluate(RUN_IN_KERNEL, code)
    assert not result["error"], result["error"]
    return result["out"]


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# ---- the notebook widget ---------------------------------------------------------------------

def test_the_task_graph_grows_while_tasks_run(notebook):
    notebook.locator(".bk-Canvas >> visible=true").first.wait_for(timeout=60_000)
    seen = []  # (rows drawn, rows finished), sampled while the cell runs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = read_source(notebook, "task_graph.tasks")
        if tasks is not None:
            sample = (len(tasks["key"]), tasks["state"].count("finished"))
            if not seen or sample != seen[-1]:
                seen.append(sample)
            if sample == (TASKS, TASKS):
                break
        time.sleep(0.15)
    assert seen and seen[-1] == (TASKS, TASKS), f"the graph stopped at {seen[-1:]}: {seen}"
    finished = sorted({done for _, done in seen})
    assert len(finished) >= 4, f"the graph did not grow while tasks ran: {seen}"
    assert [done for _, done in seen] == sorted(done for _, done in seen), "a finished task went back"
    tasks = read_source(notebook, "task_graph.tasks")
    assert sorted(set(tasks["x"])) == [0, 1, 2, 3, 4, 5]            # one depth per wave
    assert len(read_source(notebook, "task_graph.edges")["x0"]) == 5 * 7          # 7 per wave after the first
    assert notebook.locator(".bk-Canvas >> visible=true").count() >= 6
    screenshot(notebook, "notebook-dashboard.png")


def test_placement_and_resources_in_the_browser_match_the_kernels_snapshot(notebook):
    notebook.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=200)
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # telemetry comes once a second: wait for a sample after the work
        truth = json.loads(run_in_kernel(notebook, SNAPSHOT_CODE).strip().splitlines()[-1])
        stores = read_source(notebook, "object_placement.stores")
        history = read_source(notebook, f"node_resources.history:{truth['node']}")
        row = stores["key"].index(truth["node"]) if stores and truth["node"] in stores["key"] else None
        last = (truth, stores, history and history["store"][-1:])
        if row is not None and history and (
                stores["primary_count"][row], stores["primary_bytes"][row], stores["capacity"][row],
                stores["used"][row]) == (truth["count"], truth["bytes"], truth["capacity"], truth["used"]) and \
                history["store"][-1] == pytest.approx(100.0 * truth["used"] / truth["capacity"]):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the browser never matched the kernel's snapshot; last seen: {last}")
    assert truth["count"] >= TASKS + 1
    cells = read_source(notebook, "object_placement.cells")
    assert sum(1 for category in cells["category"] if category != "freed") == truth["count"]
    assert sum("step (task" in label for label in cells["task"]) == TASKS
    gauges = read_source(notebook, "node_resources.gauges")
    assert any(text.startswith("object store:") for text in gauges["text"])
    assert "no GPU on this node" in gauges["text"] or any(t.startswith("GPU0") for t in gauges["text"])
    assert len(read_source(notebook, "node_resources.cores")["core"]) == os.cpu_count()
    timeline = read_source(notebook, "timeline.tasks")
    assert timeline["name"].count("step") == TASKS and set(timeline["state"]) == {"finished"}
    screenshot(notebook, "notebook-dashboard-settled.png")


# ---- the full-page dashboard -----------------------------------------------------------------

LATE_CELLS = [
    """import time
import nebula
from nebula.widgets import Dashboard
nebula.init()
board = Dashboard()   # made, not shown yet

@nebula.remote
def drawn_before_shown(x):
    return x

nebula.get([drawn_before_shown.remote(i) for i in range(12)])

def drawn_in_the_kernel():  # the tasks, finished, and the node's resource history
    document = board.board.layout.document
    tasks = document.get_model_by_name("task_graph.tasks")
    node = nebula.get_runtime_context().get_node_id()
    names_states = list(zip(tasks.data["name"], tasks.data["state"])) if tasks is not None else []
    return names_states.count(("drawn_before_shown", "finished")) == 12 and \
        document.get_model_by_name(f"node_resources.history:{node}") is not None

deadline = time.monotonic() + 30
while not drawn_in_the_kernel():
    assert time.monotonic() < deadline, "the board never drew the tasks in the kernel"
    time.sleep(0.1)""",
    "board",
]


def test_a_widget_shown_after_it_drew_shows_what_it_drew(lab, browser, notebook):
    """A browser view starts from the document as the widget was made; what the widget drew
    before the view existed must reach it too (the tasks finished: nothing else will come)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in LATE_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(lab.root / "late.ipynb"))
    page = browser.new_page()
    try:
        page.goto(f"{lab.url}lab/tree/late.ipynb?reset&token={TOKEN}")
        page.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=200)
        page.evaluate(RUN_FIRST_CELLS)
        page.locator(".bk-Canvas >> visible=true").first.wait_for(timeout=60_000)
        deadline, rows = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            tasks = read_source(page, "task_graph.tasks") or {"name": [], "state": []}
            rows = [state for name, state in zip(tasks["name"], tasks["state"]) if name == "drawn_before_shown"]
            if rows == ["finished"] * 12:
                break
            time.sleep(0.3)
        assert rows == ["finished"] * 12, f"the browser shows {rows}"
        node = run_in_kernel(page, "print(nebula.get_runtime_context().get_node_id())").strip()
        assert read_source(page, f"node_resources.history:{node}") is not None  # made before the view
    finally:
        page.close()


def test_the_dashboard_page_loads_with_the_token_and_follows_the_cluster(lab, browser, notebook):
    page = browser.new_page()
    page.goto(f"{lab.url}nebula/dashboard?token={TOKEN}")
    assert page.url == f"{lab.url}nebula/dashboard"          # the token does not stay in the page's URL
    page.locator(".bk-Canvas >> visible=true").first.wait_for(timeout=30_000)
    page.wait_for_function(STATUS_SAYS, arg="connected as client", timeout=30_000, polling=200)
    run_in_kernel(notebook, "nebula.get([step.remote(i) for i in range(12)])")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tasks = read_source(page, "task_graph.tasks")
        if tasks and tasks["state"].count("finished") >= 12:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the page's task graph did not follow the kernel's tasks: {tasks}")
    stores = read_source(page, "object_placement.stores")
    truth = json.loads(run_in_kernel(notebook, SNAPSHOT_CODE).strip().splitlines()[-1])
    assert stores["key"] == [truth["node"]] and stores["capacity"] == [truth["capacity"]]
    assert page.locator(".bk-Canvas >> visible=true").count() >= 6
    screenshot(page, "dashboard-page.png")
    page.close()


def test_the_dashboard_page_is_refused_without_the_token(lab):
    page = lab.url + "nebula/dashboard"
    assert http_status(page) == 302                                   # to Jupyter's login page
    assert http_status(page + "?token=wrong") == 302
    socket_headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert http_status(page + "/ws", socket_headers) == 403
    assert http_status(page + "/static/js/bokeh.min.js") in (302, 403)
    assert http_status(page + f"?token={TOKEN}") == 302                # in, then to the page without it


# ---- two nodes, from synthetic events ----------------------------------------------------------

def test_two_nodes_render_from_synthetic_events(browser, tmp_path):
    """Until the feed spans nodes, a second node comes from synthetic events: every view draws both."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from nebula.widgets.board import Board
    from nebula.widgets.views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView
    from test_widgets_models import N1, N2, ret, running, sealed, submitted, telemetry

    board = Board([TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()])
    gpu = {"index": 0, "name": "H100", "utilization_percent": 80.0, "memory_used": 2**34, "memory_total": 2**36}
    now = time.time()
    events = [telemetry(N1, t=now), telemetry(N2, cores=(70.0, 20.0, 5.0), gpus=[gpu], t=now)]
    for i, node in enumerate([N1, N2, N1, N2]):
        task = f"t{i}" + "0" * 22
        events += [submitted(task, deps=[ret(f"t{i - 2}" + "0" * 22)] if i >= 2 else [], t=now),
                   running(task, node=node, pid=10 + i % 2, t=now), sealed(ret(task), node=node, size=2**20, t=now)]
    events.append(Event("object", ret("t0" + "0" * 22), "TRANSFERRED", now,
                        {"size": 2**20, "to": N2, "node": N1}))
    board.feed.receive(events)
    board.tick(now=now)
    page = browser.new_page()
    (tmp_path / "two-nodes.html").write_text(file_html(board.layout, INLINE, "two nodes"))
    page.goto((tmp_path / "two-nodes.html").as_uri())
    page.locator(".bk-Canvas >> visible=true").first.wait_for(timeout=30_000)
    stores = read_source(page, "object_placement.stores")
    assert stores["key"] == [N1, N2] and stores["secondary_count"] == [0, 1]
    gauges = read_source(page, "node_resources.gauges")["text"]
    assert "no GPU on this node" in gauges and "GPU0 H100: 80% busy" in gauges
    assert len(read_source(page, "node_resources.cores")["core"]) == 5
    lanes = set(read_source(page, "timeline.tasks")["lane"])
    assert lanes == {f"{N1[:8]} · pid 10", f"{N2[:8]} · pid 11"}
    assert len(read_source(page, "object_placement.transfers")["key"]) == 1
    assert len(read_source(page, "task_graph.edges")["x0"]) == 2
    screenshot(page, "two-nodes-synthetic.png")
    page.close()
