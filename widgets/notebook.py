"""The notebook widgets: ``Dashboard()`` and the four views alone, as jupyter_bokeh widgets.

Each widget is a ``BokehModel`` whose document belongs to its own ``DocumentThread``; its
view models run in a process of their own (``OffloadedBoard``), so the kernel only draws.
The kernel owns the document; the browser only flips the "this notebook only" switch:

- jupyter_bokeh's browser side echoes back every change the kernel sends (streams, patches,
  new data, axis factors), late: applied in the kernel, an echo would apply a stream twice or
  put back data the kernel has since moved past. So every browser change other than the
  switch is dropped, and the switch is handed to the document's thread.
- A browser view draws the document as it was when the widget was made (jupyter_bokeh's
  ``render_bundle``) and then applies the changes it receives, missing those sent before it
  listened. Sending the same data again would not help (Bokeh sends no change for a value
  equal to the one it has, nor models it already sent). So the widget counts its views
  (ipywidgets' ``_view_count``) and, whenever one appears, makes the document as it is now
  the ``render_bundle`` (the browser draws again from it) and asks its models for everything.
  Until the first view exists it sends no changes at all: each goes as several messages that
  a view must receive from the first, and one made halfway through would garble them.
"""
from __future__ import annotations

import os

from jupyter_bokeh import BokehModel

from .offloaded_board import OffloadedBoard
from .pump import DocumentThread
from .views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView

UPDATE_PERIOD = 0.2


class LiveWidget(BokehModel):
    """A live board in a notebook; ``close()`` stops its updates and its subscription."""

    def __init__(self, views: list, period: float = UPDATE_PERIOD, **kwargs):
        ensure_bokehjs()
        self.board = OffloadedBoard(views, period, per_row=2 if len(views) > 1 else 1)
        super().__init__(self.board.layout, **kwargs)
        self.board.prime()
        self._controls = self.board.browser_controls()
        self._pump = DocumentThread(self.board.tick, period, name=f"nebula-{type(self).__name__}")
        self._pump.start()
        self._view_count = 0  # the browser reports each view it makes (and drops)
        self.observe(self._views_changed, names="_view_count")

    def _sync_model(self, model, content: dict, buffers: list) -> None:
        if self._from_control(content):
            self._pump.call(super()._sync_model, model, content, buffers)

    def _from_control(self, content: dict) -> bool:
        """Whether a browser message sets a control (rather than echoing the kernel's own change)."""
        target = content.get("model")
        return (content.get("event") == "jsevent" and content.get("kind") == "ModelChanged"
                and isinstance(target, dict) and self._controls.get(target.get("id")) == content.get("attr"))

    def _document_patched(self, event) -> None:
        """Send a document change only once a browser view exists. jupyter_bokeh sends each
        change as several messages (header, metadata, content, buffers) that the view's
        receiver joins up in order; a view made while one is on its way would start joining
        halfway and garble the changes after it. The first view draws the whole document
        anyway (``_send_whole_document``)."""
        if self._view_count:
            super()._document_patched(event)

    def _views_changed(self, change) -> None:
        if (change["new"] or 0) > (change["old"] or 0) and self._pump is not None:
            self._pump.call(self._send_whole_document)

    def _send_whole_document(self) -> None:
        """On the document's thread: what a new browser view may have missed, all of it."""
        self.render_bundle = self._model_to_traits(self.board.layout)
        self.board.resync()

    def close(self) -> None:
        pump, self._pump = getattr(self, "_pump", None), None
        if pump is None:
            return  # closed already (or never started)
        pump.stop()
        self.board.close()
        super().close()


class Dashboard(LiveWidget):
    """Task graph, object placement, node resources and timeline of the cluster, live."""

    def __init__(self, period: float = UPDATE_PERIOD, **kwargs):
        super().__init__([TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()], period,
                         **kwargs)


class TaskGraph(LiveWidget):
    """Tasks coloured by state, ObjectRef dependencies as edges (grouped by function past ~2,000 tasks)."""

    def __init__(self, period: float = UPDATE_PERIOD, **kwargs):
        super().__init__([TaskGraphView()], period, **kwargs)


class ObjectPlacement(LiveWidget):
    """Per node, the objects its store holds (primary, secondary, spilled) against its capacity."""

    def __init__(self, period: float = UPDATE_PERIOD, **kwargs):
        super().__init__([ObjectPlacementView()], period, **kwargs)


class NodeResources(LiveWidget):
    """Per node, CPU per core, memory, object store and GPUs, with a rolling history."""

    def __init__(self, period: float = UPDATE_PERIOD, **kwargs):
        super().__init__([NodeResourcesView()], period, **kwargs)


class Timeline(LiveWidget):
    """A task stream per node and worker, coloured by function."""

    def __init__(self, period: float = UPDATE_PERIOD, **kwargs):
        super().__init__([TimelineView()], period, **kwargs)


def ensure_bokehjs() -> None:
    """Put BokehJS in the notebook page, once per kernel, before the first widget is shown.

    jupyter_bokeh draws with the page's BokehJS. Bokeh's default source is a CDN, which
    workshop networks often block, so unless BOKEH_RESOURCES names one, BokehJS comes inline
    (about 8 MB of output, once).
    """
    from bokeh.io import output_notebook
    from bokeh.io.state import curstate
    from bokeh.resources import INLINE
    from IPython import get_ipython
    if get_ipython() is None or curstate().notebook:
        return
    output_notebook(resources=None if os.environ.get("BOKEH_RESOURCES") else INLINE, hide_banner=True)
