"""A board whose view models run in a process of their own, so the kernel only draws.

Turning the cluster's events into plot updates costs tens of microseconds per task; in the
kernel that competes with the user's own driver code for one interpreter. Here a
``ModelProcess`` joins the cluster, subscribes and runs the models; the kernel receives only
the shown filter's stream/patch updates, every period, and applies them to its sources.

    tick():  connection changed? ── restart the model process (or stop it: not connected)
             its messages ───────── "ready": send this process's own tasks (snapshot) as a seed
                                    "replace": whole columns; "updates": stream/patch per view
"""
from __future__ import annotations

import logging
import time

import nebula

from .board import Board
from .feed import current_client_id, seed_events
from .model_process import ModelProcess, describe_exit
from .models.tasks import short

log = logging.getLogger("nebula.widgets")
RESTART_AFTER = 5.0


class OffloadedBoard(Board):
    def __init__(self, views: list, period: float = 0.2, **kwargs):
        super().__init__(views, **kwargs)
        self.period = period
        self.process: ModelProcess | None = None
        self.client_id: str | None = None
        self.node_id: str | None = None
        self.dropped = 0
        self.drawn = False  # the model process's first full columns arrived
        self.failure = ""
        self._failed_at = 0.0

    @property
    def connected(self) -> bool:
        return self.process is not None

    def prime(self) -> None:
        """Start the model process now (if connected), so it subscribes before the first tick."""
        self._follow_connection()

    def tick(self, now: float | None = None) -> None:
        self._follow_connection()
        for message in self.process.messages() if self.process is not None else ():
            with self._held():  # one document change per message: see ``Board._held``
                self._take(*message)
        with self._held():
            self._check_alive()
            self._show_status()

    def show_mine(self, mine: bool) -> None:
        for view in self.views:
            view.pair.mine = mine
        if self.process is not None:
            self.process.send("show", mine)

    def resync(self) -> None:
        if self.process is not None:
            self.process.send("resync")

    def close(self) -> None:
        self._stop_process()
        self.client_id = None
        super().close()

    # ---- the model process -------------------------------------------------------------------

    def _follow_connection(self) -> None:
        client = current_client_id()
        if client == self.client_id and (self.process is not None or client is None):
            return
        if client == self.client_id and time.monotonic() - self._failed_at < RESTART_AFTER:
            return  # it failed just now: try again a little later
        self._stop_process()
        self.client_id, self.node_id, self.drawn = client, None, False
        for view in self.views:
            view.reset(None)
        if client is not None:
            self._start_process(client)

    def _start_process(self, client: str) -> None:
        try:
            self.process = ModelProcess([view.key for view in self.views], client, self.period)
            self.process.send("show", self.switch.active)
            self.failure = ""
        except Exception as exc:  # noqa: BLE001 - the board says what went wrong and tries again
            log.warning("could not start the dashboard's model process", exc_info=True)
            self._failed(f"could not start its model process ({exc})")

    def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.close()

    def _take(self, kind: str, *payload) -> None:
        if kind == "ready":
            self.node_id = nebula.get_runtime_context().get_node_id()
            own_tasks = [(e.kind, e.id, e.state, e.time, dict(e.data))
                         for e in seed_events(nebula.state.snapshot(), self.client_id) if e.kind == "task"]
            self.process.send("seed", own_tasks)
        elif kind == "replace":
            for view, (columns, props) in zip(self.views, payload[0]):
                view.show_columns(columns, props)
            self.drawn = True
        elif kind == "updates":
            updates, self.dropped = payload
            for view, update in zip(self.views, updates):
                if update:
                    self._show(view, update)

    def _show(self, view, update) -> None:
        try:
            view.show(update)
        except Exception:  # a bug drawing one view: redraw everything from the models
            log.exception("the %s view failed to take an update; redrawing it", view.title)
            self.resync()

    def _check_alive(self) -> None:
        code = self.process.exit_status if self.process is not None else None
        if code is not None:
            self._stop_process()
            self._failed(f"its model process {describe_exit(code)}; restarting it")

    def _failed(self, why: str) -> None:
        self.failure, self._failed_at = why, time.monotonic()

    def _show_status(self) -> None:
        if self.client_id is None:
            text = self.not_connected
        elif self.process is None and self.failure:
            text = f"<b>The views stopped updating</b>: {self.failure}"
        else:
            text = f"connected as client {short(self.client_id)} on node {short(self.node_id)}"
            if self.dropped:
                text += f"; <b>{self.dropped} events dropped</b> (the views fell behind the cluster)"
        if self.status.text != text:
            self.status.text = text
