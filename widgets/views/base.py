"""A live view: its pure models (the whole cluster, and one client's share) drawn from Bokeh sources.

A view keeps one model per filter ("all", and "mine" once it knows this process's client
id), feeds every model the same events, and shows the active one's updates. Switching
filter or starting over replaces each source's data with the active model's ``columns()``.
Only the thread or loop that owns the document calls these methods.
"""
from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, LayoutDOM

from ..models.view_models import ViewModels


class View:
    title = ""
    key = ""  # names the view's models (``MODEL_TYPES``) and its sources "<key>.<source>"

    def __init__(self):
        self.pair = ViewModels.for_key(self.key)
        self.sources: dict[str, ColumnDataSource] = {}
        for name, data in self.pair.shown.columns().items():
            self.source(name, data)
        self.layout: LayoutDOM = self.build()
        self.apply_props(self.pair.shown.props())

    # ---- what each view defines ------------------------------------------------------------------

    def build(self) -> LayoutDOM:
        raise NotImplementedError

    def apply_props(self, props: dict) -> None:
        """Axis factors, tick labels and the like changed (see the model's ``props()``)."""

    def source_added(self, name: str, source: ColumnDataSource) -> None:
        """A source the model named for the first time (a new node's history, say): draw it."""

    # ---- driving ----------------------------------------------------------------------------------

    @property
    def models(self) -> dict:
        return self.pair.models

    @property
    def active(self) -> str:
        return self.pair.active

    def reset(self, owner: str | None) -> None:
        """Start over (a new connection): fresh models, ``owner`` being this process's client id."""
        self.pair.reset(owner)
        self.show_all()

    def show_mine(self, mine: bool) -> None:
        self.pair.mine = mine
        self.show_all()

    def apply(self, events: list, now: float) -> None:
        update = self.pair.apply(events, now)
        if update:
            self.show(update)

    def source(self, name: str, columns=()) -> ColumnDataSource:
        source = self.sources.get(name)
        if source is None:
            source = ColumnDataSource({column: [] for column in columns}, name=f"{self.key}.{name}")
            self.sources[name] = source
            if hasattr(self, "layout"):
                self.source_added(name, source)
        return source

    def show(self, update) -> None:
        """Apply one ``Update`` of the shown model to the sources."""
        for name, data in update.replace.items():
            self.source(name, data).data = data
        for name, patch in update.patch.items():
            self.source(name).patch(patch)
        for name, rows in update.stream.items():
            self.source(name, rows).stream(_numbers_as_arrays(rows), rollover=update.rollover.get(name))
        if update.props:
            self.apply_props(update.props)

    def show_all(self) -> None:
        """Replace every source's data with the shown model's (a filter switch, a new browser view)."""
        self.show_columns(self.pair.shown.columns(), self.pair.shown.props())

    def show_columns(self, columns: dict, props: dict) -> None:
        """Every source's whole data (sources the model does not name are emptied) and the view's props."""
        for name, source in list(self.sources.items()):
            if name not in columns:
                source.data = {column: [] for column in source.data}
        for name, data in columns.items():
            self.source(name, data).data = data
        self.apply_props(props)


def _numbers_as_arrays(rows: dict) -> dict:
    """Numeric columns as numpy arrays: Bokeh sends those as binary buffers, far cheaper than lists."""
    return {column: np.asarray(values, dtype=float) if _numeric(values) else values
            for column, values in rows.items()}


def _numeric(values: list) -> bool:
    return bool(values) and all(type(v) is float or type(v) is int for v in values)
