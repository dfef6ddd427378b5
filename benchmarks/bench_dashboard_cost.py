"""The task-throughput cost of an open dashboard: tasks async with and without the views live.

    python benchmarks/bench_dashboard_cost.py [--rounds 5] [--tasks 5000]

The dashboard is the notebook widget's board (all four views, their models in a process of
their own) updated every 200 ms on its own thread, exactly as in a notebook, minus the
browser; ``--in-process`` runs the models in this process instead (as the dashboard page does
in the Jupyter server). Rounds alternate with and without it; medians are printed, and the median of each round's paired cost (the two
runs of a round are back to back, so slow drift of the machine cancels). Asserts nothing.
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


def rate_with_dashboard(count: int, in_process: bool) -> float:
    dashboard = OpenDashboard(in_process)
    dashboard.ready.wait(30)  # measured once it draws, as a dashboard someone is looking at
    try:
        return tasks_per_second(count)
    finally:
        dashboard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--in-process", action="store_true", help="run the view models in this process")
    args = parser.parse_args()
    nebula.init(num_cpus=2)
    tasks_per_second(1000)
    without, with_board, costs = [], [], []
    for index in range(args.rounds):  # each round a back-to-back pair, which one first alternating
        plain = tasks_per_second(args.tasks) if index % 2 == 0 else None
        with_board.append(rate_with_dashboard(args.tasks, args.in_process))
        without.append(plain if plain is not None else tasks_per_second(args.tasks))
        costs.append(1 - with_board[-1] / without[-1])
    nebula.shutdown()
    base, open_ = statistics.median(without), statistics.median(with_board)
    print(f"tasks async without a dashboard: {base:,.0f}/s  {[round(v) for v in without]}")
    print(f"tasks async with the dashboard open: {open_:,.0f}/s  {[round(v) for v in with_board]}")
    print(f"cost of an open dashboard: median of the rounds' paired costs {statistics.median(costs) * 100:.1f}% "
          f"{[round(c * 100, 1) for c in costs]}; of the medians {(1 - open_ / base) * 100:.1f}% (goal: under 5%)")


if __name__ == "__main__":
    main()
