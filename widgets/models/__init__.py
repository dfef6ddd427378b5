"""Pure view models: ``nebula.state`` events in, ``Update``s (rows to stream, cells to patch) out.

No Bokeh, no threads, no clocks they do not take as arguments: each model is unit-tested by
feeding it events and reading the updates and ``columns()`` it returns.
"""
from __future__ import annotations

from .node_resources import NodeResourcesModel
from .object_placement import ObjectPlacementModel
from .task_graph import TaskGraphModel
from .timeline import TimelineModel
from .update import RowTable, Update

__all__ = ["NodeResourcesModel", "ObjectPlacementModel", "RowTable", "TaskGraphModel", "TimelineModel", "Update"]
