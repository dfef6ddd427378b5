"""Renders the medians as a Markdown table: one row per metric, one column per system."""

from suite.summary import cell

COLUMNS = ("nebula", "ray", "dask", "pool")


def number(value):
    """A value with about three significant digits, thousands separated; whole counts as such."""
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def text(value):
    return number(value) if isinstance(value, (int, float)) else value


def ratio(cells):
    """nebula/ray as a multiple, when both are numbers."""
    nebula, ray = cells[0], cells[1]
    if isinstance(nebula, (int, float)) and isinstance(ray, (int, float)) and ray:
        return f"{nebula / ray:.2f}x"
    return ""


def row(records, medians, module, metric, available):
    cells = [cell(records, medians.get(metric.key, {}), module, system, available) for system in COLUMNS]
    direction = "higher" if metric.higher_is_better else "lower"
    unit = f"{metric.unit} ({direction} better)"
    return [metric.label, unit, *[text(c) for c in cells], ratio(cells)]


def markdown(rows):
    """A pipe table that also reads well in a terminal."""
    header = ["workload", "unit", *COLUMNS, "nebula/ray"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(pipe_row(cells, widths) for cells in lines)


def pipe_row(cells, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def table(records, medians, modules, available):
    """The whole results table for these workload modules."""
    metrics = [(module, metric) for module in modules for metric in module.METRICS]
    return markdown([row(records, medians, module, metric, available) for module, metric in metrics])
