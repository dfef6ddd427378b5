"""The timeline drawn with Bokeh: a task stream per node and worker, bars coloured by function."""
from __future__ import annotations

from bokeh.models import DataRange1d, FactorRange, HoverTool
from bokeh.plotting import figure

from .base import View

TOOLTIPS = [("function", "@name"), ("state", "@state"), ("node · worker", "@lane"), ("duration", "@duration")]
FOLLOW_MS = 60_000


class TimelineView(View):
    title = "Timeline (task stream per worker)"
    key = "timeline"


    def build(self):
        self.lanes = FactorRange(factors=[])
        plot = figure(title=self.title, height=300, sizing_mode="stretch_width", toolbar_location="above",
                      tools="xpan,xwheel_zoom,box_zoom,reset,save", x_axis_type="datetime", y_range=self.lanes,
                      x_range=DataRange1d(follow="end", follow_interval=FOLLOW_MS, range_padding=0.02),
                      name="timeline")
        bars = plot.hbar(y="lane", left="start", right="end", height=0.8, source=self.sources["tasks"],
                         fill_color="color", fill_alpha="alpha", line_color="outline")
        plot.add_tools(HoverTool(renderers=[bars], tooltips=TOOLTIPS))
        plot.yaxis.major_label_text_font_size = "8pt"
        return plot

    def apply_props(self, props):
        if "lanes" in props:
            self.lanes.factors = list(reversed(props["lanes"]))  # first worker on top
