"""The widgets' view models, fed synthetic ``nebula.state`` events: no cluster, no Bokeh, no browser.

Each test asserts the exact stream/patch contents a view would send, and ``BrowserCopy``
(which applies updates the way Bokeh's ColumnDataSource does, rollover included) checks
that what a browser would hold always equals the model's own ``columns()``.
"""
from __future__ import annotations

import collections
import itertools
import math

import pytest

from nebula.state import STRETCH, Event, coalesce, unfold
from nebula.state_events import FeedBatch
from nebula.widgets.models import (NodeResourcesModel, ObjectPlacementModel, RowTable, TaskGraphModel,
                                   TimelineModel, Update)
from nebula.widgets.models.object_placement import CELLS_PER_NODE
from nebula.widgets.models.tasks import CANCELLED, FAILED, FINISHED, PENDING, RUNNING, WAITING, BoundedMap

pytestmark = pytest.mark.timeout(60)

ME, OTHER = "client-me", "client-other"
N1, N2 = "node1" + "0" * 23, "node2" + "0" * 23


def ev(kind: str, event_id: str, state: str, t: float = 100.0, **data) -> Event:
    return Event(kind, event_id, state, t, data)


def ret(task_id: str, index: int = 0) -> str:
    """The object id of a task's return value (task id + 4 hex digits)."""
    return f"{task_id}{index:04x}"


def submitted(task_id, name="f", owner=ME, deps=(), actor=None, t=100.0):
    extra = {"actor": actor} if actor else {}
    return ev("task", task_id, "SUBMITTED", t, name=name, owner=owner, job="1", deps=list(deps), **extra)


def running(task_id, name="f", node=N1, worker="w1", pid=11, t=101.0, owner=ME):
    return ev("task", task_id, "RUNNING", t, name=name, owner=owner, node=node, worker=worker, pid=pid)


def finished(task_id, name="f", start=101.0, end=101.5, state="FINISHED", error=None, t=102.0, owner=ME):
    extra = {"error": error} if error else {}
    return ev("task", task_id, state, t, name=name, owner=owner, start=start, end=end, **extra)


def short_task_batches(batches: int = 4, per_batch: int = 30, owners=(ME,), lanes=((N1, 11), (N2, 22)),
                       ahead: bool = False) -> list:
    """Flushes of short tasks of one function back to back on each lane, as their owners ship
    them (rows): per step, ``per_batch`` tasks of one owner (taking turns) ending, round-robin
    over ``lanes``, submitted in the same flush or, ``ahead``, in the step before (as when a
    loop submits faster than the tasks run)."""
    clock = {lane: 100.0 for lane in lanes}
    subs, ends = collections.defaultdict(list), collections.defaultdict(list)  # (batch, owner) -> rows
    for b in range(batches):
        owner = owners[b % len(owners)]
        for i in range(per_batch):
            lane, task = lanes[i % len(lanes)], f"b{b}t{i}"
            start = clock[lane]
            clock[lane] = start + 0.002
            subs[b, owner].append((task, "f", (), start - 0.001))
            ends[b + ahead, owner].append((task, "f", start, start + 0.001, lane[0], f"w{lane[1]}", lane[1]))
    return [FeedBatch([], subs[b, owner], (owner, "1"), ends[b, owner])
            for b in range(batches + 1) for owner in owners if (b, owner) in subs or (b, owner) in ends]


class BrowserCopy:
    """What a browser holds after applying updates as Bokeh does (patch, then stream with rollover)."""

    def __init__(self, columns: dict):
        self.data = {name: {c: list(v) for c, v in cols.items()} for name, cols in columns.items()}

    def apply(self, update: Update) -> None:
        for name, cols in update.replace.items():
            self.data[name] = {c: list(v) for c, v in cols.items()}
        for name, patch in update.patch.items():
            for column, cells in patch.items():
                for row, value in cells:
                    self.data[name][column][row] = value
        for name, rows in update.stream.items():
            source = self.data.setdefault(name, {c: [] for c in rows})
            for column, values in rows.items():
                source[column].extend(values)
                keep = update.rollover.get(name)
                if keep is not None:
                    del source[column][:-keep or len(source[column])]


def feed(model, browser: BrowserCopy, *batches, now: float = 200.0) -> list[Update]:
    updates = []
    for batch in batches:
        update = model.apply(batch, now=now)
        browser.apply(update)
        updates.append(update)
    assert _same(browser.data, model.columns())
    return updates


