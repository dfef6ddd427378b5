"""Benchmark entry point: each workload on each system in a fresh process; medians table and raw JSON."""

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from suite import goals, machine, report, summary, systems  # noqa: E402
from suite.runner import run_once  # noqa: E402
from workloads import ORDER  # noqa: E402

DEFAULT_REPEATS, QUICK_REPEATS = 5, 2
PEERS = ("ray", "dask", "pool")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repeats, fewer iterations")
    parser.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(ORDER))
    parser.add_argument("--repeat", type=int, help=f"repeats per workload (default {DEFAULT_REPEATS})")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ",".join(PEERS))
    parser.add_argument("--json", default=str(BENCH_DIR / "last-run.json"), help="where raw numbers go")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per workload process")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    return args


def split(csv, allowed, what):
    """The comma-separated names, each checked against `allowed`."""
    names = [name.strip() for name in csv.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        sys.exit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def workload_modules(only):
    names = split(only, ORDER, "workload") or ORDER
    return [importlib.import_module(f"workloads.{name}") for name in ORDER if name in names]


def workload_name(module):
    return module.__name__.rsplit(".", 1)[-1]


def log(text):
    print(text, file=sys.stderr, flush=True)


def announce(found):
    for system in found.values():
        state = system.version if system.absent_because is None else f"skipped: {system.absent_because}"
        log(f"  {system.name:7} {state}  ({system.python})")


def log_record(record, repeats):
    state = "ok" if record.ok else ("TIMEOUT" if record.timed_out else "FAILED")
    strays = f", killed {record.left_behind} leftover processes" if record.left_behind else ""
    where = f"[{record.repeat + 1}/{repeats}] {record.workload:12} {record.system:7}"
    log(f"{where} {state} {record.wall_s:6.1f} s, load {record.load_after:.1f}{strays}")
    if record.error:
        log("    " + record.error.replace("\n", "\n    "))


def schedule(modules, available, repeats):
    """Repeat-major order, so the systems take turns and drift spreads over all of them."""
    for repeat in range(repeats):
        for module in modules:
            for name in available:
                if name in module.SYSTEMS:
                    yield repeat, workload_name(module), available[name]


def execute(modules, available, args):
    """Run the schedule; a workload that fails on a system is not retried there."""
    records, broken = [], set()
    for repeat, workload, system in schedule(modules, available, args.repeat):
        if (workload, system.name) not in broken:
            records.append(run_once(system, workload, repeat, args.quick, args.timeout))
            log_record(records[-1], args.repeat)
            if not records[-1].ok:
                broken.add((workload, system.name))
    return records


def leftover_ray_processes():
    """What `pgrep -f raylet` and `pgrep -f gcs_server` still find (should be nothing)."""
    found = []
    for pattern in ("raylet", "gcs_server"):
        done = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
        found += done.stdout.strip().splitlines()
    return found


def write_json(path, payload):
    Path(path).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    log(f"raw numbers written to {path}")


def print_results(records, modules, available):
    """The table and the goal verdicts on stdout; returns the medians."""
    medians = summary.medians(records)
    print(report.table(records, medians, modules, available))
    print("\n" + goals.report(medians, {m.key for module in modules for m in module.METRICS}), flush=True)
    return medians


def check_ray_leftovers():
    leftovers = leftover_ray_processes()
    log("leftover raylet/gcs_server processes: " + ("; ".join(leftovers) if leftovers else "none"))
    return leftovers


def main(argv=None):
    args = parse_args(argv)
    modules = workload_modules(args.only)
    info = machine.describe()
    log(f"{info['cpu_model']}, {info['nproc']} cores, {info['memory_gib']} GiB")
    log(f"load average at start: {info['loadavg_at_start']}")
    found = systems.discover(["nebula", *split(args.peers, PEERS, "peer")])
    announce(found)
    available = {name: s for name, s in found.items() if s.absent_because is None}
    records = execute(modules, available, args)
    medians = print_results(records, modules, available)
    write_json(args.json, {
        "args": vars(args), "machine": info, "systems": {n: dataclasses.asdict(s) for n, s in found.items()},
        "medians": medians, "records": [r.as_json() for r in records],
        "leftover_ray_processes": check_ray_leftovers(), "loadavg_at_end": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
