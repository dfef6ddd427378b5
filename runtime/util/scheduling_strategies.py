"""Scheduling strategies: ``"DEFAULT"``, ``"SPREAD"`` and ``NodeAffinitySchedulingStrategy``."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on ``node_id``; with ``soft=True`` run elsewhere when that node is gone or full."""

    node_id: str
    soft: bool = False
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False


class PlacementGroupSchedulingStrategy:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Nebula does not support placement groups yet")