def _same(a, b) -> bool:
    """Equality with NaN equal to itself (history columns use NaN for 'no GPU')."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---- RowTable ---------------------------------------------------------------------------------------

def test_row_table_patches_rows_already_sent_and_edits_pending_ones():
    table = RowTable(("key", "v"))
    table.add("a", {"key": "a", "v": 1})
    table.set("a", v=2)                        # not sent yet: the pending row changes
    assert table.flush() == ({}, {"key": ["a"], "v": [2]})
    table.set("a", v=3)
    table.set("a", v=4)                        # two changes in one period: one patch
    table.add("b", {"key": "b", "v": 5})
    assert table.flush() == ({"v": [(0, 4)]}, {"key": ["b"], "v": [5]})


def test_row_table_rollover_shifts_patch_indices_and_forgets_dropped_rows():
    table = RowTable(("key",), rollover=3)
    for key in "abcde":
        table.add(key, {"key": key})
    table.flush()
    assert table.columns() == {"key": ["c", "d", "e"]}
    assert "a" not in table and "b" not in table
    table.set("a", key="A")                    # rolled over: nothing to patch
    table.set("d", key="D")
    assert table.flush() == ({"key": [(1, "D")]}, {})


def test_row_table_reset_becomes_one_replace():
    table = RowTable(("key",))
    table.add("a", {"key": "a"})
    table.flush()
    table.reset([("x", {"key": "x"})])
    table.add("y", {"key": "y"})
    update = Update()
    update.add_table("t", table)
    assert update.replace == {"t": {"key": ["x", "y"]}} and not update.stream and not update.patch


# ---- task graph ---------------------------------------------------------------------------------------

def test_task_graph_streams_new_tasks_and_their_dependency_edges():
    model = TaskGraphModel()
    browser = BrowserCopy(model.columns())
    [update] = feed(model, browser, [submitted("a"), submitted("b", deps=[ret("a")])])
    assert update.stream["tasks"]["key"] == ["a", "b"]
    assert update.stream["tasks"]["x"] == [0, 1] and update.stream["tasks"]["y"] == [0, 0]
    assert update.stream["tasks"]["state"] == [WAITING, PENDING]  # "a" has no arguments to wait for
    assert update.stream["edges"] == {"x0": [0], "y0": [0], "x1": [1], "y1": [0]}
    assert not update.patch


def test_task_graph_patches_state_changes_with_node_worker_duration_and_error():
    model = TaskGraphModel()
    browser = BrowserCopy(model.columns())
    feed(model, browser, [submitted("a"), submitted("bad", name="g")])
    [update] = feed(model, browser, [ev("task", "a", "PENDING_NODE", name="f"), running("a")])
    assert update.patch["tasks"]["state"] == [(0, RUNNING)]
    assert update.patch["tasks"]["node"] == [(0, N1[:8])] and update.patch["tasks"]["worker"] == [(0, "w1")]
    assert not update.stream
    [update] = feed(model, browser, [finished("a", start=1.0, end=1.25),
                                     finished("bad", name="g", state="FAILED", error="ValueError: boom")])
    assert dict(update.patch["tasks"]["state"]) == {0: FINISHED, 1: FAILED}
    assert dict(update.patch["tasks"]["duration"])[0] == "250.0 ms"
    assert dict(update.patch["tasks"]["error"])[1] == "ValueError: boom"


def test_task_graph_names_cancelled_tasks_and_waiting_ones():
    model = TaskGraphModel()
    model.apply([submitted("a", deps=[ret("x")]), ev("task", "a", "PENDING_NODE", name="f"),
                 submitted("b", deps=[ret("x")]), submitted("c")])
    assert model.columns()["tasks"]["state"] == [WAITING, PENDING, WAITING]  # c has no arguments to wait for
    model.apply([finished("a", state="FAILED", error="TaskCancelledError: Task a was cancelled")])
    assert model.columns()["tasks"]["state"][0] == CANCELLED


def test_task_graph_a_task_that_comes_and_goes_within_one_period_is_streamed_once_as_final():
    model = TaskGraphModel()
    update = model.apply([submitted("a"), running("a"), finished("a")])
    assert update.stream["tasks"]["state"] == [FINISHED] and not update.patch


def test_task_graph_layout_is_depth_by_arrival_and_drawn_tasks_never_move():
    model = TaskGraphModel()
    browser = BrowserCopy(model.columns())
    feed(model, browser, [submitted("a"), submitted("b"), submitted("c", deps=[ret("a")])])
    before = dict(zip(model.columns()["tasks"]["key"], zip(model.columns()["tasks"]["x"],
                                                           model.columns()["tasks"]["y"])))
    assert before == {"a": (0, 0), "b": (0, -1), "c": (1, 0)}
    updates = feed(model, browser, [submitted("d", deps=[ret("c"), ret("b")]), submitted("e")],
                   [submitted("f", deps=[ret("a")])])
    for update in updates:  # later batches only add rows: nothing drawn moves
        assert "x" not in update.patch.get("tasks", {}) and "y" not in update.patch.get("tasks", {})
    cols = model.columns()["tasks"]
    after = dict(zip(cols["key"], zip(cols["x"], cols["y"])))
    assert {k: after[k] for k in before} == before
    assert after["d"] == (2, 0) and after["e"] == (0, -2) and after["f"] == (1, -1)
    assert len(model.columns()["edges"]["x0"]) == 4


def test_task_graph_draws_an_edge_when_its_dependency_arrives_late():
    model = TaskGraphModel()
    browser = BrowserCopy(model.columns())
    feed(model, browser, [submitted("b", deps=[ret("a")])])      # a was submitted by a process seen later
    assert model.columns()["edges"]["x0"] == []
    [update] = feed(model, browser, [submitted("a", owner=OTHER)])
    assert update.stream["edges"] == {"x0": [0], "y0": [-1], "x1": [0], "y1": [0]}


def test_task_graph_marks_actor_calls_and_places_them_on_the_actor():
    model = TaskGraphModel()
    model.apply([ev("actor", "act1", "ALIVE", node=N2, worker="wa", pid=7, class_name="Counter"),
                 submitted("c1", name="Counter.inc", actor="act1"),
                 ev("task", "c1", "RUNNING", name="Counter.inc", actor="act1")])
    cols = model.columns()["tasks"]
    assert cols["kind"] == ["actor call"] and cols["node"] == [N2[:8]]
    assert cols["worker"] == ["wa (Counter act1)"]


def test_task_graph_this_notebook_only_keeps_the_owners_tasks():
    model = TaskGraphModel(owner=ME)
    model.apply([submitted("a"), submitted("b", owner=OTHER), running("b", owner=OTHER), running("z", owner=OTHER)])
    assert model.columns()["tasks"]["key"] == ["a"]


def test_task_graph_groups_by_function_past_the_cap_and_keeps_only_live_tasks():
    model = TaskGraphModel(group_after=5)
    browser = BrowserCopy(model.columns())
    batch = [submitted(f"f{i}", name="load") for i in range(3)]
    batch += [submitted(f"g{i}", name="train", deps=[ret(f"f{i}")]) for i in range(3)]
    batch += [running("f0", name="load"), finished("f0", name="load", start=1.0, end=3.0)]
    [update] = feed(model, browser, batch)
    groups = update.replace["tasks"]
    assert groups["key"] == ["load", "train"] and groups["kind"] == ["function", "function"]
    assert (groups["x"], groups["y"]) == ([0, 1], [0, 0])
    assert groups["counts"][0] == "2 waiting for resources · 1 finished"  # no arguments to wait for
    assert groups["state"] == [WAITING, PENDING]
    assert groups["duration"][0] == "mean 2.00 s"
    assert update.replace["edges"] == {"x0": [0], "y0": [0], "x1": [1], "y1": [0]}
    assert set(model.tasks) == {"f1", "f2", "g0", "g1", "g2"}      # finished ones are forgotten
    [update] = feed(model, browser, [running("f1", name="load")])
    assert update.patch["tasks"]["state"] == [(0, RUNNING)]
    assert update.patch["tasks"]["counts"] == [(0, "1 waiting for resources · 1 running · 1 finished")]
    [update] = feed(model, browser, [submitted("h0", name="report", deps=[ret("g0")])])
    assert update.stream["tasks"]["key"] == ["report"] and update.stream["tasks"]["x"] == [2]


def test_task_graph_counts_tasks_first_seen_ended_into_their_group_as_the_full_path_would():
    """Once grouped, a task whose events of one period come folded into one ended event is
    counted straight into its group; its owner's late submission adds no pending task."""
    def run(model, folded: bool):
        model.apply([submitted(f"w{i}", name="load") for i in range(3)])  # past the cap: grouped
        for i in range(6):
            events = [submitted(f"t{i}", name="load", owner=OTHER if i == 5 else ME),
                      ev("task", f"t{i}", "FINISHED", 102.0, name="load", node=N2, worker=f"worker{i % 2}",
                         pid=20 + i % 2, start=1.0, end=1.5 + i)]
            model.apply(coalesce(events) if folded else events)
        model.apply([submitted("t0", name="load")])  # the owner's report, come after the end
        return model.columns()["tasks"]

    folded, stepwise = run(TaskGraphModel(group_after=2), True), run(TaskGraphModel(group_after=2), False)
    assert folded == stepwise
    assert folded["counts"] == ["3 waiting for resources · 6 finished"]
    assert (folded["node"], folded["worker"]) == ([N2[:8]], ["2 workers"])
    assert folded["duration"] == ["mean 3.00 s"]
    for folded in (True, False):
        mine = run(TaskGraphModel(owner=ME, group_after=2), folded)
        assert mine["counts"] == ["3 waiting for resources · 5 finished"]

