"""Reduces the raw run records to one median per metric and system, and one state per cell."""

import statistics

NOT_APPLICABLE = "N/A"
NOT_RUN = "not run"
FAILED = "FAILED"
TIMED_OUT = "TIMEOUT"


def medians(records):
    """{metric key: {system: median over its successful repeats}}."""
    values = {}
    for record in records:
        for key, value in record.metrics.items():
            values.setdefault(key, {}).setdefault(record.system, []).append(value)
    return {key: median_each(by_system) for key, by_system in values.items()}


def median_each(values_by_system):
    return {system: statistics.median(values) for system, values in values_by_system.items()}


def failure_state(records, workload, system):
    """TIMEOUT or FAILED if this workload never succeeded on this system, else None."""
    runs = [r for r in records if r.workload == workload and r.system == system]
    if not runs or any(r.ok for r in runs):
        return None
    return TIMED_OUT if any(r.timed_out for r in runs) else FAILED


def cell(records, median_by_system, module, system, available):
    """A table cell: the median, or why there is none."""
    if system not in module.SYSTEMS:
        return NOT_APPLICABLE
    if system not in available:
        return NOT_RUN
    if system in median_by_system:
        return median_by_system[system]
    return failure_state(records, module.__name__.split(".")[-1], system) or NOT_RUN
