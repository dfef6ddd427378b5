"""The task graph's view model: tasks placed by dependency depth, state changes as patches.

Layout is incremental and stable: a task's x is its dependency depth (one more than its
deepest dependency already drawn, 0 without any) and its y the order it arrived in among
tasks of that depth, so a drawn task never moves. Edges run from the task that returns an
ObjectRef argument to the task that takes it. Past ``group_after`` tasks (or before a batch
whose stretches would take it past them) the model draws one node per function (or actor
method) instead, with counts per state, and keeps only live tasks in memory from then on.

    events ──► TaskGraphModel.apply ──► Update(stream=new tasks/edges, patch=state changes)
"""
from __future__ import annotations

import collections
import itertools
import math

import msgspec
from nebula.state import STRETCH, unfold

from .tasks import (CANCELLED, DONE, FAILED, FINISHED, PENDING, PROGRESS, RUNNING, STATES, WAITING, ActorDirectory,
                    BoundedMap, duration_text, seconds_text, task_of_object, trim_all, view_state)
from .update import RowTable, Update

NODE_COLUMNS = ("key", "x", "y", "name", "state", "kind", "node", "worker", "duration", "error", "counts",
                "size")
EDGE_COLUMNS = ("x0", "y0", "x1", "y1")
TASK, ACTOR_CALL, FUNCTION, ACTOR_METHOD = "task", "actor call", "function", "actor method"
KINDS = (TASK, ACTOR_CALL, FUNCTION, ACTOR_METHOD)
TASK_SIZE = 9
# A group shows the state that needs attention first: activity, then failures, then done.
GROUP_STATE_ORDER = (RUNNING, WAITING, PENDING, FAILED, CANCELLED, FINISHED)


class TaskInfo(msgspec.Struct, gc=False):
    """A drawn or live task; untracked by the garbage collector (a graph holds thousands, and
    nothing it refers to refers back)."""

    id: str
    name: str
    actor: str
    deps: tuple
    state: str = PENDING
    start: float | None = None
    end: float | None = None
    node: str = ""
    worker: str = ""
    error: str = ""
    group: Group | None = None  # its function's, once the graph is grouped


class Group:
    """All tasks of one function (or actor method) once the graph is grouped."""

    __slots__ = ("name", "kind", "x", "y", "counts", "took", "timed", "error", "nodes", "workers", "dirty")

    def __init__(self, name: str, kind: str, x: int, y: int):
        self.name, self.kind, self.x, self.y = name, kind, x, y
        self.counts: collections.Counter = collections.Counter()
        self.took, self.timed, self.error = 0.0, 0, ""
        self.nodes: set = set()
        self.workers: set = set()
        self.dirty = True

    def ran_on(self, node: str, worker: str) -> None:
        """Note where one of its tasks runs (as the hover shows it; up to 64 of each)."""
        if node not in self.nodes:
            _remember(self.nodes, node)
        if worker not in self.workers:
            _remember(self.workers, worker)

    def ended(self, start: float | None, end: float | None, error: str | None) -> None:
        """Take one ended run: its time into the mean (when known), its error if any."""
        if start and end:
            self.ran(1, max(0.0, end - start))
        if error:
            self.error = error

    def ran(self, runs: int, seconds: float) -> None:
        """Take ``runs`` finished runs that took ``seconds`` together into the mean."""
        self.timed += runs
        self.took += seconds

    def row(self) -> dict:
        total = sum(self.counts.values())
        state = next((s for s in GROUP_STATE_ORDER if self.counts[s]), PENDING)
        counts = " · ".join(f"{self.counts[s]} {s}" for s in STATES if self.counts[s])
        mean = f"mean {seconds_text(self.took / self.timed)}" if self.timed else ""
        return {"state": state, "counts": counts, "duration": mean, "error": self.error,
                "node": _several(self.nodes, "nodes"), "worker": _several(self.workers, "workers"),
                "size": TASK_SIZE + 3 * math.log2(max(1, total))}


