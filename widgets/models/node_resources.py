"""The node resources view model: per node, live CPU per core, memory, object store and GPUs, with history.

From each node's TELEMETRY event (about once a second): ``cores`` (one cell per CPU core,
its busy percentage), ``gauges`` (memory, object store, and per GPU its utilisation and
memory, or one row saying the node has no GPU) and ``history:<node id>`` (a rolling series
per node: mean CPU, memory, store and mean GPU utilisation, in percent).
"""
from __future__ import annotations

import math

from .tasks import short
from .update import RowTable, Update

CORE_COLUMNS = ("key", "node", "core", "percent", "text")
GAUGE_COLUMNS = ("key", "factor", "value", "text", "color")
HISTORY_COLUMNS = ("time", "cpu", "memory", "store", "gpu")
MEMORY, STORE, NO_GPU = "memory", "object store", "GPU"
GAUGE_COLORS = {MEMORY: "#6baed6", STORE: "#9e9ac8", "util": "#fd8d3c", "mem": "#fdae6b", NO_GPU: "#d9d9d9"}
NO_GPU_TEXT = "no GPU on this node"


def history_source(node_id: str) -> str:
    return f"history:{node_id}"


class NodeResourcesModel:
    """Feed it ``nebula.state`` events (it reads node events only)."""

    def __init__(self, history: int = 600):
        self.history = history
        self.cores = RowTable(CORE_COLUMNS)
        self.gauges = RowTable(GAUGE_COLUMNS)
        self.series: dict[str, RowTable] = {}     # node id -> its history table
        self.gauge_order: list[tuple] = []        # (node label, metric) in display order
        self._factors_changed = False
        self.latest: dict[str, dict] = {}         # node id -> its last telemetry (for tests and labels)

    def apply(self, events, now: float | None = None) -> Update:
        for event in events:
            if event.kind == "node":
                self._on_node(event)
        update = Update()
        update.add_table("cores", self.cores)
        update.add_table("gauges", self.gauges)
        for node_id, table in self.series.items():
            update.add_table(history_source(node_id), table)
        if self._factors_changed:
            update.props.update(self.props())
            self._factors_changed = False
        return update

    def columns(self) -> dict:
        out = {"cores": self.cores.columns(), "gauges": self.gauges.columns()}
        out.update({history_source(n): t.columns() for n, t in self.series.items()})
        return out

    def props(self) -> dict:
        return {"nodes": [short(n) for n in self.series], "gauge_factors": list(self.gauge_order)}

    def _on_node(self, event) -> None:
        if event.id not in self.series:
            self.series[event.id] = RowTable(HISTORY_COLUMNS, rollover=self.history)
            self._gauge(event.id, MEMORY, 0.0, "memory: waiting for the node's telemetry")
            self._gauge(event.id, STORE, 0.0, "object store: waiting for the node's telemetry")
            self._factors_changed = True
        if event.state == "DEAD":
            self._gauge(event.id, MEMORY, 0.0, "node marked dead: it stopped sending heartbeats")
        if event.state != "TELEMETRY":
            if event.get("store", {}).get("capacity"):
                self._gauge(event.id, STORE, *_store_gauge(event.get("store")))
            return
        self.latest[event.id] = dict(event.data)
        self._cores(event.id, event.get("cpu_percent_per_core") or [])
        self._gauge(event.id, MEMORY, *_memory_gauge(event))
        self._gauge(event.id, STORE, *_store_gauge(event.get("store") or {}))
        self._gpus(event.id, event.get("gpus") or [])
        self.series[event.id].add(None, _history_row(event))

    def _cores(self, node_id: str, percents: list) -> None:
        for core, percent in enumerate(percents):
            key = (node_id, core)
            values = {"percent": percent, "text": f"core {core}: {percent:.0f}%"}
            if key in self.cores:
                self.cores.set(key, **values)
            else:
                self.cores.add(key, {"key": f"{short(node_id)}:{core}", "node": short(node_id), "core": core,
                                     **values})

    def _gpus(self, node_id: str, gpus: list) -> None:
        if not gpus:
            self._gauge(node_id, NO_GPU, 0.0, NO_GPU_TEXT, kind=NO_GPU)
            return
        for gpu in gpus:
            index, name = gpu.get("index", 0), gpu.get("name", "GPU")
            used, total = gpu.get("memory_used", 0), gpu.get("memory_total", 0) or 1
            self._gauge(node_id, f"GPU{index} util", gpu.get("utilization_percent", 0.0),
                        f"GPU{index} {name}: {gpu.get('utilization_percent', 0.0):.0f}% busy", kind="util")
            self._gauge(node_id, f"GPU{index} memory", 100.0 * used / total,
                        f"GPU{index} memory: {_gib(used)} of {_gib(total)}", kind="mem")

    def _gauge(self, node_id: str, metric: str, value: float, text: str, kind: str | None = None) -> None:
        key = (node_id, metric)
        values = {"value": value, "text": text}
        if key in self.gauges:
            self.gauges.set(key, **values)
            return
        factor = (short(node_id), metric)
        self.gauges.add(key, {"key": f"{short(node_id)}:{metric}", "factor": list(factor),
                              "color": GAUGE_COLORS[kind or metric], **values})
        self._insert_factor(factor)

    def _insert_factor(self, factor: tuple) -> None:
        """Keep each node's rows together, in the order they first appeared."""
        same_node = [i for i, f in enumerate(self.gauge_order) if f[0] == factor[0]]
        at = same_node[-1] + 1 if same_node else len(self.gauge_order)
        self.gauge_order.insert(at, factor)
        self._factors_changed = True


def _memory_gauge(event) -> tuple[float, str]:
    used, total = event.get("memory_used", 0), event.get("memory_total", 0)
    return event.get("memory_percent", 0.0), f"memory: {_gib(used)} of {_gib(total)}"


def _store_gauge(store: dict) -> tuple[float, str]:
    used, capacity = store.get("used", 0), store.get("capacity", 0)
    percent = 100.0 * used / capacity if capacity else 0.0
    spilled = f", {store['spilled']} objects spilled" if store.get("spilled") else ""
    return percent, f"object store: {_gib(used)} of {_gib(capacity)} ({store.get('objects', 0)} objects{spilled})"


def _history_row(event) -> dict:
    cores = event.get("cpu_percent_per_core") or [0.0]
    store = event.get("store") or {}
    gpus = event.get("gpus") or []
    return {"time": event.time * 1e3, "cpu": sum(cores) / len(cores), "memory": event.get("memory_percent", 0.0),
            "store": 100.0 * store.get("used", 0) / store["capacity"] if store.get("capacity") else 0.0,
            "gpu": sum(g.get("utilization_percent", 0.0) for g in gpus) / len(gpus) if gpus else math.nan}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
