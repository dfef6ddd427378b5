"""The widgets against a real embedded cluster, without a browser: the feed, the boards, the widget thread.

Checks that the state feed carries what the views show (owners, nodes, workers, errors),
that view models fed from it agree with ``nebula.state.snapshot()``, and that the Bokeh
sources of a board (and of a notebook widget, ticking on its own thread) equal the models.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import nebula
from nebula.widgets.feed import ClusterFeed
from nebula.state import unfold
from nebula.widgets.models import NodeResourcesModel, ObjectPlacementModel, TaskGraphModel, TimelineModel
from nebula.widgets.models.tasks import FAILED, FINISHED

pytestmark = pytest.mark.timeout(120)


@nebula.remote
def make_array(n):
    time.sleep(0.05)
    return np.ones(n)


@nebula.remote
def add(a, b):
    return a + b


@nebula.remote
def fail():
    raise ValueError("boom")


@nebula.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n


def poll_until(feed: ClusterFeed, done, timeout: float = 20.0) -> list:
    """Poll ``feed`` like a view's tick until ``done(all events so far)``."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += feed.poll()[1]
        if done(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the feed did not deliver in {timeout} s; got {[(e.kind, e.state) for e in seen][-20:]}")


def run_workload():
    """Stored arrays with a dependency, a failing task and an actor call; returns what stays referenced."""
    a, b = make_array.remote(200_000), make_array.remote(200_000)
    total = add.remote(a, b)
    counter = Counter.remote()
    nebula.get([total, counter.inc.remote()])
    with pytest.raises(ValueError):
        nebula.get(fail.remote())
    return [a, b, total, counter]


def test_the_feed_waits_for_init_then_starts_over_with_the_snapshot(cluster):
    nebula.shutdown()
    feed = ClusterFeed()
    assert feed.poll() == (False, []) and not feed.connected
    nebula.init(num_cpus=2, object_store_memory="512MiB")
    try:
        start_over, seeds = feed.poll()
        assert start_over and feed.client_id == nebula.get_runtime_context().get_worker_id()
        assert [(e.kind, e.id) for e in seeds if e.kind == "node"] == [("node", nebula.get_runtime_context().get_node_id())]
    finally:
        feed.close()


def test_the_feed_carries_owner_placement_and_errors_of_tasks(cluster):
    feed = ClusterFeed()
    feed.poll()
    held = run_workload()
    events = poll_until(feed, lambda seen: sum(e.state in ("FINISHED", "FAILED") for e in seen if e.kind == "task") >= 5)
    me = nebula.get_runtime_context().get_worker_id()
    tasks = [e for e in events if e.kind == "task"]  # a poll folds each task's events into one
    assert {e.get("owner") for e in tasks} == {me}
    runs = [e for e in tasks if e.state in ("RUNNING", "FINISHED", "FAILED") and not e.get("actor")]
    node = nebula.get_runtime_context().get_node_id()
    assert len(runs) >= 4 and all(e.get("node") == node and e.get("worker") and e.get("pid") for e in runs)
    [failure] = [e for e in tasks if e.state == "FAILED"]
    assert failure.get("error") == "ValueError: boom"
    [total] = [e for e in tasks if e.get("name") == "add" and e.get("deps")]
    assert [d[:-4] for d in total.get("deps")] == [held[0].hex()[:-4], held[1].hex()[:-4]]
    feed.close()


def test_models_fed_from_the_feed_agree_with_the_snapshot(cluster):
    feed = ClusterFeed()
    placement, resources, graph = ObjectPlacementModel(), NodeResourcesModel(), TaskGraphModel()
    models = (placement, resources, graph)
    _, seeds = feed.poll()
    for model in models:
        model.apply(seeds)
    held = run_workload()
    extra = nebula.put(np.zeros(300_000))
    deadline = time.monotonic() + 20
    while True:  # until a telemetry sample has seen the store as it is now
        events = feed.poll()[1]
        for model in models:
            model.apply(events)
        snapshot = nebula.state.snapshot()
        node = snapshot.nodes[0]
        if resources.latest.get(node["node_id"], {}).get("store", {}).get("used") == node["store"]["used"]:
            break
        assert time.monotonic() < deadline, "no telemetry matching the snapshot"
        time.sleep(0.2)
    sealed = [o for o in snapshot.objects if o["state"] == "SEALED" and o["node"] == node["node_id"]]
    totals = placement.totals(node["node_id"])
    assert totals["counts"]["primary"] == sum(not o["spilled"] for o in sealed)
    assert totals["bytes"]["primary"] == sum(o["size"] for o in sealed if not o["spilled"])
    assert totals["capacity"] == node["store"]["capacity"]
    states = dict(zip(graph.columns()["tasks"]["name"], graph.columns()["tasks"]["state"]))
    assert states["add"] == FINISHED and states["fail"] == FAILED and states["Counter.inc"] == FINISHED
    del held, extra
    feed.close()


@nebula.remote
def noop():
    return None


def test_a_burst_of_short_tasks_arrives_partly_as_stretches_and_every_task_is_counted(cluster):
    """Thousands of short tasks: the feed brings runs of them as stretches ("tasks" events),
    and the grouped graph and the timeline count each task exactly once."""
    feed = ClusterFeed()
    feed.poll()
    graph, timeline = TaskGraphModel(group_after=100), TimelineModel()
    refs = [noop.remote() for _ in range(3000)]
    nebula.get(refs)
    ids = {ref.task_id() for ref in refs}
    events = poll_until(feed, lambda seen: ids <= {e.id for e in unfold(seen) if e.state == "FINISHED"})
    assert any(e.kind == nebula.state.STRETCH for e in events)
    for model in (graph, timeline):
        model.apply(events)
    assert graph.columns()["tasks"]["counts"] == ["3000 finished"]
    merged = sum(int(d.split()[0]) for d in timeline.columns()["tasks"]["duration"] if "tasks" in d)
    single = sum(1 for d in timeline.columns()["tasks"]["duration"] if "tasks" not in d)
    assert merged + single == 3000
    feed.close()


def test_the_feeds_buffer_counts_a_stretch_as_its_tasks_and_drops_the_oldest_past_its_limit():
    from nebula.state import Event
    from nebula.state_events import stretch_event
    feed = ClusterFeed(limit=100)
    rows = [(f"t{i}", "f", 1.0 + i * 0.002, 1.001 + i * 0.002, "n", "w", 7) for i in range(60)]
    feed.receive([stretch_event("FINISHED", rows, "me", "job")])
    feed.receive([Event("task", f"u{i}", "FINISHED", 2.0, {"name": "g"}) for i in range(30)])
    assert feed.dropped == 0
    feed.receive([stretch_event("FINISHED", rows[:20], "me", "job")])  # 110 events held: the oldest goes
    assert feed.dropped == 60
    assert [e.id for e in feed._buffer][:2] == ["u0", "u1"] and feed._held == 50


def test_a_board_keeps_its_bokeh_sources_equal_to_its_models_and_filters_by_owner(cluster):
    from nebula.widgets.board import Board
    from nebula.widgets.views import ObjectPlacementView, TaskGraphView, TimelineView
    board = Board([TaskGraphView(), ObjectPlacementView(), TimelineView()])
    board.tick()
    held = run_workload()
    time.sleep(1.0)
    board.tick()
    graph = board.views[0]
    assert graph.sources["tasks"].data["name"]
    for view in board.views:
        model = view.models[view.active]
        for name, columns in model.columns().items():
            shown = {column: list(values) for column, values in view.sources[name].data.items()}
            assert shown == columns, (type(view).__name__, name)
    board.switch.active = True               # "this notebook only": everything here is this process's
    assert sorted(graph.sources["tasks"].data["key"]) == sorted(graph.models["mine"].columns()["tasks"]["key"])
    assert len(graph.sources["tasks"].data["key"]) == len(graph.models["all"].columns()["tasks"]["key"])
    assert "connected as client" in board.status.text
    del held
    board.close()


def test_a_notebook_widget_ticks_on_its_own_thread_and_stops_when_closed(cluster):
    from nebula.widgets import Dashboard
    widget = Dashboard(period=0.1)
    held = run_workload()
    deadline = time.monotonic() + 20
    tasks = widget.board.views[0].sources["tasks"]
    while len(tasks.data["key"]) < 5:
        assert time.monotonic() < deadline, "the widget's task graph did not fill"
        time.sleep(0.1)
    pump, models = widget._pump, widget.board.process.popen  # its view models run in their own process
    widget.close()
    assert not pump.alive and not widget.board.connected and models.poll() is not None
    widget.close()                           # closing twice is harmless
    del held


def test_dashboard_handlers_are_mounted_under_the_base_url():
    from nebula.widgets.page import DashboardPageHandler, DashboardSocketHandler, dashboard_handlers
    handlers = dashboard_handlers("/user/ann/")
    assert [h[0] for h in handlers] == ["/user/ann/nebula/dashboard/?", "/user/ann/nebula/dashboard/ws",
                                        "/user/ann/nebula/dashboard/static/(.*)"]
    assert handlers[0][1] is DashboardPageHandler and handlers[1][1] is DashboardSocketHandler


def test_a_view_that_fails_an_update_is_redrawn_from_its_model(caplog):
    from nebula.widgets.board import Board
    from nebula.widgets.views import TaskGraphView
    from test_widgets_models import submitted
    board = Board([TaskGraphView()])
    view = board.views[0]
    board.feed.poll = lambda: (False, [submitted("a"), submitted("b")])
    model = view.models["all"]
    apply = model.apply

    def apply_then_fail(events, now=None):
        apply(events, now)
        raise RuntimeError("a bug in a view")

    model.apply = apply_then_fail
    board.tick()
    assert "failed to take an update" in caplog.text
    assert list(view.sources["tasks"].data["key"]) == ["a", "b"]
