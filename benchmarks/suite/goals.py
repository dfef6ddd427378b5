"""Nebula's performance goals and whether the measured medians meet them."""

from typing import Callable, NamedTuple


class Goal(NamedTuple):
    """A target for one metric; `met` gets nebula's median and Ray's (None if not measured)."""

    text: str
    key: str
    met: Callable[[float, float], bool]
    needs_ray: bool


GOALS = (
    Goal("cold start under 0.5 s", "cold_start_s", lambda n, r: n < 0.5, False),
    Goal("cold start at most 1/5 of Ray's", "cold_start_s", lambda n, r: n <= r / 5, True),
    Goal("tasks sync at least 2x Ray", "tasks_sync_per_s", lambda n, r: n >= 2 * r, True),
    Goal("tasks async at least 2x Ray", "tasks_async_per_s", lambda n, r: n >= 2 * r, True),
    Goal("actor calls sync at least 1.5x Ray", "actor_sync_per_s", lambda n, r: n >= 1.5 * r, True),
    Goal("actor calls async at least 1.5x Ray", "actor_async_per_s", lambda n, r: n >= 1.5 * r, True),
    Goal("get of 100 MB under 1 ms", "get_100mb_ms", lambda n, r: n < 1.0, False),
    Goal("put of 100 MB at 70%+ of a plain memcopy", "put_100mb_pct_memcpy", lambda n, r: n >= 70, False),
    Goal("chain of 100 tasks at most half Ray's time", "chain_100_ms", lambda n, r: n <= r / 2, True),
    Goal("task on stored 100 MB at most 0.9x Ray's", "stored_sum_ms", lambda n, r: n <= 0.9 * r, True),
    Goal("idle memory at most 1/3 of Ray's", "idle_pss_mb", lambda n, r: n <= r / 3, True),
    Goal("tasks async with a subscriber within 5%", "subscriber_change_pct", lambda n, r: n >= -5, False),
)


def verdict(goal, medians):
    """'met', 'missed', or 'not measured' when a needed number is missing."""
    by_system = medians.get(goal.key, {})
    nebula, ray = by_system.get("nebula"), by_system.get("ray")
    if nebula is None or (goal.needs_ray and ray is None):
        return "not measured"
    return "met" if goal.met(nebula, ray) else "missed"


def report(medians, keys):
    """One line per goal whose metric was part of this run."""
    lines = [f"- {goal.text}: {verdict(goal, medians)}" for goal in GOALS if goal.key in keys]
    return "\n".join(["Goals (Nebula):", *lines])