def test_task_graph_memory_stays_bounded_over_many_tasks():
    model = TaskGraphModel(group_after=100, memory=1000)
    for start in range(0, 20_000, 500):
        batch = []
        for i in range(start, start + 500):
            tid = f"t{i}"
            batch += [submitted(tid, name=f"fn{i % 7}", deps=[ret(f"t{i - 1}")]), running(tid), finished(tid)]
        model.apply(batch)
    assert len(model.table) == 7 and len(model.tasks) == 0
    assert len(model.group_of) <= 1000 and len(model.placed) == 0 and len(model.waiting_edges) == 0
    assert sum(model.groups["fn0"].counts.values()) == len(range(0, 20_000, 7))


# ---- object placement --------------------------------------------------------------------------------

def sealed(object_id, node=N1, size=1000, owner=ME, t=100.0):
    return ev("object", object_id, "SEALED", t, size=size, owner=owner, node=node)


def telemetry(node=N1, cores=(10.0, 30.0), gpus=(), used=0, capacity=10_000, t=100.0):
    return ev("node", node, "TELEMETRY", t, cpu_percent_per_core=list(cores), memory_total=8 * 2**30,
              memory_used=2 * 2**30, memory_percent=25.0, gpus=list(gpus), has_gpu=bool(gpus), node=node,
              store={"capacity": capacity, "used": used, "objects": 0, "spilled": 0, "spilled_bytes": 0,
                     "pinned": 0})


