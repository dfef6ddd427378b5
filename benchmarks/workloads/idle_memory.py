"""Idle memory: PSS and count of every process descended from the driver, 2 s after init()."""

import time

import psutil

from workloads import rt as rt_loader
from workloads.metric import Metric

SYSTEMS = ("nebula", "ray")
MANAGES_INIT = True
SETTLE_S = 2.0
METRICS = (
    Metric("idle_pss_mb", "idle memory (PSS of runtime processes)", "MB", False),
    Metric("idle_procs", "idle runtime processes", "count", False),
    Metric("driver_anon_growth_mb", "driver's anonymous memory growth from init() (info)", "MB", False),
)


def pss_bytes(process):
    """Proportional set size of one process; 0 if it is gone or unreadable."""
    try:
        return process.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def anonymous_bytes(process):
    """Anonymous memory of one process: what it allocated, unaffected by others sharing its files."""
    with open(f"/proc/{process.pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0


def snapshot(driver):
    """Descendant processes' total PSS and count, and the driver's own anonymous memory."""
    children = driver.children(recursive=True)
    return sum(pss_bytes(child) for child in children), len(children), anonymous_bytes(driver)


def run(rt, quick):
    driver = psutil.Process()
    before = anonymous_bytes(driver)
    rt_loader.init(rt)
    try:
        time.sleep(SETTLE_S)
        children_pss, count, after = snapshot(driver)
    finally:
        rt.shutdown()
    return {
        "idle_pss_mb": children_pss / 1e6,
        "idle_procs": count,
        "driver_anon_growth_mb": (after - before) / 1e6,
    }
