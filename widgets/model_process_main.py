"""A notebook board's view models in a process of their own: ``python -m nebula.widgets.model_process_main FD``.

    kernel (ModelProcess)                      this process
      ("start", {keys, owner, period}) ──────► joins the cluster (NEBULA_ADDRESS/NEBULA_TOKEN
                                               in its environment), subscribes, takes a snapshot
                              ◄────────────── ("ready", {"client": id, "node": id})
      ("seed", the kernel's own tasks) ──────► models reset and seeded
                              ◄────────────── ("replace", [(columns, props) per view])
                              ◄────────────── ("updates", [Update | None per view], dropped)   every period
      ("show", mine) / ("resync",) ──────────► ("replace", ...)

FD is this end of a socket pair (a ``multiprocessing`` connection). The process ends when
the kernel closes its end or dies (parent-death signal); the kernel ends it when its own
connection to the cluster changes or ends.
Only the shown filter's changes cross to the kernel, so its cost there is bounded by what
the browser receives, not by the cluster's event rate.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing.connection
import os
import signal
import sys
import time

import nebula
from nebula.state import STRETCH, Event

from .feed import ClusterFeed, events_in, seed_events
from .models.view_models import ViewModels

PR_SET_PDEATHSIG = 1
NICENESS = 10
REPLAY_LIMIT = 50_000  # task events kept to rebuild the views when the "this notebook only" switch flips


class ModelServer:
    """The models of one board's views, fed by this process's own subscription."""

    def __init__(self, conn, keys: list[str], owner: str, period: float):
        self.conn, self.owner, self.period = conn, owner, period
        self.feed = ClusterFeed()
        self.views = [ViewModels.for_key(key, both=False) for key in keys]  # the shown filter's only
        self.kept = KeptTasks(REPLAY_LIMIT)  # to rebuild on a switch
        self.seeded = False

    def run(self) -> None:
        _, seed = self.feed.poll()  # subscribes, then takes the snapshot: nothing is missed
        if self.feed.client_id is None:
            raise ConnectionError("could not join the cluster")
        self.conn.send(("ready", {"client": self.feed.client_id, "node": self.feed.node_id}))
        self._own_seed = seed
        due = time.monotonic()
        while True:
            if self.conn.poll(max(0.0, due - time.monotonic())):
                self._command(*self.conn.recv())
                continue
            due = time.monotonic() + self.period
            if self.seeded:
                self._tick()

    def _command(self, kind: str, *args) -> None:
        if kind == "seed":
            kernel_seed = [Event(kind, id_, state, at, data) for kind, id_, state, at, data in args[0]]
            self.kept.extend(kernel_seed)
            self._rebuild(self._own_seed)
            self.seeded = True
        elif kind == "show":
            for view in self.views:
                view.mine = bool(args[0])
            if self.seeded:
                self._rebuild(seed_events(nebula.state.snapshot(), self.feed.client_id))
        elif kind == "resync":
            self._replace()

    def _tick(self) -> None:
        start_over, events = self.feed.poll()
        if start_over:
            raise ConnectionError("the connection to the cluster was replaced")
        updates = self._apply(events)
        if any(updates):
            self.conn.send(("updates", updates, self.feed.dropped))

    def _rebuild(self, base: list) -> None:
        """The shown filter's models afresh: ``base`` (a snapshot's nodes, actors and objects),
        then the task events kept (the latest ``REPLAY_LIMIT``)."""
        for view in self.views:
            view.reset(self.owner)
        self._apply(base + list(self.kept.events), keep=False)
        self._replace()

    def _apply(self, events: list, keep: bool = True) -> list:
        if keep:
            self.kept.extend(events)
        now = time.time()
        return [view.apply(events, now) for view in self.views]

    def _replace(self) -> None:
        self.conn.send(("replace", [(view.shown.columns(), view.shown.props()) for view in self.views]))


class KeptTasks:
    """The latest ``limit`` task events, a stretch counting as one per task it holds."""

    def __init__(self, limit: int):
        self.events: collections.deque = collections.deque()
        self.count, self.limit = 0, limit

    def extend(self, events) -> None:
        kept = [event for event in events if event.kind == "task" or event.kind == STRETCH]
        self.events.extend(kept)
        self.count += events_in(kept)
        while self.count > self.limit:
            self.count -= events_in((self.events.popleft(),))


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        return  # the kernel died before the signal was set up
    os.nice(NICENESS)  # a background observer: the kernel and the workers go first
    conn = multiprocessing.connection.Connection(int(sys.argv[1]))
    try:
        kind, config = conn.recv()
        nebula.init(logging_level=logging.WARNING)
        ModelServer(conn, config["keys"], config["owner"], config["period"]).run()
    except (EOFError, OSError):
        pass  # the kernel closed its end: the board is gone
    finally:
        nebula.shutdown()


if __name__ == "__main__":
    main()