def test_placement_counts_objects_per_node_against_capacity_and_names_their_task():
    model = ObjectPlacementModel()
    browser = BrowserCopy(model.columns())
    [update] = feed(model, browser, [telemetry(used=3000), submitted("t1", name="load"),
                                     sealed(ret("t1"), size=2000), sealed("p" * 28, size=500)])
    store = update.stream["stores"]
    assert store["primary_count"] == [2] and store["primary_bytes"] == [2500] and store["capacity"] == [10_000]
    assert store["primary_pct"] == [25.0] and store["used_pct"] == [30.0]
    cells = update.stream["cells"]
    assert cells["task"] == ["load (task t1)", "put or unknown task (pppppppp)"]
    assert cells["bytes"] == ["2.0 KiB", "500 B"] and cells["x"] == [0, 1]
    assert update.props["nodes"] == [N1[:8]]


def test_placement_names_the_task_when_its_events_come_after_the_object():
    model = ObjectPlacementModel()
    browser = BrowserCopy(model.columns())
    feed(model, browser, [sealed(ret("t9"))])
    [update] = feed(model, browser, [running("t9", name="late")])
    assert update.patch["cells"]["task"] == [(0, "late (task t9)")]


def test_placement_spill_restore_and_free_move_counts_and_reuse_the_cell():
    model = ObjectPlacementModel()
    browser = BrowserCopy(model.columns())
    feed(model, browser, [telemetry(), sealed("o1" * 14), sealed("o2" * 14, size=3000)])
    [update] = feed(model, browser, [ev("object", "o1" * 14, "SPILLED", size=1000, node=N1)])
    assert update.patch["cells"]["category"] == [(0, "spilled")]
    assert model.totals(N1)["counts"] == {"primary": 1, "secondary": 0, "spilled": 1}
    feed(model, browser, [ev("object", "o1" * 14, "RESTORED", size=1000, node=N1)])
    assert model.totals(N1)["counts"]["spilled"] == 0
    feed(model, browser, [ev("object", "o1" * 14, "FREED", owner=ME)])        # the owner's own: no store change
    assert model.totals(N1)["counts"]["primary"] == 2
    [update] = feed(model, browser, [ev("object", "o1" * 14, "FREED", size=1000, node=N1)])
    assert math.isnan(update.patch["cells"]["x"][0][1]) and update.patch["cells"]["category"] == [(0, "freed")]
    [update] = feed(model, browser, [sealed("o3" * 14, size=10)])
    assert "cells" not in update.stream                                        # the freed cell is reused
    assert dict(update.patch["cells"]["object"]) == {0: ("o3" * 14)[:8]}
    assert model.totals(N1)["bytes"]["primary"] == 3010


def test_placement_counts_an_object_once_when_snapshot_and_feed_both_report_it():
    model = ObjectPlacementModel()
    model.apply([sealed("o1" * 14), sealed("o1" * 14)])
    assert model.totals(N1)["counts"]["primary"] == 1