class TaskGraphModel:
    """Feed it ``nebula.state`` events; ``owner`` set keeps only the tasks that client submitted."""

    def __init__(self, owner: str | None = None, group_after: int = 2000, memory: int = 20_000,
                 edge_limit: int = 20_000):
        self.owner, self.group_after = owner, group_after
        self.table = RowTable(NODE_COLUMNS)
        self.edges = RowTable(EDGE_COLUMNS, rollover=edge_limit)
        self.tasks: dict[str, TaskInfo] = {}   # every drawn task; once grouped, live tasks only
        self.counted: dict[str, tuple] = {}     # once grouped, live tasks kept as (group, state) only
        self.actors = ActorDirectory()
        self.arrivals: collections.Counter = collections.Counter()  # depth -> rows placed there
        self.placed = BoundedMap(memory)          # task id -> (x, y) of its drawn node
        self.waiting_edges = BoundedMap(memory)   # task id not drawn yet -> tasks that take its result
        self.grouped = False
        self.groups: dict[str, Group] = {}
        self.group_of = BoundedMap(memory)        # task id -> its group's name
        self.group_edges: set = set()
        self.edge_limit = edge_limit

    # ---- feeding ------------------------------------------------------------------------------

    def apply(self, events, now: float | None = None) -> Update:
        if not self.grouped and len(self.tasks) + _new_in_stretches(events, self.tasks) > self.group_after:
            self._switch_to_groups()  # these would cross the cap: no need to draw them one by one first
        if self.grouped:
            self._apply_grouped(events)
        else:
            for event in events:
                self._on_event(event)
        trim_all(self.placed, self.waiting_edges, self.group_of)
        if not self.grouped and len(self.tasks) > self.group_after:
            self._switch_to_groups()
        if self.grouped:
            self._refresh_groups()
        update = Update()
        update.add_table("tasks", self.table)
        update.add_table("edges", self.edges)
        return update

    def columns(self) -> dict:
        return {"tasks": self.table.columns(), "edges": self.edges.columns()}

    def props(self) -> dict:
        return {}

    def _on_event(self, event) -> None:
        if event.kind == "task":
            self._on_task(event)
        elif event.kind == STRETCH:  # each task drawn on its own
            for task_event in unfold([event]):
                self._on_task(task_event)
        elif event.kind == "actor":
            self.actors.apply(event)

    def _on_task(self, event) -> None:
        state = view_state(event)
        if state is None:
            return
        task = self.tasks.get(event.id)
        if task is None:
            task = self._new_task(event, state)
            if task is None or task.state == state:
                return  # nothing more to show: a new task, as it is now
        elif PROGRESS[state] < PROGRESS[task.state]:
            return  # stale: it arrived after a later state of the task
        if self.grouped:
            self._group_transition(task, event, state)
        else:
            self.table.set(task.id, **self._changes(task, event, state))
        task.state = state

    def _new_task(self, event, state: str) -> TaskInfo | None:
        """A task seen for the first time, drawn (or once grouped, counted) in ``state`` when it
        has not started yet (a task that runs or ended moves there by the general path: where
        and how long it ran)."""
        data = event.data
        if self.owner is not None and data.get("owner") != self.owner:
            return None
        deps = data.get("deps")
        deps = tuple(dict.fromkeys(task_of_object(d) for d in deps)) if deps else ()
        start_as = state if state in (PENDING, WAITING) else PENDING
        task = TaskInfo(event.id, data.get("name") or "?", data.get("actor") or "", deps, start_as)
        self.tasks[task.id] = task
        if self.grouped:
            self._join_group(task)
        else:
            self._place(task)
        return task

    def _changes(self, task: TaskInfo, event, state: str) -> dict:
        changes = {"state": state}
        if self._note_where(task, event):
            changes.update(node=task.node, worker=task.worker)
        if state in DONE:
            data = event.data
            task.start, task.end, task.error = data.get("start"), data.get("end"), data.get("error") or ""
            changes["duration"] = duration_text(task.start, task.end)
            changes["error"] = task.error
        return changes

    def _note_where(self, task: TaskInfo, event) -> bool:
        """Record on ``task`` where ``event`` says it runs (a RUNNING event, or an end that
        carries its run); False when the event does not say."""
        data = event.data
        node, worker = data.get("node") or "", data.get("worker") or ""
        if not (node or worker or event.state == "RUNNING"):
            return False
        if task.actor:  # drawn on its actor: where that is, if the event does not say
            actor_node, actor_worker = self.actors.where(task.actor)
            node, worker = node or actor_node, worker or actor_worker
            task.node, task.worker = node[:8], f"{worker[:8]} ({self.actors.label(task.actor)})"
        else:
            task.node, task.worker = node[:8], worker[:8]
        return True

    # ---- one node per task ----------------------------------------------------------------------

    def _place(self, task: TaskInfo) -> None:
        depths = [self.placed[d][0] for d in task.deps if d in self.placed]
        x = 1 + max(depths) if depths else 0
        y = -self.arrivals[x]
        self.arrivals[x] += 1
        self.placed[task.id] = (x, y)
        self.table.add(task.id, {"key": task.id, "x": x, "y": y, "name": task.name, "state": task.state,
                                 "kind": ACTOR_CALL if task.actor else TASK, "node": "", "worker": "",
                                 "duration": "", "error": "", "counts": "", "size": TASK_SIZE})
        for dep in task.deps:
            if dep in self.placed:
                self._edge(dep, task.id)
            else:
                self.waiting_edges.setdefault(dep, []).append(task.id)
        for later in self.waiting_edges.pop(task.id, ()):
            if later in self.placed:
                self._edge(task.id, later)

    def _edge(self, source: str, target: str) -> None:
        (x0, y0), (x1, y1) = self.placed[source], self.placed[target]
        self.edges.add((source, target), {"x0": x0, "y0": y0, "x1": x1, "y1": y1})

    # ---- one node per function ------------------------------------------------------------------

    def _switch_to_groups(self) -> None:
        """Too many tasks to draw one by one: redraw as groups, keep live tasks only."""
        self.grouped = True
        self.arrivals.clear()
        self.edges.reset(())
        for task in self.tasks.values():
            self._join_group(task)
        self.tasks = {t.id: t for t in self.tasks.values() if t.state not in DONE}
        self.placed.clear()
        self.waiting_edges.clear()
        self.table.reset((g.name, self._group_row(g)) for g in self.groups.values())

    def _join_group(self, task: TaskInfo) -> None:
        """Count ``task`` (in its current state) into its function's group, made and placed if new."""
        dep_groups = [g for g in map(self._group_name_of, task.deps) if g] if task.deps else ()
        group = self.groups.get(task.name)
        if group is None:
            depths = [self.groups[g].x for g in dep_groups]
            x = 1 + max(depths) if depths else 0
            group = self.groups[task.name] = Group(task.name, ACTOR_METHOD if task.actor else FUNCTION,
                                                   x, -self.arrivals[x])
            self.arrivals[x] += 1
        self.group_of[task.id] = task.name
        task.group = group
        group.counts[task.state] += 1
        group.dirty = True
        if task.node or task.worker:  # a task counted after it ran (the switch to groups)
            group.ran_on(task.node, task.worker)
        if task.start or task.error:
            group.ended(task.start, task.end, task.error)
        for source in dep_groups:
            self._group_edge(self.groups[source], group)

    def _group_name_of(self, task_id: str) -> str | None:
        counted = self.counted.get(task_id)
        return counted[0].name if counted is not None else self.group_of.get(task_id)

    def _group_edge(self, source: Group, target: Group) -> None:
        pair = (source.name, target.name)
        if source is target or pair in self.group_edges or len(self.group_edges) >= self.edge_limit:
            return
        self.group_edges.add(pair)
        self.edges.add(pair, {"x0": source.x, "y0": source.y, "x1": target.x, "y1": target.y})

    def _group_row(self, group: Group) -> dict:
        group.dirty = False
        return {"key": group.name, "x": group.x, "y": group.y, "name": group.name, "kind": group.kind,
                **group.row()}

    def _apply_grouped(self, events) -> None:
        """Once grouped, the common case at high task rates is taken in this one loop (a call
        per event would cost more than the counting): a task of a known function, without
        ObjectRef arguments and not an actor call, is counted straight into its group and kept
        as no more than (group, state) in ``counted`` until it ends. The general path, in
        order, takes the rest: a new group to place, edges to draw, an actor call."""
        counted, group_of, groups, tasks, owner = self.counted, self.group_of, self.groups, self.tasks, self.owner
        for event in events:
            if event.kind != "task":
                if event.kind != STRETCH:
                    self._on_event(event)
                elif not self._counted_stretch(event):
                    self._apply_grouped(unfold([event]))
                continue
            task_id = event.id
            entry = counted.get(task_id)
            if entry is None:
                if task_id in tasks:
                    self._on_task(event)
                    continue
                if task_id in group_of:
                    continue  # a late event of a task counted as ended
                data = event.data
                group = groups.get(data.get("name") or "?")
                if group is None or data.get("deps") or data.get("actor"):
                    self._on_task(event)
                    continue
                if owner is not None and data.get("owner") != owner:
                    continue
                state = view_state(event)
                if state is None:
                    continue
                group.counts[state] += 1
            else:
                state = view_state(event)
                group, was = entry
                if state is None or (state != was and PROGRESS[state] < PROGRESS[was]):
                    continue  # not a state change, or stale
                counts = group.counts
                counts[was] -= 1
                counts[state] += 1
                data = event.data
            group.dirty = True
            if state == RUNNING or state in DONE:
                group.ran_on((data.get("node") or "")[:8], (data.get("worker") or "")[:8])
            if state in DONE:
                group.ended(data.get("start"), data.get("end"), data.get("error"))
                counted.pop(task_id, None)
                group_of[task_id] = group.name
            else:
                counted[task_id] = (group, state)

    def _counted_stretch(self, event) -> bool:
        """Count a stretch (tasks of one function, submitted or finished) into its group in
        one step, as ``_apply_grouped`` would count its tasks one by one; False when its group
        is new or one of its tasks is drawn on its own or already ended: then take each task."""
        data = event.data
        if self.owner is not None and data.get("owner") != self.owner:
            return True
        group, ids, group_of = self.groups.get(data.get("name") or "?"), [row[0] for row in data["rows"]], self.group_of
        if group is None or not (self.tasks.keys().isdisjoint(ids) and group_of.keys().isdisjoint(ids)):
            return False
        counted, counts = self.counted, group.counts
        if event.state == "SUBMITTED":
            fresh = ids if counted.keys().isdisjoint(ids) else [i for i in ids if i not in counted]
            counts[WAITING] += len(fresh)  # nothing to wait for but resources (no ObjectRef arguments)
            counted.update(dict.fromkeys(fresh, (group, WAITING)))
        else:
            for entry, tasks in collections.Counter(map(counted.pop, ids, itertools.repeat(None))).items():
                if entry is not None:  # (group, state) of tasks counted live
                    entry[0].counts[entry[1]] -= tasks
            counts[FINISHED] += len(ids)
            group.ran(len(ids), data["busy"])
            group.ran_on((data.get("node") or "")[:8], (data.get("worker") or "")[:8])
            group_of.update(dict.fromkeys(ids, group.name))  # their late events are stale
        group.dirty = True
        return True

    def _group_transition(self, task: TaskInfo, event, state: str) -> None:
        """Move ``task`` between its group's counts (no per-task row, so no per-task text)."""
        group, counts = task.group, task.group.counts
        counts[task.state] -= 1
        counts[state] += 1
        group.dirty = True
        if self._note_where(task, event):
            group.ran_on(task.node, task.worker)
        if state in DONE:
            data = event.data
            group.ended(data.get("start"), data.get("end"), data.get("error"))
            self.tasks.pop(task.id, None)

    def _refresh_groups(self) -> None:
        for group in self.groups.values():
            if not group.dirty:
                continue
            if group.name in self.table:
                self.table.set(group.name, **self._group_row(group))
            else:
                self.table.add(group.name, self._group_row(group))


def _new_in_stretches(events, known: dict) -> int:
    """About how many tasks new to ``known`` the stretches among ``events`` bring (a FINISHED
    stretch counts whole when its first task is new)."""
    return sum(event.data["count"] for event in events
               if event.kind == STRETCH and (event.state == "SUBMITTED" or event.id not in known))


def _several(values: set, noun: str) -> str:
    if len(values) == 1:
        return next(iter(values))
    return f"{len(values)} {noun}" if values else ""


def _remember(values: set, value: str, limit: int = 64) -> None:
    if value and len(values) < limit:
        values.add(value)
