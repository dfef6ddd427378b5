"""``%%remote --all-nodes`` output, grouped by node: one display per node in a kernel, sections elsewhere."""
from __future__ import annotations

import contextlib

from .cell_output import OutputBlock


def node_blocks(shell, router, node_ids: list):
    """Per-node output groups: live displays in a Jupyter kernel, printed sections in a terminal."""
    if router is None:
        return PrintedGroups(shell)
    return DisplayedGroups(shell, router, node_ids)


def _header(node_id: str) -> str:
    return f"── node {node_id[:12]} ──"


def _footer(shell, result, error) -> str:
    if error is not None:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if not result.has_last:
        return "done"
    text = shell.display_formatter.format(result.last, include=("text/plain",))[0].get("text/plain", "")
    return f"Out: {text}"


class DisplayedGroups:
    """A display per node, shown before the tasks start; their output lines go into it live."""

    def __init__(self, shell, router, node_ids: list):
        self.shell, self.router = shell, router
        self.blocks = {n: OutputBlock(router.io, _header(n)).show() for n in node_ids}

    def printing_into(self, node_id: str):
        return self.router.redirect_to(self.blocks[node_id])

    def finish(self, node_id: str, result, error) -> None:
        self.blocks[node_id].finish(_footer(self.shell, result, error))


class PrintedGroups:
    """Outside a kernel task output streams as usual; each node's outcome is printed at the end."""

    def __init__(self, shell):
        self.shell = shell

    def printing_into(self, node_id: str):
        return contextlib.nullcontext()

    def finish(self, node_id: str, result, error) -> None:
        print(f"{_header(node_id)}\n{_footer(self.shell, result, error)}")
