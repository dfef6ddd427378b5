"""Small HTML building blocks shared by the reprs and ``%nebula status``: tables, sizes, short ids."""
from __future__ import annotations

import html

STYLE = "border-collapse:collapse;font-size:12px;margin:2px 0"
CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


def esc(value) -> str:
    return html.escape(str(value))


def table(header: list, rows: list, caption: str = "") -> str:
    head = "".join(f"<th style='{CELL}'>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='{CELL}'>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left;font-weight:bold'>{esc(caption)}</caption>" if caption else ""
    return f"<table style='{STYLE}'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def short_id(value: str, length: int = 8) -> str:
    """An id cut to ``length`` characters, with the full id as a tooltip."""
    return f"<code title='{esc(value)}'>{esc(value[:length])}</code>"


def size(num_bytes) -> str:
    value = float(num_bytes or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def resource_text(resources: dict) -> str:
    """CPU/GPU counts as numbers, memory-like amounts as sizes."""
    parts = []
    for name, amount in sorted(resources.items()):
        shown = size(amount) if "memory" in name else f"{amount:g}"
        parts.append(f"{name} {shown}")
    return ", ".join(parts)
