"""nebula.kernel_ext: Nebula in Jupyter: ``%load_ext nebula`` (IPython magics, reprs, cell output) and
the Jupyter server extension (the cluster that the server's kernels share, and its REST API).

Importing this package loads no notebook library; workers import ``cell_runner`` from it.
"""
from __future__ import annotations

_loaded: dict = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext nebula``: register ``%%remote``, ``%nebula``, reprs, output routing, progress bars."""
    from .extension import KernelExtension
    from .shipping import ignore_modules_loaded_so_far
    ignore_modules_loaded_so_far()
    if id(ipython) not in _loaded:
        _loaded[id(ipython)] = KernelExtension(ipython).load()


def unload_ipython_extension(ipython) -> None:
    extension = _loaded.pop(id(ipython), None)
    if extension is not None:
        extension.unload()


def _jupyter_server_extension_points() -> list:
    from .server_extension import NebulaApp
    return [{"module": "nebula.kernel_ext.server_extension", "app": NebulaApp}]
