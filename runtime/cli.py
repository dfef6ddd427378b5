"""The ``nebula`` command: demo, start/stop a cluster, up/down over SSH, status, logs."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, ConnectionError, RuntimeError, FileNotFoundError) as exc:
        print(f"nebula {args.command}: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nebula", description="Nebula: notebook-first distributed Python")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a few tasks, an actor and a zero-copy get, printing figures")
    demo.add_argument("--num-cpus", type=int, default=None)
    demo.set_defaults(run=_run_demo)
    _add_start(commands)
    stop = commands.add_parser("stop", help="stop what this user's `nebula start` started on this machine")
    stop.set_defaults(run=_run_stop)
    status = commands.add_parser("status", help="nodes, resources, objects and tasks of a cluster")
    status.add_argument("--address", default="auto")
    status.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    status.set_defaults(run=_run_status)
    logs = commands.add_parser("logs", help="print (or follow) the cluster's log files")
    logs.add_argument("--node", default=None, help="node number (1 = head) or session directory")
    logs.add_argument("--worker", type=int, default=None, help="only this worker pid's output")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(run=_run_logs)
    _add_up_down(commands)
    return parser


def _add_up_down(commands) -> None:
    up = commands.add_parser("up", help="start a cluster over SSH: the head, then the nodes of a cluster.yaml")
    up.add_argument("config", help="the cluster file (format: README, 'Clusters over SSH')")
    up.add_argument("--token-file", default=None, help="use this token instead of a fresh one")
    up.set_defaults(run=_run_up)
    down = commands.add_parser("down", help="stop (over SSH) what `nebula up` started from a cluster.yaml")
    down.add_argument("config", help="the cluster file given to `nebula up`")
    down.set_defaults(run=_run_down)


def _add_start(commands) -> None:
    start = commands.add_parser("start", help="start a head (--head) or a node joining one (--address)")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true")
    role.add_argument("--address", help="HOST:PORT of the head to join")
    start.add_argument("--port", type=int, default=6380, help="head TCP port (default 6380; 0 = any)")
    start.add_argument("--host", default=None, help="address to listen on and advertise (default 127.0.0.1 "
                       "for a head; for a node, the interface that routes to the head)")
    start.add_argument("--num-cpus", type=float, default=None)
    start.add_argument("--num-gpus", type=int, default=None)
    start.add_argument("--resources", type=json.loads, default=None, help='JSON, e.g. \'{"fpga": 2}\'')
    start.add_argument("--object-store-memory", default=None)
    start.add_argument("--nodes", type=int, default=1, help="with --head: this many node agents here")
    start.add_argument("--token-file", default=None)
    start.add_argument("--token-stdin", action="store_true",
                       help="read the token from the first line of standard input (as `nebula up` passes it)")
    start.add_argument("--heartbeat-timeout", type=float, default=3.0)
    start.add_argument("--no-tls", action="store_true",
                       help="allow a non-loopback --host: traffic between machines is then authenticated "
                            "(HMAC) but not encrypted; only on networks you trust")
    start.add_argument("--block", action="store_true", help="stay in the foreground until killed")
    start.add_argument("--dashboard-port", type=int, default=None,
                       help="with --head: serve the dashboard page on this port (the token is required once)")
    start.add_argument("--dashboard-host", default="127.0.0.1")
    start.set_defaults(run=_run_start)


def _run_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.num_cpus)


def _run_start(args) -> int:
    from .cluster_launcher import start_from_cli
    return start_from_cli(args)


def _run_stop(args) -> int:
    from .cluster_launcher import stop_started
    return stop_started()


def _run_up(args) -> int:
    from .ssh_launcher import cluster_up
    return cluster_up(args.config, args.token_file)


def _run_down(args) -> int:
    from .ssh_launcher import cluster_down
    return cluster_down(args.config)


def _run_status(args) -> int:
    from .cluster_status import print_status
    return print_status(args.address, args.json)


def _run_logs(args) -> int:
    from .cluster_status import print_logs
    return print_logs(args.node, args.worker, args.follow)


if __name__ == "__main__":
    sys.exit(main())
