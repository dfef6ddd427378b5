"""Put and get of 1 KB, 10 MB and 100 MB float64 arrays, and put of 100 MB against a plain memcopy.

Puts are timed twice. First each lands in store memory never used before (all refs are kept):
what the first put of a session costs, which includes the kernel handing out fresh pages and,
on a virtual machine, the hypervisor backing them (on the reference VM, whose freed memory goes
back to the host within seconds, about 1.3 ms per MB). Then each put's ref is dropped before
the next, so puts land in store memory used before: the steady state of a session, and the
same footing as the memcopy baseline, whose target array is allocated and touched beforehand.
"""

import statistics
import time

import numpy as np

from workloads.metric import Metric
from workloads.timing import median_seconds, timed

SYSTEMS = ("nebula", "ray", "dask")
HUNDRED_MB = 100_000_000
SIZES = {"1kb": 1_000, "10mb": 10_000_000, "100mb": HUNDRED_MB}
REPEATS = {"1kb": (200, 50), "10mb": (10, 5), "100mb": (5, 3)}  # (full, quick)
METRICS = tuple(
    Metric(f"{op}_{size}_ms", f"{op} {size.upper().replace('KB', ' KB').replace('MB', ' MB')}", "ms", False)
    for size in SIZES
    for op in ("put", "get")
) + (
    Metric("put_100mb_reused_ms", "put 100 MB, store memory used before", "ms", False),
    Metric("memcpy_100mb_gbps", "plain memcopy 100 MB (np.copyto)", "GB/s", True),
    Metric("put_100mb_gbps", "put 100 MB bandwidth, memory used before", "GB/s", True),
    Metric("put_100mb_pct_memcpy", "put 100 MB vs memcopy, memory used before", "%", True),
    Metric("put_100mb_fresh_pct_memcpy", "put 100 MB vs memcopy, fresh memory", "%", True),
)


def make_array(nbytes):
    """A float64 array of `nbytes` bytes whose pages are already touched."""
    return np.full(nbytes // 8, 1.5)


def memcpy_seconds(source):
    """Median time of a single-threaded copy into a preallocated, pre-faulted array."""
    target = np.empty_like(source)
    target.fill(0.0)
    return median_seconds(lambda: np.copyto(target, source), 5)


def time_puts(rt, array, count):
    """Put `array` `count` times; return the refs and each put's seconds."""
    refs, seconds = [], []
    for _ in range(count):
        seconds.append(timed(lambda: refs.append(rt.put(array))))
    return refs, seconds


def time_reused_puts(rt, array, count):
    """Seconds of each of `count` puts, each ref dropped before the next put; the first two
    (which may still find fresh memory while the previous object's free is on its way) are
    not counted."""
    seconds = []
    for _ in range(count + 2):
        start = time.perf_counter()
        ref = rt.put(array)
        seconds.append(time.perf_counter() - start)
        rt.get(ref)  # the object is complete before its ref goes
        del ref
        time.sleep(0.05)  # let the free reach the store, as time between puts would in a session
    return seconds[2:]


def time_gets(rt, refs):
    """Seconds of one get of each already stored ref."""
    return [timed(rt.get, ref) for ref in refs]


def measure_size(rt, size, quick):
    """Median put and get milliseconds for one array size."""
    array = make_array(SIZES[size])
    refs, put_seconds = time_puts(rt, array, REPEATS[size][quick])
    get_seconds = time_gets(rt, refs)
    return {
        f"put_{size}_ms": statistics.median(put_seconds) * 1e3,
        f"get_{size}_ms": statistics.median(get_seconds) * 1e3,
    }


def bandwidth(metrics, copy_seconds):
    """Put of 100 MB as GB/s and as a percentage of the plain memcopy."""
    put_gbps = HUNDRED_MB / 1e9 / (metrics["put_100mb_reused_ms"] / 1e3)
    copy_gbps = HUNDRED_MB / 1e9 / copy_seconds
    return {
        "memcpy_100mb_gbps": copy_gbps,
        "put_100mb_gbps": put_gbps,
        "put_100mb_pct_memcpy": 100.0 * put_gbps / copy_gbps,
        "put_100mb_fresh_pct_memcpy": 100.0 * copy_seconds / (metrics["put_100mb_ms"] / 1e3),
    }


def run(rt, quick):
    copy_seconds = memcpy_seconds(make_array(HUNDRED_MB))
    metrics = {}
    for size in SIZES:
        metrics.update(measure_size(rt, size, quick))
    reused = time_reused_puts(rt, make_array(HUNDRED_MB), REPEATS["100mb"][quick])
    metrics["put_100mb_reused_ms"] = statistics.median(reused) * 1e3
    return {**metrics, **bandwidth(metrics, copy_seconds)}
