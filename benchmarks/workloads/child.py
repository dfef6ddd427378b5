"""Runs one workload for one system in this fresh process and prints its metrics as one JSON line."""

import argparse
import importlib
import json

from workloads import rt as rt_loader

RESULT_PREFIX = "BENCH_RESULT "


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("workload")
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args()


def run_workload(module, rt, quick):
    """Run it, starting and stopping rt around it unless the workload does that itself."""
    if getattr(module, "MANAGES_INIT", False):
        return module.run(rt, quick)
    rt_loader.init(rt)
    try:
        return module.run(rt, quick)
    finally:
        rt.shutdown()


def main():
    args = parse_args()
    module = importlib.import_module(f"workloads.{args.workload}")
    metrics = run_workload(module, rt_loader.load(args.system), args.quick)
    print(RESULT_PREFIX + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
