"""``%load_ext nebula``: magics, reprs, task output routed to its cell, and progress bars, for one shell."""
from __future__ import annotations

import nebula.output

from . import reprs
from .cell_output import CellOutputRouter, KernelIO
from .nebula_magic import NebulaMagics
from .progress import ProgressObserver
from .remote_magic import RemoteMagics
from .shipping import register_local_modules


def in_jupyter_kernel(shell) -> bool:
    return getattr(shell, "kernel", None) is not None and hasattr(shell, "get_parent")


class KernelExtension:
    """Everything ``%load_ext nebula`` hooks into one IPython shell, and how to unhook it."""

    def __init__(self, shell):
        self.shell = shell
        self.router = CellOutputRouter(KernelIO(shell)) if in_jupyter_kernel(shell) else None
        self.progress = ProgressObserver(in_kernel=self.router is not None)
        self.hooks = [("pre_run_cell", self._pre_run_cell), ("post_run_cell", self._post_run_cell)]

    def load(self) -> "KernelExtension":
        self.shell.register_magics(RemoteMagics(self.shell, self.router), NebulaMagics(self.shell))
        reprs.register(self.shell)
        for event, hook in self.hooks:
            self.shell.events.register(event, hook)
        if self.router is not None:
            nebula.output.set_output_sink(self.router.sink, self.router.context)
            self.router.pre_run_cell()  # the cell running %load_ext
        nebula.output.set_wait_observer(self.progress.observe)
        return self

    def unload(self) -> None:
        for event, hook in self.hooks:
            self.shell.events.unregister(event, hook)
        reprs.unregister(self.shell)
        nebula.output.set_output_sink(None)
        nebula.output.set_wait_observer(None)

    def _pre_run_cell(self, *info) -> None:
        register_local_modules()
        if self.router is not None:
            self.router.pre_run_cell()

    def _post_run_cell(self, *result) -> None:
        self.progress.finish()
        if self.router is not None:
            self.router.post_run_cell()
