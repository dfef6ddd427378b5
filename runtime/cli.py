"""The ``nebula`` command: ``demo`` runs a tour of the runtime on the embedded default."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nebula", description="Nebula: notebook-first distributed Python")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a few tasks, an actor and a zero-copy get, printing figures")
    demo.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(args.num_cpus)
    return 2


if __name__ == "__main__":
    sys.exit(main())
