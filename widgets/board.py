"""A board: live views sharing one cluster feed under a header (the "this notebook only" switch, status).

``tick()`` is the one place data reaches the document: it drains the feed and applies every
view's update inside one held document change. Whoever owns the document calls it every
update period (a Bokeh server session's periodic callback, or a notebook widget's thread).
"""
from __future__ import annotations

import contextlib
import logging
import time

from bokeh.layouts import column, row
from bokeh.models import Div, Switch

from .feed import ClusterFeed
from .models.tasks import short

log = logging.getLogger("nebula.widgets")
NOT_CONNECTED = "Not connected to a cluster: the views fill in once <code>nebula.init()</code> has run."


class Board:
    """``views`` laid out ``per_row`` to a row; ``switch`` offers the "this notebook only" filter."""

    def __init__(self, views: list, switch: bool = True, per_row: int = 2, title: str = "Nebula",
                 not_connected: str = NOT_CONNECTED):
        self.views = views
        self.feed = ClusterFeed()
        self.not_connected = not_connected
        self._primed: tuple | None = None
        self.status = Div(text=not_connected, styles={"font-size": "12px", "color": "#555"}, name="nebula_status")
        self.switch = Switch(active=False, visible=switch, name="mine_switch")
        self.switch.on_change("active", lambda _attr, _old, new: self.show_mine(new))
        rows = [row(*[v.layout for v in views[i:i + per_row]], sizing_mode="stretch_width")
                for i in range(0, len(views), per_row)]
        self.layout = column(self._header(title, switch), *rows, sizing_mode="stretch_width", name="nebula_board")
        self.events_seen = 0

    def _header(self, title: str, switch: bool):
        label = Div(text="this notebook only", visible=switch, styles={"font-size": "12px"})
        return row(Div(text=f"<b>{title}</b>"), self.switch, label, self.status, sizing_mode="stretch_width")

    def prime(self) -> None:
        """Connect to the feed now (before the first tick), so no event after this call is missed."""
        self._primed = self.feed.poll()

    def tick(self, now: float | None = None) -> None:
        """Apply what the feed delivered since the last tick (on the document's own thread or loop)."""
        primed, self._primed = self._primed, None
        start_over, events = primed or self.feed.poll()
        if start_over:
            with self._held():  # its own document change: see ``_held``
                for view in self.views:
                    view.reset(self.feed.client_id)
                    view.show_mine(self.switch.active)
        with self._held():
            now = time.time() if now is None else now
            for view in self.views:
                self._apply(view, events, now)
            self.events_seen += len(events)
            self._show_status()

    @staticmethod
    def _apply(view, events: list, now: float) -> None:
        try:
            view.apply(events, now)
        except Exception:  # a bug in one view: say so, and redraw it from its model rather than drift
            log.exception("the %s view failed to take an update; redrawing it", view.title)
            view.show_all()

    def show_mine(self, mine: bool) -> None:
        for view in self.views:
            view.show_mine(mine)

    def resync(self) -> None:
        """Send everything again: a browser view that just appeared drew the document as it first was."""
        with self._held():
            for view in self.views:
                view.show_all()

    def browser_controls(self) -> dict[str, str]:
        """{model id: property} the browser may change; every other browser change is ignored."""
        return {self.switch.id: "active"}

    def close(self) -> None:
        self.feed.close()

    def _show_status(self) -> None:
        if self.feed.client_id is None:
            text = self.not_connected
        else:
            text = f"connected as client {short(self.feed.client_id)} on node {short(self.feed.node_id)}"
            if self.feed.dropped:
                text += f"; <b>{self.feed.dropped} events dropped</b> (the views fell behind the cluster)"
        if self.status.text != text:
            self.status.text = text

    @contextlib.contextmanager
    def _held(self):
        """One combined document change, however many sources it touches. A held change that
        replaces a source's data must not also stream into it: the replacement is serialized
        when the hold ends, with the rows streamed meanwhile already in it, and the stream is
        sent too, so the browser would hold those rows twice."""
        document = self.layout.document
        if document is None:
            yield
            return
        document.hold("combine")
        try:
            yield
        finally:
            document.unhold()
