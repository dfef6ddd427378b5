"""Workloads run by the suite, in the order the table shows them."""

ORDER = (
    "cold_start",
    "tasks_sync",
    "tasks_async",
    "actor_sync",
    "actor_async",
    "put_get",
    "chain",
    "stored_sum",
    "idle_memory",
    "subscriber",
)
