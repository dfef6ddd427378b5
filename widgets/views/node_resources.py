"""Node resources drawn with Bokeh: CPU per core, memory, store and GPU gauges, and a rolling history."""
from __future__ import annotations

import itertools
import math

from bokeh.layouts import column, row
from bokeh.models import FactorRange, GlyphRenderer, HoverTool, Line, Range1d, SingleIntervalTicker
from bokeh.plotting import figure
from bokeh.transform import linear_cmap

from .base import View

METRICS = (("cpu", "CPU (mean of cores)", "#3182bd"), ("memory", "memory", "#31a354"),
           ("store", "object store", "#756bb1"), ("gpu", "GPU (mean)", "#e6550d"))
CORE_PALETTE = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")


class NodeResourcesView(View):
    title = "Node resources"
    key = "node_resources"


    def build(self):
        self._dashes = itertools.cycle(("solid", "dashed", "dotted", "dotdash", "dashdot"))
        self.history = self._history_plot()
        return column(row(self._core_plot(), self._gauge_plot(), sizing_mode="stretch_width"), self.history,
                      sizing_mode="stretch_width", name="node_resources")

    def _core_plot(self):
        self.core_nodes = FactorRange(factors=[])
        plot = figure(title="CPU per core (%)", height=170, sizing_mode="stretch_width",
                      y_range=self.core_nodes, toolbar_location=None, tools="", x_axis_label="core")
        cells = plot.rect(x="core", y="node", width=0.92, height=0.85, source=self.sources["cores"],
                          fill_color=linear_cmap("percent", CORE_PALETTE, 0, 100), line_color="#bdbdbd")
        plot.add_tools(HoverTool(renderers=[cells], tooltips=[("node", "@node"), ("", "@text")]))
        plot.xgrid.visible = plot.ygrid.visible = False
        plot.xaxis.ticker = SingleIntervalTicker(interval=1, num_minor_ticks=0)
        return plot

    def _gauge_plot(self):
        self.gauge_rows = FactorRange(factors=[])
        plot = figure(title="memory, store, GPUs (%)", height=170, sizing_mode="stretch_width",
                      y_range=self.gauge_rows, x_range=Range1d(0, 100), toolbar_location=None, tools="")
        source = self.sources["gauges"]
        bars = plot.hbar(y="factor", right="value", left=0, height=0.7, source=source, color="color")
        plot.text(x=1, y="factor", text="text", source=source, text_font_size="8pt", text_baseline="middle")
        plot.add_tools(HoverTool(renderers=[bars], tooltips=[("", "@text")]))
        plot.yaxis.major_label_text_font_size = "8pt"
        return plot

    def _history_plot(self):
        plot = figure(title="history (%)", height=170, sizing_mode="stretch_width", x_axis_type="datetime",
                      y_range=Range1d(0, 105), toolbar_location=None, tools="")
        for _, label, color in METRICS:
            plot.line([math.nan], [math.nan], color=color, legend_label=label)  # a legend swatch only
        plot.legend.location = "top_left"
        plot.legend.orientation = "horizontal"
        plot.legend.label_text_font_size = "8pt"
        return plot

    def source_added(self, name, source):
        """A new node's history: one line per metric, dashed differently per node."""
        dash = next(self._dashes)
        node = name.split(":", 1)[1][:8]
        lines = [GlyphRenderer(data_source=source, glyph=Line(x="time", y=metric, line_color=color, line_dash=dash))
                 for metric, _, color in METRICS]
        # One change each to the renderers and the tools: every change makes Bokeh walk the whole document.
        self.history.renderers.extend(lines)
        self.history.toolbar.tools.append(HoverTool(renderers=lines, tooltips=[
            ("node", node), ("CPU", "@cpu{0}%"), ("memory", "@memory{0}%"), ("store", "@store{0}%"),
            ("GPU", "@gpu{0}%")]))

    def apply_props(self, props):
        if "nodes" in props:
            self.core_nodes.factors = list(reversed(props["nodes"]))
        if "gauge_factors" in props:
            self.gauge_rows.factors = [tuple(f) for f in reversed(props["gauge_factors"])]
