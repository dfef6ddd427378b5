"""``nebula demo``: the main job on the embedded default, with the figures it measured."""
from __future__ import annotations

import statistics
import time

import numpy as np


def run_demo(num_cpus: int | None = None) -> int:
    start = time.perf_counter()
    import nebula
    info = nebula.init(num_cpus=num_cpus)
    print(f"cluster up in {time.perf_counter() - start:.2f} s: {info['resources'].get('CPU', 0):g} CPUs, "
          f"session logs in {info['session_dir']}/logs")
    _tasks(nebula)
    _actor(nebula)
    _objects(nebula)
    started = _descendants()
    nebula.shutdown()
    left = _still_running(started)
    print(f"shut down: {len(started)} processes were started, {len(left)} left running"
          + (f" (pids {left})" if left else ""))
    return 1 if left else 0


def _alive(process) -> bool:
    import psutil
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants() -> list:
    import psutil
    return psutil.Process().children(recursive=True)


def _still_running(processes: list, timeout: float = 3.0) -> list[int]:
    """Pids of ``processes`` still alive after ``timeout`` (zombies awaiting a reaper count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _tasks(nebula) -> None:
    @nebula.remote
    def square(x):
        return x * x

    @nebula.remote
    def noop():
        return None

    print("tasks: sum of squares 0..99 =", sum(nebula.get([square.remote(i) for i in range(100)])))
    nebula.get(noop.remote())
    samples = []
    for _ in range(200):
        t = time.perf_counter()
        nebula.get(noop.remote())
        samples.append(time.perf_counter() - t)
    t = time.perf_counter()
    nebula.get([noop.remote() for _ in range(2000)])
    rate = 2000 / (time.perf_counter() - t)
    print(f"tasks: {1 / statistics.median(samples):,.0f} sync/s (submit+get), {rate:,.0f} async/s")


def _actor(nebula) -> None:
    @nebula.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    t = time.perf_counter()
    last = nebula.get([counter.inc.remote() for _ in range(1000)])[-1]
    print(f"actor: counter reached {last} at {1000 / (time.perf_counter() - t):,.0f} calls/s")


def _objects(nebula) -> None:
    array = np.random.default_rng(0).random(100 * 2**20 // 8)
    t = time.perf_counter()
    ref = nebula.put(array)
    put_s = time.perf_counter() - t
    t = time.perf_counter()
    view = nebula.get(ref)
    get_s = time.perf_counter() - t
    print(f"objects: put 100 MB in {put_s * 1e3:.1f} ms, zero-copy get in {get_s * 1e3:.2f} ms "
          f"(read-only view: {not view.flags.writeable}, equal: {bool(np.array_equal(view, array))})")