def test_placement_shows_transfers_between_two_nodes_as_secondary_copies():
    model = ObjectPlacementModel(transfer_linger=2.0)
    browser = BrowserCopy(model.columns())
    oid = ret("t1")
    feed(model, browser, [telemetry(N1), telemetry(N2), sealed(oid, node=N1, size=4096)], now=100.0)
    [update] = feed(model, browser, [ev("object", oid, "TRANSFERRED", t=101.0, size=4096, to=N2, node=N1),
                                     sealed(oid, node=N2, size=4096, owner="", t=101.1)], now=101.2)
    assert update.stream["transfers"]["object"] == [oid[:8]] and update.stream["transfers"]["alpha"] == [0.9]
    assert model.totals(N2)["counts"] == {"primary": 0, "secondary": 1, "spilled": 0}
    assert model.totals(N1)["counts"] == {"primary": 1, "secondary": 0, "spilled": 0}
    [update] = feed(model, browser, [], now=103.5)                             # the arrow fades
    assert update.patch["transfers"]["alpha"] == [(0, 0.0)]
    feed(model, browser, [ev("object", oid, "FREED", size=4096, node=N2)])
    assert model.totals(N2)["counts"]["secondary"] == 0 and model.totals(N1)["counts"]["primary"] == 1


def test_placement_forgets_what_a_dead_node_held():
    model = ObjectPlacementModel()
    model.apply([sealed("o1" * 14, node=N1), sealed("o2" * 14, node=N2),
                 ev("object", "o2" * 14, "TRANSFERRED", size=1000, to=N1, node=N2)])
    model.apply([ev("node", N2, "DEAD", node=N1)])
    assert model.totals(N2)["counts"] == {"primary": 0, "secondary": 0, "spilled": 0}
    assert model.totals(N1)["counts"] == {"primary": 1, "secondary": 1, "spilled": 0}


def test_placement_this_notebook_only_keeps_the_owners_objects_and_their_copies():
    model = ObjectPlacementModel(owner=ME)
    model.apply([sealed("o1" * 14), sealed("o2" * 14, owner=OTHER),
                 ev("object", "o1" * 14, "TRANSFERRED", size=1000, to=N2, node=N1),
                 ev("object", "o2" * 14, "TRANSFERRED", size=1000, to=N2, node=N1)])
    assert model.totals(N1)["counts"]["primary"] == 1 and model.totals(N2)["counts"]["secondary"] == 1
    assert len(model.columns()["transfers"]["key"]) == 1


def test_placement_draws_a_bounded_number_of_cells_per_node():
    model = ObjectPlacementModel()
    model.apply([sealed(f"{i:028x}") for i in range(CELLS_PER_NODE + 50)])
    assert len(model.columns()["cells"]["key"]) == CELLS_PER_NODE
    assert model.totals(N1)["counts"]["primary"] == CELLS_PER_NODE + 50
    assert "50 not drawn" in model.columns()["stores"]["label"][0]


# ---- node resources ------------------------------------------------------------------------------------

def test_resources_show_cores_memory_store_and_say_when_a_node_has_no_gpu():
    model = NodeResourcesModel(history=3)
    browser = BrowserCopy(model.columns())
    [update] = feed(model, browser, [telemetry(cores=(10.0, 30.0), used=2500, t=10.0)])
    assert update.stream["cores"]["percent"] == [10.0, 30.0] and update.stream["cores"]["core"] == [0, 1]
    gauges = dict(zip([tuple(f) for f in update.stream["gauges"]["factor"]], update.stream["gauges"]["text"]))
    assert gauges[(N1[:8], "GPU")] == "no GPU on this node"
    assert gauges[(N1[:8], "memory")] == "memory: 2.00 GiB of 8.00 GiB"
    history = update.stream[f"history:{N1}"]
    assert history["cpu"] == [20.0] and history["store"] == [25.0] and math.isnan(history["gpu"][0])
    assert update.props["gauge_factors"] == [(N1[:8], "memory"), (N1[:8], "object store"), (N1[:8], "GPU")]
    [update] = feed(model, browser, [telemetry(cores=(50.0, 70.0), t=11.0)])
    assert update.patch["cores"]["percent"] == [(0, 50.0), (1, 70.0)]


def test_resources_show_each_gpus_utilisation_and_memory():
    gpus = [{"index": 0, "name": "H100", "utilization_percent": 80.0, "memory_used": 2**30, "memory_total": 4 * 2**30},
            {"index": 1, "name": "H100", "utilization_percent": 20.0, "memory_used": 0, "memory_total": 4 * 2**30}]
    model = NodeResourcesModel()
    model.apply([telemetry(gpus=gpus)])
    gauges = model.columns()["gauges"]
    values = dict(zip([f[1] for f in gauges["factor"]], gauges["value"]))
    assert values == {"memory": 25.0, "object store": 0.0, "GPU0 util": 80.0, "GPU0 memory": 25.0,
                      "GPU1 util": 20.0, "GPU1 memory": 0.0}
    assert model.columns()[f"history:{N1}"]["gpu"] == [50.0]


