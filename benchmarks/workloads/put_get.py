"""Put and get of 1 KB, 10 MB and 100 MB float64 arrays, and put of 100 MB against a plain memcopy."""

import statistics

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
    Metric("memcpy_100mb_gbps", "plain memcopy 100 MB (np.copyto)", "GB/s", True),
    Metric("put_100mb_gbps", "put 100 MB bandwidth", "GB/s", True),
    Metric("put_100mb_pct_memcpy", "put 100 MB vs memcopy", "%", True),
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
    put_gbps = HUNDRED_MB / 1e9 / (metrics["put_100mb_ms"] / 1e3)
    copy_gbps = HUNDRED_MB / 1e9 / copy_seconds
    return {
        "memcpy_100mb_gbps": copy_gbps,
        "put_100mb_gbps": put_gbps,
        "put_100mb_pct_memcpy": 100.0 * put_gbps / copy_gbps,
    }


def run(rt, quick):
    copy_seconds = memcpy_seconds(make_array(HUNDRED_MB))
    metrics = {}
    for size in SIZES:
        metrics.update(measure_size(rt, size, quick))
    return {**metrics, **bandwidth(metrics, copy_seconds)}
