"""The task-throughput cost of an open dashboard: tasks async with and without the views live.

    python benchmarks/bench_dashboard_cost.py [--rounds 5] [--tasks 5000]

The dashboard is the notebook widget's board (all four views, their models in a process of
their own) updated every 200 ms on its own thread, exactly as in a notebook, minus the
browser; ``--in-process`` runs the models in this process instead (as the dashboard page does
in the Jupyter server). Rounds alternate with and without it; medians are printed. Asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import nebula
from nebula.widgets.board import Board
from nebula.widgets.offloaded_board import OffloadedBoard
from nebula.widgets.views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView


@nebula.remote
def noop():
    return None


def tasks_per_second(count: int) -> float:
    start = time.perf_counter()
    nebula.get([noop.remote() for _ in range(count)])
    return count / (time.perf_counter() - start)


class OpenDashboard:
    """A board ticking on its own thread while open."""

    def __init__(self, in_process: bool = False):
        views = [TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()]
        self.board = Board(views) if in_process else OffloadedBoard(views)
        self.board.prime()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.board.tick()
            if getattr(self.board, "drawn", True):
                self.ready.set()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.board.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--in-process", action="store_true", help="run the view models in this process")
    args = parser.parse_args()
    nebula.init(num_cpus=2)
    tasks_per_second(1000)
    without, with_board = [], []
    for _ in range(args.rounds):
        without.append(tasks_per_second(args.tasks))
        dashboard = OpenDashboard(args.in_process)
        dashboard.ready.wait(30)  # measured once it draws, as a dashboard someone is looking at
        with_board.append(tasks_per_second(args.tasks))
        dashboard.close()
    nebula.shutdown()
    base, open_ = statistics.median(without), statistics.median(with_board)
    print(f"tasks async without a dashboard: {base:,.0f}/s  {[round(v) for v in without]}")
    print(f"tasks async with the dashboard open: {open_:,.0f}/s  {[round(v) for v in with_board]}")
    print(f"cost of an open dashboard: {(1 - open_ / base) * 100:.1f}% (goal: under 5%)")


if __name__ == "__main__":
    main()