def test_resources_keep_each_nodes_rows_together_and_history_rolls_over():
    model = NodeResourcesModel(history=5)
    browser = BrowserCopy(model.columns())
    for second in range(8):
        feed(model, browser, [telemetry(N1, t=second), telemetry(N2, t=second)])
    assert len(model.columns()[f"history:{N1}"]["time"]) == 5 and len(model.columns()[f"history:{N2}"]["time"]) == 5
    assert model.columns()[f"history:{N2}"]["time"] == [3000.0, 4000.0, 5000.0, 6000.0, 7000.0]
    assert [f[0] for f in model.props()["gauge_factors"]] == [N1[:8]] * 3 + [N2[:8]] * 3
    assert model.props()["nodes"] == [N1[:8], N2[:8]]
    model.apply([ev("node", N2, "DEAD", node=N1)])
    assert "dead" in dict(zip(model.columns()["gauges"]["key"], model.columns()["gauges"]["text"]))[f"{N2[:8]}:memory"]


# ---- timeline ---------------------------------------------------------------------------------------------

def test_timeline_opens_a_bar_when_a_task_starts_and_fits_it_to_the_workers_times():
    model = TimelineModel()
    browser = BrowserCopy(model.columns())
    [update] = feed(model, browser, [submitted("a"), running("a", t=10.0)], now=10.5)
    bar = update.stream["tasks"]
    assert bar["lane"] == [f"{N1[:8]} · pid 11"] and bar["start"] == [10_000.0] and bar["end"] == [10_500.0]
    assert update.props["lanes"] == [f"{N1[:8]} · pid 11"]
    [update] = feed(model, browser, [], now=11.0)
    assert update.patch["tasks"]["end"] == [(0, 11_000.0)]                      # follows the clock
    [update] = feed(model, browser, [finished("a", start=10.01, end=11.21)], now=11.3)
    patch = dict((c, v) for c, [(_, v)] in update.patch["tasks"].items())
    assert patch["start"] == pytest.approx(10_010.0) and patch["end"] == pytest.approx(11_210.0)
    assert patch["state"] == FINISHED and patch["duration"] == "1.20 s"
    assert not model.running


def test_timeline_has_a_lane_per_node_and_worker_and_puts_actor_calls_on_the_actor():
    model = TimelineModel()
    model.apply([ev("actor", "act1", "ALIVE", node=N2, worker="wa", pid=77, class_name="Counter"),
                 submitted("a"), running("a", node=N1, pid=11), submitted("b"), running("b", node=N2, pid=22),
                 submitted("c", name="Counter.inc", actor="act1"),
                 ev("task", "c", "RUNNING", name="Counter.inc", actor="act1")], now=200.0)
    assert model.props()["lanes"] == [f"{N1[:8]} · pid 11", f"{N2[:8]} · pid 22", f"{N2[:8]} · Counter act1 pid 77"]


def test_timeline_colours_by_function_outlines_failures_and_skips_tasks_that_never_ran():
    model = TimelineModel()
    model.apply([submitted("a"), running("a"), submitted("b", name="g"), running("b", name="g"),
                 finished("b", name="g", state="FAILED", error="ValueError: x"),
                 submitted("c"), finished("c", state="FAILED", start=None, end=None,
                                          error="TaskCancelledError: cancelled")], now=200.0)
    cols = model.columns()["tasks"]
    assert cols["name"] == ["f", "g"] and cols["color"][0] != cols["color"][1]
    assert cols["outline"][1] == "#de2d26" and cols["state"] == ["running", FAILED]


def test_timeline_rolls_over_and_stays_equal_to_the_browser_copy():
    model = TimelineModel(rollover=10)
    browser = BrowserCopy(model.columns())
    for i in range(25):
        feed(model, browser, [submitted(f"t{i}"), running(f"t{i}", t=i)], now=i + 0.5)
        if i >= 2:
            feed(model, browser, [finished(f"t{i - 2}", start=i - 2, end=i - 1.5)], now=i + 0.6)
    assert len(model.columns()["tasks"]["key"]) == 10
    assert len(model.bars.index) <= 10


def test_timeline_this_notebook_only_keeps_the_owners_tasks():
    model = TimelineModel(owner=ME)
    model.apply([submitted("a"), running("a"), submitted("b", owner=OTHER), running("b", owner=OTHER),
                 running("x", owner=OTHER), finished("x", owner=OTHER)], now=200.0)
    assert model.columns()["tasks"]["key"] == ["a:0"]


