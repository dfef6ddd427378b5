"""Module fixtures' clusters: one of a module's own shape, shut down after its last test."""
from __future__ import annotations

import nebula


def private_cluster(**init_args):
    """Generator for a module-scoped fixture: ``yield from private_cluster(num_gpus=2)``."""
    nebula.shutdown()
    yield nebula.init(**init_args)
    nebula.shutdown()
