"""JupyterLab in headless Chromium: a task's late print shows in its own cell, not in the running one.

A task prints 2.5 s after its cell ended, while the next cell is still running. The line
must appear under the first cell (through the display it left behind) and never under the
running one. The Lab server runs the nebula server extension, so the kernel joins the
server's cluster. A screenshot goes to test-artifacts/.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

pytestmark = pytest.mark.timeout(240)

CHROMIUM = "/usr/bin/chromium"
TOKEN = "nebula-lab-token"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CELLS = [
    "%load_ext nebula\nimport nebula, time\nnebula.init()",
    ("@nebula.remote\ndef later():\n    import time\n    time.sleep(2.5)\n    print('LATE LINE FROM THE TASK', flush=True)\n"
     "ref = later.remote()\nprint('first cell done')"),
    "time.sleep(7)\nprint('second cell done')",
]
KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
               " return !!k && k.status === 'idle'; }")
OUTPUT_TEXTS = "() => Array.from(document.querySelectorAll('.jp-Cell .jp-OutputArea')).map(e => e.innerText)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium fonts-dejavu-core)")
    root = tmp_path_factory.mktemp("lab")
    dirs = {k: root / k for k in ("config", "data", "runtime", "work", "workspaces")}
    for path in dirs.values():
        path.mkdir()
    (dirs["config"] / "labconfig").mkdir()
    (dirs["config"] / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, dirs["work"] / "late.ipynb")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")},
           "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
           "JUPYTER_RUNTIME_DIR": str(dirs["runtime"])}
    port = _free_port()
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         "--port-retries=0", f"--IdentityProvider.token={TOKEN}", "--LabApp.expose_app_in_browser=True",
         f"--LabApp.workspaces_dir={dirs['workspaces']}", f"--ServerApp.root_dir={dirs['work']}",
         "--ServerApp.jpserver_extensions={'nebula': True}", "--NebulaApp.num_cpus=2"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", server)
        yield f"http://127.0.0.1:{port}", root
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _wait_for(url: str, server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "jupyter lab exited"
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("jupyter lab did not answer")


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        yield context
        context.close()


def test_late_task_output_shows_in_its_own_cell(lab, browser):
    url, _ = lab
    page = browser.new_page()
    page.goto(f"{url}/lab/tree/late.ipynb?reset&token={TOKEN}")
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function("() => document.querySelectorAll('.jp-Cell')[2].innerText.includes('second cell done')",
                           timeout=120_000)
    time.sleep(0.5)  # let any straggling message land before looking
    setup, first, running = page.evaluate(OUTPUT_TEXTS)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab_late_output.png"))
    assert "joined cluster" in setup  # the kernel joined the server's cluster with plain init()
    assert "first cell done" in first and "LATE LINE FROM THE TASK" in first and "(later pid=" in first
    assert "LATE LINE FROM THE TASK" not in running and "second cell done" in running
