"""Turns a system name into the `rt` module object that the workloads drive."""

import importlib

NUM_CPUS = 2

MODULES = {
    "nebula": "nebula",
    "ray": "ray",
    "dask": "workloads.dask_rt",
    "pool": "workloads.pool_rt",
}


def load(system):
    """The module for `system`: nebula and ray themselves, adapters for the others."""
    return importlib.import_module(MODULES[system])


def init(rt):
    """Start `rt` the same way for every system: two CPUs."""
    rt.init(num_cpus=NUM_CPUS)
