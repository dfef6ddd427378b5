"""The timeline's view model: a task stream per node and worker process (a Gantt chart, like Dask's).

Each run of a task is one bar in its worker's lane, coloured by function. A bar appears when
the task starts (its end following the clock while it runs) and is corrected to the
worker's own start and end times when it finishes. Short tasks of one function that ran
back to back on one worker and were over before the view saw them run (under ``MERGE_BELOW``
each, less than that apart) share one bar that says how many it holds: at thousands of tasks
a second one bar per task would be below a pixel wide, and cost the kernel and the browser
for each. Old bars roll over past ``rollover``.
"""
from __future__ import annotations

import time

from nebula.state import SHORT_RUN, STRETCH, Event, unfold

from .tasks import (CANCELLED, DONE, FAILED, FINISHED, ActorDirectory, BoundedMap, duration_text, function_color,
                    seconds_text, short, trim_all, view_state)
from .update import RowTable, Update

COLUMNS = ("key", "lane", "start", "end", "name", "color", "outline", "alpha", "state", "duration")
UNKNOWN_LANE = "unknown worker"
OVERFLOW_LANE = ("", "more")
FAILED_OUTLINE = "#de2d26"
MERGE_BELOW = SHORT_RUN  # seconds: shorter finished tasks, closer than this to the last one, extend its bar
WAITING_STATES = ("SUBMITTED", "PENDING_NODE")  # before a run: nothing to draw


