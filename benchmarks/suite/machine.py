"""Describes the machine a run happened on: cores, memory, CPU model, load, date."""

import os
import platform
import subprocess


def cpu_model():
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def date():
    return subprocess.run(["date"], capture_output=True, text=True).stdout.strip()


def describe():
    """The facts RESULTS.md asks for, as a dict for the JSON."""
    return {
        "nproc": os.cpu_count(),
        "memory_gib": memory_gib(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "date": date(),
    }
