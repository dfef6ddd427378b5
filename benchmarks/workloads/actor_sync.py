"""Actor calls sync: call a no-op method on one actor, get it, repeat (calls/s)."""

from workloads.metric import Metric
from workloads.throughput import NoopActor, sync_count, sync_rate, warm_up

SYSTEMS = ("nebula", "ray")
METRICS = (Metric("actor_sync_per_s", "actor calls sync", "calls/s", True),)


def run(rt, quick):
    actor = rt.remote(NoopActor).remote()
    warm_up(rt, actor.noop.remote)
    return {"actor_sync_per_s": sync_rate(rt, actor.noop.remote, sync_count(quick))}