def test_timeline_draws_short_back_to_back_tasks_of_one_function_as_one_bar():
    model = TimelineModel()
    browser = BrowserCopy(model.columns())
    # what a coalesced feed delivers for tasks that were over before a tick: one FINISHED each
    batch = [ev("task", f"s{i}", "FINISHED", name="f", owner=ME, node=N1, pid=11,
                start=100.0 + i * 0.002, end=100.0 + i * 0.002 + 0.001) for i in range(50)]
    batch += [ev("task", "g0", "FINISHED", name="g", owner=ME, node=N1, pid=11, start=100.2, end=100.201),
              ev("task", "s50", "FINISHED", name="f", owner=ME, node=N2, pid=22, start=100.0, end=100.001),
              ev("task", "long", "FINISHED", name="f", owner=ME, node=N1, pid=11, start=100.202, end=100.5)]
    feed(model, browser, batch)
    cols = model.columns()["tasks"]
    assert cols["name"] == ["f", "g", "f", "f"]  # another function, another worker, a long task: bars of their own
    assert cols["start"][0] == pytest.approx(100_000.0) and cols["end"][0] == pytest.approx(100_099.0)
    assert cols["duration"][0] == "50 tasks, 50.0 ms busy"
    feed(model, browser, [ev("task", "late", "FINISHED", name="f", owner=ME, node=N2, pid=22,
                             start=100.005, end=100.006)])     # a later tick extends the bar the browser has
    assert model.columns()["tasks"]["duration"][2] == "2 tasks, 2.0 ms busy"


def test_timeline_draws_short_back_to_back_actor_calls_as_one_bar_on_the_actors_lane():
    model = TimelineModel()
    calls = [ev("task", f"c{i}", "FINISHED", name="Counter.inc", actor="act1", owner=ME,
                start=100.0 + i * 0.002, end=100.0 + i * 0.002 + 0.001) for i in range(20)]
    model.apply([ev("actor", "act1", "ALIVE", node=N2, worker="wa", pid=77, class_name="Counter")] + calls,
                now=200.0)
    cols = model.columns()["tasks"]
    assert cols["duration"] == ["20 tasks, 20.0 ms busy"]
    assert cols["lane"] == [f"{N2[:8]} · Counter act1 pid 77"]


def test_timeline_a_late_running_report_of_a_merged_task_opens_no_bar():
    model = TimelineModel()
    short = [ev("task", f"s{i}", "FINISHED", name="f", owner=ME, node=N1, pid=11,
                start=100.0 + i * 0.002, end=100.0 + i * 0.002 + 0.001) for i in range(3)]
    model.apply(short, now=200.0)
    model.apply([running("s2", name="f")], now=200.0)  # its worker's report, come after the end
    assert model.columns()["tasks"]["duration"] == ["3 tasks, 3.0 ms busy"] and not model.running


def test_timeline_this_notebook_only_merges_the_owners_short_tasks_only():
    model = TimelineModel(owner=ME)
    short = [ev("task", f"s{i}", "FINISHED", name="f", owner=ME if i != 1 else OTHER, node=N1, pid=11,
                start=100.0 + i * 0.002, end=100.0 + i * 0.002 + 0.001) for i in range(4)]
    model.apply(short, now=200.0)
    assert model.columns()["tasks"]["duration"] == ["3 tasks, 3.0 ms busy"]


def test_views_draw_stretches_as_their_tasks_one_by_one_would():
    """A feed with stretches (short back-to-back tasks as one "tasks" event) and the same
    feed task by task must give the same graph (grouped or not), timeline and names."""
    for owner, group_after, ahead in itertools.product((None, ME), (2000, 10), (False, True)):
        stretched, each = ([TaskGraphModel(owner=owner, group_after=group_after), TimelineModel(owner=owner)]
                           for _ in range(2))
        kinds = set()
        for batch in short_task_batches(owners=(ME, OTHER), ahead=ahead):
            events = batch.with_stretches()
            kinds.update(e.state for e in events if e.kind == STRETCH)
            for a, b in zip(stretched, each):
                a.apply(events, now=200.0)
                b.apply(unfold(events), now=200.0)
                assert a.columns() == b.columns(), (type(a).__name__, owner, group_after, ahead)
        assert kinds == ({"SUBMITTED", "FINISHED"} if ahead else {"FINISHED"})
    graph = TaskGraphModel(group_after=10)
    for batch in short_task_batches():
        graph.apply(batch.with_stretches())
    assert graph.columns()["tasks"]["counts"] == ["120 finished"]
    assert graph.columns()["tasks"]["worker"] == ["2 workers"]
    timeline = TimelineModel()
    for batch in short_task_batches():
        timeline.apply(batch.with_stretches())
    assert timeline.columns()["tasks"]["duration"] == ["60 tasks, 60.0 ms busy"] * 2


def test_task_graph_groups_before_drawing_a_stretch_that_would_cross_the_cap():
    """Tasks that would take the graph past the cap in one batch are not drawn one by one
    first: the graph switches to groups, then counts them."""
    model = TaskGraphModel(group_after=50)
    browser = BrowserCopy(model.columns())
    first, second, last = short_task_batches(batches=2, per_batch=40, ahead=True)
    [update] = feed(model, browser, first.with_stretches())
    assert len(update.stream["tasks"]["key"]) == 40 and not model.grouped
    [update] = feed(model, browser, second.with_stretches())  # 40 more submitted: past 50
    assert model.grouped and update.replace["tasks"]["key"] == ["f"] and not update.stream
    assert update.replace["tasks"]["counts"] == ["40 waiting for resources · 40 finished"]
    feed(model, browser, last.with_stretches())
    assert model.columns()["tasks"]["counts"] == ["80 finished"]


