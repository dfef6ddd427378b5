"""``%load_ext nebula`` in real Jupyter kernels run by nbclient: outputs land in the right cell.

One notebook runs once for the module (many cells, checked one by one); interrupting runs
its own kernel.
"""
from __future__ import annotations

import os
import signal
import threading

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.timeout(120)

CELLS = {
    "setup": "%load_ext nebula\nimport nebula, time\ninfo = nebula.init(num_cpus=2)\ninfo",
    "late": ("@nebula.remote\ndef later(delay):\n    import time\n    time.sleep(delay)\n"
             "    print('LATE LINE', flush=True)\n    return delay\nref = later.remote(1.5)\nprint('submitted')"),
    "busy": "time.sleep(3.5)\nprint('busy cell done')",
    "remote": ("%%remote\nimport sys\nx = 41\nprint('hello from the cluster')\n"
               "print('to stderr', file=sys.stderr)\nx + 1"),
    "bound": "print('x is', x)",
    "error": "%%remote\ny = 1\ny / 0",
    "magic": "%%remote\n%ls",
    "actor_push": "%%remote --actor nbactor --push x\nacc = x * 2",
    "actor_pull": "%%remote --actor nbactor --pull acc\nacc += 1\nacc",
    "all_nodes": "%%remote --all-nodes -o per_node\nprint('on a node')\n'node result'",
    "per_node": "print(list(per_node.values()))",
    "no_block": "%%remote --no-block\nimport time\ntime.sleep(1)\nprint('BACKGROUND LINE')\nz = 5",
    "after_no_block": "time.sleep(2.5)\nnebula.get(_remote)",
    "progress": ("@nebula.remote\ndef nap(t):\n    import time\n    time.sleep(t)\n    return t\n"
                 "naps = nebula.get([nap.remote(0.6) for _ in range(6)])"),
    "held": "held = nebula.put(bytes(300_000))\nheld",
    "status": "%nebula status",
}


def notebook(cells: dict) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells.values()])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture(scope="module")
def executed():
    nb = notebook(CELLS)
    NotebookClient(nb, timeout=90, allow_errors=True, kernel_name="python3").execute()
    return nb, {name: nb.cells[i].outputs for i, name in enumerate(CELLS)}


def text_of(outputs, stream: str | None = None) -> str:
    parts = []
    for out in outputs:
        if out["output_type"] == "stream" and stream in (None, out["name"]):
            parts.append(out["text"])
        elif out["output_type"] in ("display_data", "execute_result") and stream is None:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def error_of(outputs):
    return next((o for o in outputs if o["output_type"] == "error"), None)


def test_task_output_after_its_cell_ended_stays_in_that_cell(executed):
    _, outputs = executed
    assert "submitted" in text_of(outputs["late"])
    late_display = [o for o in outputs["late"] if o["output_type"] == "display_data"]
    assert late_display and "(later pid=" in late_display[0]["data"]["text/plain"]
    assert "LATE LINE" in late_display[0]["data"]["text/plain"]
    assert "LATE LINE" not in text_of(outputs["busy"]) and "busy cell done" in text_of(outputs["busy"])


def test_remote_cell_streams_prints_and_shows_its_last_value(executed):
    _, outputs = executed
    assert "(remote_cell pid=" in text_of(outputs["remote"], "stdout")
    assert "hello from the cluster" in text_of(outputs["remote"], "stdout")
    assert "to stderr" in text_of(outputs["remote"], "stderr")
    result = [o for o in outputs["remote"] if o["output_type"] == "execute_result"]
    assert result and result[0]["data"]["text/plain"] == "42"
    assert text_of(outputs["bound"]) == "x is 41\n"


def test_remote_error_shows_the_remote_traceback(executed):
    _, outputs = executed
    error = error_of(outputs["error"])
    assert error is not None and "ZeroDivisionError" in error["ename"]
    shown = "\n".join(error["traceback"])
    assert "<remote In[" in shown and "y / 0" in shown and "kernel_ext" not in shown


def test_line_magic_in_remote_cell_is_refused(executed):
    _, outputs = executed
    error = error_of(outputs["magic"])
    assert error is not None and "IPython syntax" in error["evalue"]


def test_actor_cells_share_a_namespace(executed):
    _, outputs = executed
    assert error_of(outputs["actor_push"]) is None
    assert text_of(outputs["actor_pull"]) == "83"


def test_all_nodes_output_is_grouped_by_node(executed):
    _, outputs = executed
    group = [o for o in outputs["all_nodes"] if o["output_type"] == "display_data"]
    assert len(group) == 1
    text = group[0]["data"]["text/plain"]
    assert text.startswith("── node ") and "on a node" in text and "Out: 'node result'" in text
    assert text_of(outputs["per_node"]) == "[{}]\n"


def test_no_block_output_goes_to_its_own_cell(executed):
    _, outputs = executed
    assert "BACKGROUND LINE" in text_of(outputs["no_block"])
    assert "BACKGROUND LINE" not in text_of(outputs["after_no_block"])
    assert "{'z': 5}" in text_of(outputs["after_no_block"])


def test_get_on_many_refs_shows_a_widget_progress_bar(executed):
    nb, outputs = executed
    views = [o for o in outputs["progress"] if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, outputs["progress"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert bars and bars[-1]["value"] == bars[-1]["max"] == 6


def test_reprs_and_status_in_the_notebook(executed):
    _, outputs = executed
    assert "Nebula" in outputs["setup"][0]["data"]["text/html"]
    assert "ObjectRef" in outputs["held"][0]["data"]["text/html"]
    status = outputs["status"][0]["data"]["text/html"]
    assert "held by" in status and "Out[" in status


def test_interrupt_cancels_the_awaited_tasks_and_the_kernel_stays_usable():
    cells = {
        "setup": ("%load_ext nebula\nimport nebula\nnebula.init(num_cpus=2)\n"
                  "@nebula.remote\ndef sleepy():\n    import time\n    time.sleep(60)"),
        "get": "ref = sleepy.remote()\nnebula.get(ref)",
        "remote": "%%remote\nimport time\ntime.sleep(60)",
        "after": ("import nebula.state\nnebula.wait([ref], timeout=15)\ntry:\n    nebula.get(ref)\n"
                  "except Exception as exc:\n    print(type(exc).__name__)\n"
                  "print(sorted(nebula.state.snapshot().tasks_by_state))"),
    }
    nb = notebook(cells)
    client = NotebookClient(nb, timeout=60, allow_errors=True, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        for index in (1, 2):
            timer = threading.Timer(2.0, os.kill, (client.km.provisioner.process.pid, signal.SIGINT))
            timer.start()
            client.execute_cell(nb.cells[index], index)
            timer.join()
        client.execute_cell(nb.cells[3], 3)
    for index in (1, 2):
        assert error_of(nb.cells[index].outputs)["ename"] == "KeyboardInterrupt"
    after = text_of(nb.cells[3].outputs)
    assert "TaskCancelledError" in after
    assert "RUNNING" not in after and "PENDING" not in after
