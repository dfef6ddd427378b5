"""``%nebula status``: nodes and resources, and what this kernel keeps alive (and which name holds it)."""
from __future__ import annotations

import nebula
import nebula.state

from .tables import esc, resource_text, short_id, size, table

MAX_OBJECT_ROWS = 20


def holders_of_refs(user_ns: dict, hidden: dict) -> dict:
    """object id -> names that keep it alive: variables, and ``Out[n]`` (IPython's output cache)."""
    found: dict = {}
    named = [(name, value) for name, value in user_ns.items() if _is_user_variable(name, value, hidden)]
    named += [(f"Out[{n}]", value) for n, value in sorted((user_ns.get("Out") or {}).items())]
    for name, value in named:
        for ref in _refs_in(value):
            found.setdefault(ref.hex(), []).append(name)
    return found


def _is_user_variable(name: str, value, hidden: dict) -> bool:
    cache_alias = name in ("_", "__", "___", "Out", "_oh") or (name[:1] == "_" and name[1:].isdigit())
    return not cache_alias and not (name in hidden and hidden[name] is value)


def _refs_in(value) -> list:
    """ObjectRefs in ``value`` itself or one level down in a list, tuple, set or dict."""
    if isinstance(value, nebula.ObjectRef):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)) and len(value) <= 100_000:
        return [v for v in value if isinstance(v, nebula.ObjectRef)]
    return []


class ClusterStatus:
    """A snapshot of the cluster as this kernel sees it; rich HTML in a notebook, text elsewhere."""

    def __init__(self, snapshot, holders: dict):
        self.nodes = [dict(n) for n in snapshot.nodes]
        self.actors = [dict(a) for a in snapshot.actors]
        self.tasks_by_state = dict(snapshot.tasks_by_state)
        self.kept = sorted((dict(o) for o in snapshot.local_objects if o.get("local_refs", 1) > 0),
                           key=lambda o: -o.get("size", 0))
        self.holders = holders

    @property
    def kept_bytes(self) -> int:
        return sum(o.get("size", 0) for o in self.kept)

    def _repr_html_(self) -> str:
        return "".join([self._nodes_html(), self._summary_html(), self._objects_html()])

    def _nodes_html(self) -> str:
        rows = [[short_id(n["node_id"]), "alive" if n.get("alive") else "<b>dead</b>",
                 esc(resource_text(n.get("resources_total", {}))), esc(resource_text(n.get("resources_available", {}))),
                 f"{size(n.get('store', {}).get('used', 0))} / {size(n.get('store', {}).get('capacity', 0))}"]
                for n in self.nodes]
        return table(["node", "state", "resources", "available", "object store used"], rows,
                     f"Nebula cluster: {len(self.nodes)} node(s)")

    def _summary_html(self) -> str:
        tasks = ", ".join(f"{state.lower()} {count}" for state, count in sorted(self.tasks_by_state.items())) or "none"
        alive = sum(1 for a in self.actors if a.get("state") != "DEAD")
        return (f"<div style='font-size:12px'>Tasks of this kernel: {esc(tasks)}. Actors alive: {alive}. "
                f"This kernel keeps <b>{size(self.kept_bytes)}</b> alive in {len(self.kept)} object(s).</div>")

    def _objects_html(self) -> str:
        if not self.kept:
            return ""
        rows = [[short_id(o["object_id"]), size(o.get("size")), esc(o.get("state", "")),
                 "object store" if o.get("in_store") else "inline (this kernel)",
                 esc(", ".join(self._holder_text(o["object_id"])))] for o in self.kept[:MAX_OBJECT_ROWS]]
        more = len(self.kept) - MAX_OBJECT_ROWS
        note = f"<div style='font-size:12px'>... and {more} more</div>" if more > 0 else ""
        hint = ("<div style='font-size:12px;color:#666'>Objects held by Out[n] stay alive as long as IPython's "
                "output cache keeps them: <code>%reset -f out</code> or <code>del Out[n]</code> frees them.</div>")
        return table(["object", "size", "state", "where", "held by"], rows, "Largest objects this kernel keeps alive") \
            + note + (hint if any("Out[" in h for o in self.kept for h in self._holder_text(o["object_id"])) else "")

    def _holder_text(self, object_id: str) -> list:
        return self.holders.get(object_id, ["(a ref not bound to a name: inside an object or a pending call)"])

    def __repr__(self) -> str:
        lines = [f"Nebula cluster: {len(self.nodes)} node(s)"]
        for n in self.nodes:
            lines.append(f"  node {n['node_id'][:8]} {'alive' if n.get('alive') else 'dead'}: "
                         f"{resource_text(n.get('resources_total', {}))} "
                         f"(available: {resource_text(n.get('resources_available', {}))})")
        lines.append(f"This kernel keeps {size(self.kept_bytes)} alive in {len(self.kept)} object(s)")
        for o in self.kept[:MAX_OBJECT_ROWS]:
            lines.append(f"  {o['object_id'][:8]} {size(o.get('size'))} held by {', '.join(self._holder_text(o['object_id']))}")
        return "\n".join(lines)


def cluster_status(user_ns: dict, hidden: dict) -> ClusterStatus:
    return ClusterStatus(nebula.state.snapshot(), holders_of_refs(user_ns, hidden))
