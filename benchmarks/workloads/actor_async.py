"""Actor calls async: 10,000 no-op calls on one actor, then one get of the list (calls/s)."""

from workloads.metric import Metric
from workloads.throughput import NoopActor, async_rate, warm_up

SYSTEMS = ("nebula", "ray")
METRICS = (Metric("actor_async_per_s", "actor calls async (10k)", "calls/s", True),)


def run(rt, quick):
    actor = rt.remote(NoopActor).remote()
    warm_up(rt, actor.noop.remote)
    return {"actor_async_per_s": async_rate(rt, actor.noop.remote)}
