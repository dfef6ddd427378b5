"""One view's models: the whole cluster's and, once the owner is known, one client's share.

Both models take every event; only the shown one's updates reach the sources. Which view
makes which model is ``MODEL_TYPES`` (view key -> model class, whether the "this notebook
only" switch applies), so a process without Bokeh can run a board's models by key.
"""
from __future__ import annotations

from .node_resources import NodeResourcesModel
from .object_placement import ObjectPlacementModel
from .task_graph import TaskGraphModel
from .timeline import TimelineModel
from .update import Update

ALL, MINE = "all", "mine"
MODEL_TYPES = {"task_graph": (TaskGraphModel, True), "object_placement": (ObjectPlacementModel, True),
               "node_resources": (NodeResourcesModel, False), "timeline": (TimelineModel, True)}


def make_model(key: str, owner: str | None):
    """The model of view ``key``; ``owner`` keeps one client's share (filterable views only)."""
    model_type, filterable = MODEL_TYPES[key]
    return model_type(owner=owner) if filterable else model_type()


class ViewModels:
    """The models behind one view; ``make(owner)`` makes one, ``filterable`` says whether MINE exists.

    With ``both`` (the default) both filters' models take every event, so the switch flips
    at once. Without it only the shown filter's model exists: the caller rebuilds it (``reset``
    then ``apply`` of what it kept) when the switch flips, for half the work per event.
    """

    def __init__(self, make, filterable: bool = True, both: bool = True):
        self.make, self.filterable, self.both = make, filterable, both
        self.mine = False
        self.models = {ALL: make(None)}

    @classmethod
    def for_key(cls, key: str, both: bool = True) -> ViewModels:
        return cls(lambda owner: make_model(key, owner), MODEL_TYPES[key][1], both)

    @property
    def active(self) -> str:
        return MINE if self.mine and MINE in self.models else ALL

    @property
    def shown(self):
        return self.models[self.active]

    def reset(self, owner: str | None) -> None:
        """Fresh models (a new connection); ``owner`` is the watching process's client id."""
        mine_possible = owner is not None and self.filterable
        if self.both or not (self.mine and mine_possible):
            self.models = {ALL: self.make(None)}
        else:
            self.models = {}
        if mine_possible and (self.both or self.mine):
            self.models[MINE] = self.make(owner)

    def apply(self, events: list, now: float) -> Update | None:
        """Feed every model; the shown one's changes, if any."""
        shown = None
        for which, model in self.models.items():
            update = model.apply(events, now)
            if which == self.active and update:
                shown = update
        return shown