def test_views_take_a_late_running_report_of_a_stretchs_task_as_stale():
    """A worker's RUNNING report of a task that came in a stretch, arriving after it: the
    task stays finished (the grouped graph counts nothing running, the timeline opens no bar)."""
    graph, timeline = TaskGraphModel(group_after=10), TimelineModel()
    for model in (graph, timeline):
        for batch in short_task_batches():
            model.apply(batch.with_stretches(), now=200.0)
        model.apply([running("b3t4", node=N1, pid=11)], now=200.0)
    assert graph.columns()["tasks"]["counts"] == ["120 finished"] and not graph.counted
    assert not timeline.running and len(timeline.columns()["tasks"]["key"]) == 2


def test_views_take_a_stretch_whose_task_was_seen_running_task_by_task():
    """A task reported RUNNING before its stretch arrives is closed the general way: its
    open bar ends and the graph moves it from running to finished."""
    graph, timeline = TaskGraphModel(group_after=10), TimelineModel()
    first, second = short_task_batches(batches=2)
    for model in (graph, timeline):
        model.apply(first.with_stretches(), now=200.0)
        model.apply([submitted("b1t0"), running("b1t0", node=N1, pid=11, t=100.06)], now=200.0)
    assert graph.columns()["tasks"]["counts"] == ["1 running · 30 finished"] and timeline.running
    for model in (graph, timeline):
        model.apply(second.with_stretches(), now=200.0)
    assert graph.columns()["tasks"]["counts"] == ["60 finished"] and not timeline.running


def test_placement_names_the_objects_of_a_stretchs_tasks():
    model = ObjectPlacementModel()
    [batch] = short_task_batches(batches=1, per_batch=4)
    model.apply([ev("node", N1, "SNAPSHOT", store={"capacity": 10_000, "used": 0}, alive=True)])
    model.apply(batch.with_stretches() + [ev("object", ret("b0t2"), "SEALED", size=100, owner=ME, node=N1)])
    assert model.columns()["cells"]["task"] == ["f (task b0t2)"]
    model = ObjectPlacementModel()
    first, later = short_task_batches(batches=1, per_batch=4, ahead=True)  # submitted, then ended
    model.apply([ev("node", N1, "SNAPSHOT", store={"capacity": 10_000, "used": 0}, alive=True),
                 ev("object", ret("b0t1"), "SEALED", size=100, owner=ME, node=N1)])  # before any of its events
    assert model.columns()["cells"]["task"][0].startswith("put or unknown task")
    model.apply(first.with_stretches())
    model.apply(later.with_stretches())
    assert model.columns()["cells"]["task"] == ["f (task b0t1)"]


def test_task_views_ignore_a_state_that_arrives_after_a_later_one():
    """A task's owner and its worker report through different paths: a late 'running' or
    'submitted' must not move a finished task back, in the graph or on the timeline."""
    graph, timeline = TaskGraphModel(), TimelineModel()
    late = [finished("a"), running("a"), submitted("a")]  # an end before the reports it follows
    for model in (graph, timeline):
        model.apply(late, now=200.0)
    assert graph.columns()["tasks"]["state"] == [FINISHED]
    cols = timeline.columns()["tasks"]
    assert cols["state"] == [FINISHED] and not timeline.running
    graph.apply([running("b"), finished("b", state="FAILED", error="ValueError: x"), running("b"),
                 finished("b")], now=200.0)                  # a retried user error: the retry's end wins
    assert dict(zip(graph.columns()["tasks"]["key"], graph.columns()["tasks"]["state"]))["b"] == FINISHED


def test_bounded_maps_keep_the_newest_ids_once_trimmed():
    seen = BoundedMap(10)
    for i in range(100):
        seen[f"t{i}"] = i
    seen["t95"] = "again"  # setting an id again keeps its place
    seen.trim()
    assert list(seen) == [f"t{i}" for i in range(90, 100)] and seen["t95"] == "again"


def test_view_memory_stays_bounded_over_many_tasks():
    graph, timeline = TaskGraphModel(memory=500), TimelineModel(memory=500)
    for batch in range(20):
        events = []
        for i in range(250):
            task = f"b{batch}t{i}".ljust(24, "0")
            events += [ev("task", task, "SUBMITTED", name="f", owner="me", deps=()),
                       ev("task", task, "FINISHED", name="f", node="n1", worker="w1", pid=7, start=1.0, end=1.001)]
        graph.apply(events)
        timeline.apply(events)
    assert len(graph.group_of) <= 500 and len(timeline.runs) <= 500 and len(timeline.ended) <= 500
