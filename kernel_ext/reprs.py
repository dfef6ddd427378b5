"""Rich (HTML) reprs for ObjectRef, actor handles and the dict ``nebula.init()`` returns.

Registered with IPython's display formatter (``for_type``), so the runtime stays free of
notebook code. A repr never starts a cluster: without a connection it shows what it knows.
"""
from __future__ import annotations

import os

import nebula
import nebula.state
from nebula.actor import ActorHandle
from nebula.api import ClusterInfo

from .tables import esc, resource_text, short_id, size, table

DASHBOARD_URL_ENV = "NEBULA_DASHBOARD_URL"


def register(shell) -> None:
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(nebula.ObjectRef, object_ref_html)
    formatter.for_type(ActorHandle, actor_html)
    formatter.for_type(ClusterInfo, cluster_info_html)


def unregister(shell) -> None:
    formatter = shell.display_formatter.formatters["text/html"]
    for cls in (nebula.ObjectRef, ActorHandle, ClusterInfo):
        formatter.type_printers.pop(cls, None)


def _snapshot():
    if not nebula.is_initialized():
        return None
    try:
        return nebula.state.snapshot()
    except Exception:  # noqa: BLE001 - a repr must not raise because the cluster went away
        return None


# ---- ObjectRef ----------------------------------------------------------------------------------

def object_ref_facts(ref, snapshot) -> dict:
    """state, size and where of ``ref``, from this kernel's own objects or the node's store."""
    if snapshot is None:
        return {"state": "unknown (not connected)", "size": None, "where": ""}
    for row in snapshot.local_objects:
        if row["object_id"] == ref.hex():
            where = "object store" if row.get("in_store") else "inline in this kernel"
            return {"state": row["state"], "size": row.get("size"), "where": where}
    for row in snapshot.objects:
        if row["object_id"] == ref.hex():
            where = f"store of node {row['node'][:8]}" + (" (spilled to disk)" if row.get("spilled") else "")
            return {"state": row["state"], "size": row.get("size"), "where": where}
    return {"state": "not found (freed, or owned by another process)", "size": None, "where": ""}


def object_ref_html(ref) -> str:
    facts = object_ref_facts(ref, _snapshot())
    shown = size(facts["size"]) if facts["size"] else "?"
    where = f", {esc(facts['where'])}" if facts["where"] else ""
    return (f"<span style='font-size:12px'><b>ObjectRef</b> {short_id(ref.hex(), 12)} "
            f"({esc(facts['state'])}, {shown}{where})</span>")


# ---- actor handles ------------------------------------------------------------------------------

def actor_html(handle) -> str:
    actor_id = getattr(handle, "_actor_id", "")
    class_name = getattr(handle, "_class_name", "actor")
    snapshot = _snapshot()
    record = next((dict(a) for a in snapshot.actors if a["actor_id"] == actor_id), {}) if snapshot else {}
    facts = [record.get("state", "unknown")]
    facts += [f"name {record['name']!r}"] if record.get("name") else []
    facts += [f"pid {record['pid']}"] if record.get("pid") else []
    facts += ["detached"] if record.get("detached") else []
    facts += [f"restarts {record['restarts']}"] if record.get("restarts") else []
    return (f"<span style='font-size:12px'><b>Actor</b> {esc(class_name)} {short_id(actor_id, 12)} "
            f"({esc(', '.join(facts))})</span>")


# ---- what init() returns ------------------------------------------------------------------------

def cluster_info_html(info) -> str:
    snapshot = _snapshot()
    nodes = [dict(n) for n in snapshot.nodes] if snapshot else []
    rows = [[short_id(n["node_id"]), "alive" if n.get("alive") else "dead",
             esc(resource_text(n.get("resources_total", {})))] for n in nodes]
    kind = "embedded cluster (ends with this kernel)" if info.get("embedded") else "joined cluster"
    return (f"<div style='font-size:12px'><b>Nebula</b> {esc(kind)} at <code>{esc(info.get('address', ''))}</code>"
            f"</div>{table(['node', 'state', 'resources'], rows)}{_dashboard_line()}")


def _dashboard_line() -> str:
    url = os.environ.get(DASHBOARD_URL_ENV)
    if url:
        return f"<div style='font-size:12px'><a href='{esc(url)}' target='_blank'>Open the dashboard</a></div>"
    return "<div style='font-size:12px;color:#666'>Live views: <code>%nebula dashboard</code></div>"
