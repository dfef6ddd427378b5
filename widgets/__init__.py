"""Live views of a Nebula cluster for notebooks and the dashboard page, fed by ``nebula.state``.

    from nebula.widgets import Dashboard
    Dashboard()          # task graph, object placement, node resources, timeline

``TaskGraph()``, ``ObjectPlacement()``, ``NodeResources()`` and ``Timeline()`` show one view
each. The view models (``nebula.widgets.models``) import no notebook library.
"""
from __future__ import annotations

__all__ = ["Dashboard", "TaskGraph", "ObjectPlacement", "NodeResources", "Timeline"]


def __getattr__(name: str):
    if name in __all__:
        from . import notebook
        return getattr(notebook, name)
    raise AttributeError(f"module 'nebula.widgets' has no attribute {name!r}")
