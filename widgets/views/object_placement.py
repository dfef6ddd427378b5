"""Object placement drawn with Bokeh: per node, store use against capacity, and one cell per object copy."""
from __future__ import annotations

from bokeh.layouts import column
from bokeh.models import FactorRange, FixedTicker, HoverTool, Range1d, Span
from bokeh.plotting import figure
from bokeh.transform import dodge, factor_cmap

from ..models.object_placement import FREED, PRIMARY, SECONDARY, SPILLED
from .base import View

COLORS = {PRIMARY: "#3182bd", SECONDARY: "#9ecae1", SPILLED: "#e6550d", FREED: "#ffffff"}
CELL_TOOLTIPS = [("object", "@object (@category, on @node)"), ("made by", "@task"), ("size", "@bytes")]
STORE_TOOLTIPS = [("node", "@node"), ("held", "@label"), ("store in use", "@used_pct{0.0}% (allocator)")]


class ObjectPlacementView(View):
    title = "Object placement"
    key = "object_placement"


    def build(self):
        return column(self._store_plot(), self._cell_plot(), sizing_mode="stretch_width", name="object_placement")

    def _store_plot(self):
        self.store_nodes = FactorRange(factors=[])
        plot = figure(title=f"{self.title}: store use per node (% of capacity)", height=150,
                      sizing_mode="stretch_width", y_range=self.store_nodes, x_range=Range1d(0, 105),
                      toolbar_location=None, tools="")
        source = self.sources["stores"]
        bars = [plot.hbar(y="node", left=0, right="primary_pct", height=0.4, source=source, color=COLORS[PRIMARY],
                          legend_label="primary"),
                plot.hbar(y="node", left="primary_pct", right="secondary_end", height=0.4, source=source,
                          color=COLORS[SECONDARY], legend_label="secondary"),
                plot.hbar(y=dodge("node", -0.3, range=self.store_nodes), left=0, right="spilled_pct", height=0.12,
                          source=source, color=COLORS[SPILLED], legend_label="spilled (on disk)")]
        plot.text(x=1, y=dodge("node", 0.34, range=self.store_nodes), text="label", source=source,
                  text_font_size="8pt", text_baseline="middle")
        plot.add_layout(Span(location=100, dimension="height", line_dash="dashed", line_color="#636363"))
        plot.add_tools(HoverTool(renderers=bars, tooltips=STORE_TOOLTIPS))
        plot.legend.location = "bottom_right"
        plot.legend.label_text_font_size = "8pt"
        plot.legend.orientation = "horizontal"
        return plot

    def _cell_plot(self):
        plot = figure(title="objects held (one cell per copy; hover for the task that made it)", height=220,
                      sizing_mode="stretch_width", match_aspect=True,  # square cells, the grid fit to the plot
                      toolbar_location="above", tools="pan,wheel_zoom,reset")
        plot.xaxis.visible = False
        plot.xgrid.visible = plot.ygrid.visible = False
        self.cell_axis = plot.yaxis[0]
        self.cell_axis.ticker = FixedTicker(ticks=[])
        plot.rect("grid_x", "grid_y", "grid_width", "grid_height", source=self.sources["stores"],
                  fill_color="#f7f7f7", line_color="#e0e0e0")  # each node's places, taken or not
        cells = plot.rect("x", "y", width="size", height="size", source=self.sources["cells"],
                          fill_color=factor_cmap("category", list(COLORS.values()), list(COLORS)),
                          fill_alpha="alpha", line_alpha=0.0)
        transfers = self.sources["transfers"]
        plot.segment("x0", "y0", "x1", "y1", source=transfers, line_alpha="alpha", line_width=2,
                     line_color="#31a354")
        plot.scatter("x1", "y1", source=transfers, marker="circle", size=8, fill_alpha="alpha",
                     line_alpha=0.0, color="#31a354")  # the receiving end
        plot.add_tools(HoverTool(renderers=[cells], tooltips=CELL_TOOLTIPS))
        return plot

    def apply_props(self, props):
        if "nodes" in props:
            self.store_nodes.factors = list(reversed(props["nodes"]))
        if "bands" in props:
            self.cell_axis.ticker = FixedTicker(ticks=sorted(props["bands"]))
            self.cell_axis.major_label_overrides = {float(y): label for y, label in props["bands"].items()}
