"""A notebook board whose view models run in their own process, against a real embedded cluster.

Checks that the kernel's sources end up equal to what the model process computed from the
cluster's feed (this process's tasks included, even those from before the board opened),
that the "this notebook only" switch rebuilds the views there, that a model process that
dies is reported and replaced, and that none outlives its board or its kernel.
"""
from __future__ import annotations

import os
import signal

import psutil
import pytest

import nebula
from driver_process import standalone_env, start_driver
from polling import wait_until

pytestmark = pytest.mark.timeout(120)


@nebula.remote
def square(x):
    return x * x


@nebula.remote
def boom():
    raise ValueError("boom")


def make_board():
    from nebula.widgets.offloaded_board import OffloadedBoard
    from nebula.widgets.views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView
    return OffloadedBoard([TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()], 0.1)


def tick_until(board, predicate, timeout=20.0):
    def ticked():
        board.tick()
        return predicate()
    assert wait_until(ticked, timeout, 0.1), f"the board never got there; status: {board.status.text}"


def task_states(board) -> dict:
    data = board.views[0].sources["tasks"].data
    return dict(zip(data["name"], data["state"]))


def test_the_kernel_draws_what_the_model_process_computed(cluster):
    before = nebula.get([square.remote(i) for i in range(5)])  # before the board exists: from the snapshot
    board = make_board()
    board.prime()
    try:
        tick_until(board, lambda: board.drawn)
        pid = board.process.popen.pid
        assert psutil.Process(pid).cmdline()[-2].endswith("model_process_main")
        with pytest.raises(ValueError):
            nebula.get(boom.remote())
        tick_until(board, lambda: task_states(board).get("boom") == "failed")
        assert task_states(board)["square"] == "finished" and before == [0, 1, 4, 9, 16]
        names = board.views[0].sources["tasks"].data["name"]
        assert names.count("square") >= 5 and names.count("boom") == 1
        lanes = board.views[3].sources["tasks"].data["lane"]
        assert lanes and all(lane.startswith(board.node_id[:8]) for lane in lanes)
        cores = board.views[2].sources["cores"]  # from the node's telemetry, about once a second
        tick_until(board, lambda: len(cores.data["core"]) == psutil.cpu_count())
        assert f"connected as client {board.client_id[:8]}" in board.status.text
    finally:
        board.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert board.process is None


def test_the_switch_rebuilds_the_views_in_the_model_process(cluster):
    board = make_board()
    board.prime()
    try:
        nebula.get([square.remote(i) for i in range(3)])
        tick_until(board, lambda: board.drawn and "square" in task_states(board))
        board.switch.active = True                       # "this notebook only": all of them are ours
        before = len(board.views[0].sources["tasks"].data["key"])
        board.views[0].sources["tasks"].data = {k: [] for k in board.views[0].sources["tasks"].data}
        tick_until(board, lambda: len(board.views[0].sources["tasks"].data["key"]) == before)
        assert all(view.pair.mine for view in board.views)
    finally:
        board.close()


def test_a_model_process_that_dies_is_reported_and_replaced(cluster):
    board = make_board()
    board.prime()
    try:
        tick_until(board, lambda: board.drawn)
        first = board.process.popen.pid
        os.kill(first, signal.SIGKILL)
        tick_until(board, lambda: "killed by signal 9" in board.status.text, timeout=10)
        from nebula.widgets import offloaded_board
        board._failed_at -= offloaded_board.RESTART_AFTER  # as if the pause before a restart had passed
        tick_until(board, lambda: board.process is not None and board.drawn)
        assert board.process.popen.pid != first and "connected as client" in board.status.text
    finally:
        board.close()


def test_the_model_process_ends_with_a_killed_kernel():
    driver = start_driver("""
        import time, nebula
        from nebula.widgets.offloaded_board import OffloadedBoard
        from nebula.widgets.views import TaskGraphView
        nebula.init(num_cpus=1)
        board = OffloadedBoard([TaskGraphView()], 0.1)
        board.prime()
        while not board.drawn:
            board.tick(); time.sleep(0.1)
        print(board.process.popen.pid, flush=True)
        time.sleep(60)
    """, standalone_env())
    try:
        line = driver.stdout.readline()
        assert line.strip().isdigit(), driver.stderr.read() if driver.poll() is not None else line
        pid = int(line)
        assert psutil.pid_exists(pid)
    finally:
        driver.kill()
        driver.wait()
    assert wait_until(lambda: not psutil.pid_exists(pid), 10), "the model process outlived its kernel"


class _QueuedMessages:
    """Stands in for the model process: what it sent, all arriving within one tick."""

    exit_status = None

    def __init__(self, messages):
        self._messages = messages

    def messages(self):
        out, self._messages = self._messages, []
        return out

    def close(self):
        pass


def test_a_replace_and_a_stream_in_one_tick_reach_the_browser_once():
    """Bokeh serializes a held data replacement when the hold ends, rows streamed meanwhile
    included, and sends the stream too: the board must not combine the two in one change."""
    from bokeh.document import Document
    from bokeh.protocol import Protocol
    from nebula.widgets.feed import current_client_id
    from nebula.widgets.models.update import Update
    from nebula.widgets.offloaded_board import OffloadedBoard
    from nebula.widgets.views import NodeResourcesView
    board = OffloadedBoard([NodeResourcesView()], 0.1)
    document = Document()
    document.add_root(board.layout)
    sent = []
    document.on_change(lambda event: sent.append(Protocol().create("PATCH-DOC", [event]).content["events"][0]))
    row = {"key": ["n1:0"], "node": ["n1"], "core": [0], "percent": [5.0], "text": ["5%"]}
    columns = {"cores": {k: list(v) for k, v in row.items()}, "gauges": {}}
    more = Update(stream={"cores": {"key": ["n1:1"], "node": ["n1"], "core": [1], "percent": [7.0], "text": ["7%"]}})
    board.process = _QueuedMessages([("replace", [(columns, {})]), ("updates", [more], 0)])
    board.client_id = current_client_id()  # whether or not this process is connected: no restart
    board.tick()
    browser: list = []
    for event in sent:
        if event.get("kind") == "ColumnDataChanged" and event["model"]["id"] == board.views[0].sources["cores"].id:
            browser = list(dict(event["data"]["entries"])["key"])
        elif event.get("kind") == "ColumnsStreamed" and event["model"]["id"] == board.views[0].sources["cores"].id:
            browser += list(dict(event["data"]["entries"])["key"])
    assert browser == ["n1:0", "n1:1"] == list(board.views[0].sources["cores"].data["key"])