class TimelineModel:
    """Feed it ``nebula.state`` events; ``owner`` set keeps only the tasks that client submitted."""

    def __init__(self, owner: str | None = None, rollover: int = 5000, max_lanes: int = 512,
                 memory: int = 20_000):
        self.owner = owner
        self.bars = RowTable(COLUMNS, rollover=rollover)
        self.actors = ActorDirectory()
        self.lanes: dict[tuple, str] = {}         # (node, pid) -> lane label, in order of appearance
        self.max_lanes = max_lanes
        self.running: dict[str, tuple] = {}       # task id -> key of its open bar
        self.runs = BoundedMap(memory)            # task id -> runs so far (retries get new bars)
        self.ended = BoundedMap(memory)           # task id -> True once a run of it ended
        self.last_short: dict[str, list] = {}     # lane -> [bar key, name, end, tasks, busy seconds]
        self._lanes_changed = False
        self._grown: dict[tuple, list] = {}       # bar key -> its lane's last_short, grown this batch

    def apply(self, events, now: float | None = None) -> Update:
        for event in events:
            if event.kind == "task":
                self._take(event)
            elif event.kind == STRETCH and event.state == "FINISHED":  # (a submission draws nothing)
                self._take_stretch(event)
            elif event.kind == "actor":
                self.actors.apply(event)
        self._draw_grown()
        trim_all(self.runs, self.ended)
        self._follow_clock(time.time() if now is None else now)
        update = Update()
        update.add_table("tasks", self.bars)
        if self._lanes_changed:
            update.props.update(self.props())
            self._lanes_changed = False
        return update

    def columns(self) -> dict:
        return {"tasks": self.bars.columns()}

    def props(self) -> dict:
        return {"lanes": list(self.lanes.values())}

    def _on_task(self, event) -> None:
        """Only a run makes a bar; its events carry the task's name, owner and actor."""
        if event.state in WAITING_STATES:
            return
        data = event.data
        if self.owner is not None and data.get("owner") != self.owner:
            return
        task = (data.get("name") or "?", data.get("actor") or "")
        if event.state == "RUNNING":
            if event.id not in self.ended:  # else a stale report, come after the end it preceded
                self._open_bar(event, task)
            return
        state = view_state(event)
        if state in DONE:
            self._close_bar(event, state, task)

    def _open_bar(self, event, task: tuple) -> None:
        name, actor = task
        run = self.runs.get(event.id, 0)
        self.runs[event.id] = run + 1
        key = (event.id, run)
        self.running[event.id] = key
        node, pid = self._where(event, actor)
        self.bars.add(key, {"key": f"{event.id}:{run}", "lane": self._lane(node, pid, actor), "start": event.time * 1e3,
                            "end": event.time * 1e3, "name": name, "color": function_color(name),
                            "outline": function_color(name), "alpha": 0.5, "state": "running", "duration": ""})

    def _close_bar(self, event, state: str, task: tuple) -> None:
        start, end = event.data.get("start"), event.data.get("end")
        self.ended[event.id] = True
        key = self.running.pop(event.id, None)
        if key is None or key not in self.bars:
            if not (start and end):
                return  # never started (cancelled or failed while queued): nothing ran
            self._open_bar(event, task)
            key = self.running.pop(event.id)
            if state == FINISHED and end - start < MERGE_BELOW:
                self.last_short[self.bars.get(key)["lane"]] = [key, task[0], end, 1, end - start]
        changes = {"state": state, "alpha": 0.9, "duration": duration_text(start, end)}
        if start and end:
            changes.update(start=start * 1e3, end=end * 1e3)
        if state in (FAILED, CANCELLED):
            changes["outline"] = FAILED_OUTLINE
        self.bars.set(key, **changes)

    def _take(self, event) -> None:
        """One task event: a short finished task in one step where it can be, else the general way."""
        if not (event.state == "FINISHED" and self._merged_short(event)):
            self._on_task(event)

    def _merged_short(self, event) -> bool:
        """Add a short task's FINISHED ``event`` to its lane's last short bar, if the task ran
        right after that bar's last one and was not seen running (the common case at high task
        rates, so taken here in one step); False where ``_on_task`` must."""
        data = event.data
        start, end = data.get("start"), data.get("end")
        if not (start and end) or end - start >= MERGE_BELOW or event.id in self.running:
            return False
        if self.owner is not None and data.get("owner") != self.owner:
            return True
        actor = data.get("actor")
        where = self._where(event, actor) if actor else (data.get("node") or "", data.get("pid"))
        return self._extended(where, data.get("name") or "?", ((event.id, None, start, end),), end - start)

    def _take_stretch(self, event) -> None:
        """A stretch (short tasks of one function, back to back on one worker) added to its
        lane's last short bar in one step, or drawn as a bar of its own in two (its first task
        opens it, the rest extend it), as its tasks one by one would be; one by one where one
        of them was seen running."""
        data = event.data
        if self.owner is not None and data.get("owner") != self.owner:
            return
        rows, where, name = data["rows"], self._where(event, ""), data.get("name") or "?"
        busy = data["busy"]
        if self.running.keys().isdisjoint([row[0] for row in rows]):
            if self._extended(where, name, rows, busy):
                return
            first, rows = rows[0], rows[1:]
            self._take(_task_events(event, (first,))[0])  # the bar's first task: opens it
            if not rows or self._extended(where, name, rows, busy - (first[3] - first[2])):
                return
        for task_event in _task_events(event, rows):
            self._take(task_event)

    def _extended(self, where: tuple, name: str, runs, busy: float) -> bool:
        """Extend the last short bar of the lane at ``where`` by ``runs`` (rows of task id, name,
        start, end, ...) that took ``busy`` seconds together, if it is of function ``name`` and
        ended less than ``MERGE_BELOW`` before the first of them started."""
        last = self.last_short.get(self.lanes.get(where))
        if last is None or last[1] != name or not 0 <= runs[0][2] - last[2] < MERGE_BELOW or last[0] not in self.bars:
            return False
        self.ended.update(dict.fromkeys([run[0] for run in runs], True))
        last[2], last[3], last[4] = runs[-1][3], last[3] + len(runs), last[4] + busy
        self._grown[last[0]] = last  # its row is updated once per batch (_draw_grown)
        return True

    def _draw_grown(self) -> None:
        for key, (_, _, end, tasks, busy) in self._grown.items():
            if key in self.bars:
                self.bars.set(key, end=end * 1e3, duration=f"{tasks} tasks, {seconds_text(busy)} busy")
        self._grown.clear()

    def _follow_clock(self, now: float) -> None:
        for key in self.running.values():
            self.bars.set(key, end=now * 1e3)

    def _where(self, event, actor: str) -> tuple[str, int | None]:
        node, pid = event.data.get("node") or "", event.data.get("pid")
        if actor:
            info = self.actors.actors.get(actor) or {}
            node, pid = node or info.get("node", ""), pid or info.get("pid")
        return node, pid

    def _lane(self, node: str, pid, actor: str) -> str:
        if not node and not pid:
            return self._new_lane(("", None), UNKNOWN_LANE)
        known = self.lanes.get((node, pid))
        if known is not None:
            return known
        who = f"{self.actors.label(actor)} pid {pid}" if actor else f"pid {pid}"
        return self._new_lane((node, pid), f"{short(node)} · {who}")

    def _new_lane(self, where: tuple, label: str) -> str:
        if where in self.lanes:
            return self.lanes[where]
        if len(self.lanes) >= self.max_lanes and where != OVERFLOW_LANE:
            return self._new_lane(OVERFLOW_LANE, "more workers")  # bounded: the rest share one lane
        self.lanes[where] = label
        self._lanes_changed = True
        return label


def _task_events(stretch, rows) -> list:
    """The task events of ``rows``, some of ``stretch``'s."""
    return unfold([Event(stretch.kind, stretch.id, stretch.state, stretch.time, {**stretch.data, "rows": rows})])
