"""Cold start: wall time of a fresh `python -c` from exec to its first get returning (init + one task)."""

import subprocess
import sys
import time

from workloads.metric import Metric
from workloads.rt import NUM_CPUS

SYSTEMS = ("nebula", "ray")
MANAGES_INIT = True
TIMEOUT_S = 50
DONE = "COLD_START_DONE"
METRICS = (Metric("cold_start_s", "cold start (import+init+1 task)", "s", False),)

SCRIPT = """
import time
import {name} as rt
rt.init(num_cpus={cpus})
def noop():
    return None
rt.get(rt.remote(noop).remote())
print("{done}", time.monotonic(), flush=True)
rt.shutdown()
"""


def first_get_time(stdout):
    """The monotonic time the script printed right after its first get returned."""
    for line in stdout.splitlines():
        if line.startswith(DONE):
            return float(line.split()[1])
    raise RuntimeError(f"cold-start script never reported its first get; stdout was:\n{stdout}")


def launch(script):
    """Seconds from starting `python -c script` to its first get returning."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold-start script exited {done.returncode}:\n{done.stderr[-2000:]}")
    return first_get_time(done.stdout) - start


def run(rt, quick):
    script = SCRIPT.format(name=rt.__name__, cpus=NUM_CPUS, done=DONE)
    launch(script)  # untimed: fills the page and bytecode caches, as any second launch would find them
    return {"cold_start_s": launch(script)}
