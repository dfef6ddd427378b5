"""Thread-pool sizes of OpenMP / OpenBLAS / MKL in a worker's environment.

A module of its own, importing nothing heavy: node_launch builds the first worker's
environment before the node agent imports anything else. node_resources re-exports it.
"""
from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Mapping

# Thread-pool sizes of OpenMP / OpenBLAS / MKL, capped so N workers don't each start N threads.
THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_limit_env(num_cpus: float, environ: Mapping[str, str]) -> dict[str, str]:
    """OMP/OpenBLAS/MKL thread counts (= max(1, int(num_cpus))) for the variables `environ` lacks.

    A variable the user already set (present in `environ`, whatever its value) is left alone.
    """
    if not (type(num_cpus) in (int, float) and math.isfinite(num_cpus) and num_cpus >= 0):
        from .node_resources import _checked_amount
        num_cpus = _checked_amount("num_cpus", num_cpus)  # raises ValueError, or takes a numpy number
    threads = str(max(1, int(num_cpus)))
    return {name: threads for name in THREAD_LIMIT_VARS if name not in environ}
