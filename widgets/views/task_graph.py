"""The task graph drawn with Bokeh: tasks as markers coloured by state, ObjectRef dependencies as edges."""
from __future__ import annotations

import math

from bokeh.models import HoverTool, Legend, LegendItem, SingleIntervalTicker
from bokeh.plotting import figure
from bokeh.transform import factor_cmap, factor_mark

from ..models.task_graph import KINDS
from ..models.tasks import STATE_COLORS, STATES
from .base import View

MARKERS = ("circle", "square", "hex", "diamond")
NOWHERE = ([math.nan], [math.nan])  # a legend swatch's one point, never drawn on the plot
TOOLTIPS = [("function", "@name (@kind)"), ("state", "@state @counts"), ("node", "@node"), ("worker", "@worker"),
            ("duration", "@duration"), ("error", "@error")]


class TaskGraphView(View):
    title = "Task graph"
    key = "task_graph"


    def build(self):
        plot = figure(title=self.title, height=340, sizing_mode="stretch_width", toolbar_location="above",
                      tools="pan,wheel_zoom,box_zoom,reset,save", x_axis_label="dependency depth",
                      name="task_graph")
        plot.yaxis.visible = False
        plot.ygrid.visible = False
        plot.xaxis.ticker = SingleIntervalTicker(interval=1)
        plot.segment("x0", "y0", "x1", "y1", source=self.sources["edges"], line_color="#9e9e9e", line_alpha=0.6)
        nodes = plot.scatter("x", "y", source=self.sources["tasks"], size="size",
                             marker=factor_mark("kind", MARKERS, KINDS),
                             fill_color=factor_cmap("state", STATE_COLORS, STATES), line_color="#424242",
                             line_width=0.5)
        plot.add_tools(HoverTool(renderers=[nodes], tooltips=TOOLTIPS))
        plot.add_layout(_legend(plot), "right")
        return plot


def _legend(plot) -> Legend:
    """A fixed key: one colour per state, one marker per kind of node (drawn or not yet)."""
    items = [LegendItem(label=state, renderers=[plot.scatter(*NOWHERE, marker="circle", size=9, color=color)])
             for state, color in zip(STATES, STATE_COLORS)]
    items += [LegendItem(label=kind, renderers=[plot.scatter(*NOWHERE, marker=marker, size=9, fill_color="white",
                                                             line_color="#424242")])
              for kind, marker in zip(KINDS, MARKERS)]
    return Legend(items=items, label_text_font_size="8pt", glyph_height=12, spacing=0, padding=4)
