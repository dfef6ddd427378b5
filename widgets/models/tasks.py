"""What the task views share: the states they show, where actors live, and short names for ids."""
from __future__ import annotations

import itertools
import zlib

PENDING, WAITING, RUNNING, FINISHED, FAILED, CANCELLED = (
    "pending", "waiting for resources", "running", "finished", "failed", "cancelled")
STATES = (PENDING, WAITING, RUNNING, FINISHED, FAILED, CANCELLED)
STATE_COLORS = ("#bdbdbd", "#fdae6b", "#3182bd", "#31a354", "#de2d26", "#756bb1")
DONE = (FINISHED, FAILED, CANCELLED)
# How far along a state is. A task's events come from its owner (submitted, waiting, done) and
# from the worker that runs it (running; an actor call's done), through different paths: one
# that arrives after a later state was shown is stale and changes nothing (a retry's done state
# still replaces a failed attempt's, being equally far along).
PROGRESS = {PENDING: 0, WAITING: 1, RUNNING: 2, FINISHED: 3, FAILED: 3, CANCELLED: 3}

# The feed's task states (nebula.state task events) and what the views call them.
FEED_STATES = {"SUBMITTED": PENDING, "PENDING_NODE": WAITING, "RUNNING": RUNNING,
               "FINISHED": FINISHED, "FAILED": FAILED, "CANCELLED": CANCELLED}

FUNCTION_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                    "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
                    "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")


def view_state(event) -> str | None:
    """The state a task event puts its task in, as the views name it (None: not a state change).
    A task submitted without ObjectRef arguments has none to wait for: it waits for resources."""
    if event.state == "SUBMITTED" and not event.data.get("deps"):
        return WAITING
    state = FEED_STATES.get(event.state)
    if state == FAILED and "TaskCancelledError" in (event.data.get("error") or ""):
        return CANCELLED
    return state


def function_color(name: str) -> str:
    """A colour per function name, the same in every session."""
    return FUNCTION_PALETTE[zlib.crc32(name.encode()) % len(FUNCTION_PALETTE)]


def short(any_id: str | None) -> str:
    return (any_id or "")[:8]


def task_of_object(object_id: str) -> str:
    """The id of the task that returns ``object_id`` (a return id is its task id + 4 hex digits)."""
    return object_id[:-4]


def duration_text(start, end) -> str:
    """'250.0 ms' or '1.20 s' between two times ('' while either is unknown)."""
    return seconds_text(max(0.0, end - start)) if start and end else ""


def seconds_text(took: float) -> str:
    return f"{took * 1000:.1f} ms" if took < 1 else f"{took:.2f} s"


class BoundedMap(dict):
    """A dict of ids seen lately that forgets the oldest once it holds more than ``limit``,
    when its owner calls ``trim()`` (once per batch of events: setting items costs a plain
    dict's)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def trim(self) -> None:
        excess = len(self) - self.limit
        if excess > 0:
            for key in list(itertools.islice(self, excess)):
                del self[key]


def trim_all(*maps: BoundedMap) -> None:
    for bounded in maps:
        bounded.trim()


class ActorDirectory:
    """Where each actor runs (node, worker, class), from actor events; actor calls are drawn there."""

    def __init__(self, limit: int = 10_000):
        self.actors = BoundedMap(limit)

    def apply(self, event) -> None:
        if event.state == "ALIVE" or event.id not in self.actors:
            self.actors[event.id] = {"node": event.data.get("node") or "", "worker": event.data.get("worker") or "",
                                     "class_name": event.data.get("class_name") or "", "pid": event.data.get("pid")}
            self.actors.trim()

    def where(self, actor_id: str) -> tuple[str, str]:
        """(node, worker) of an actor, '' where not known yet."""
        info = self.actors.get(actor_id)
        return (info["node"], info["worker"]) if info else ("", "")

    def label(self, actor_id: str) -> str:
        info = self.actors.get(actor_id)
        name = info["class_name"] if info and info["class_name"] else "actor"
        return f"{name} {short(actor_id)}"
