"""Bokeh views over the view models, and ``Board``: views sharing one feed under a header."""
from __future__ import annotations

from .node_resources import NodeResourcesView
from .object_placement import ObjectPlacementView
from .task_graph import TaskGraphView
from .timeline import TimelineView

__all__ = ["NodeResourcesView", "ObjectPlacementView", "TaskGraphView", "TimelineView"]
