"""``%nebula status | init [ADDRESS] | shutdown | dashboard | timeline FILE``."""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

import nebula

from .status import cluster_status

USAGE = """%nebula status          nodes, resources, and the objects this kernel keeps alive
%nebula init [ADDRESS]  connect (or start an embedded cluster); ADDRESS: 'auto', 'local', unix:... or host:port
%nebula shutdown        disconnect (and stop the embedded cluster, if this kernel started it)
%nebula dashboard       live views of the cluster (nebula.widgets.Dashboard)
%nebula timeline FILE   write this kernel's finished tasks as a Chrome trace (chrome://tracing, Perfetto)"""


@magics_class
class NebulaMagics(Magics):
    """The ``%nebula`` line magic."""

    @line_magic
    def nebula(self, line: str):
        """Cluster commands for this notebook:

        %nebula status | init [ADDRESS] | shutdown | dashboard | timeline FILE
        """
        command, *rest = line.split() or ["help"]
        commands = {"status": self.status, "init": self.init, "shutdown": self.shutdown,
                    "dashboard": self.dashboard, "timeline": self.timeline}
        if command not in commands:
            raise UsageError(f"unknown %nebula command {command!r}; use one of:\n{USAGE}")
        return commands[command](*rest)

    def status(self):
        return cluster_status(self.shell.user_ns, self.shell.user_ns_hidden)

    def init(self, address: str | None = None):
        return nebula.init(address=address)

    def shutdown(self):
        nebula.shutdown()
        print("Nebula: disconnected")

    def dashboard(self):
        try:
            from nebula.widgets import Dashboard
        except ImportError as exc:
            raise UsageError(f"the dashboard needs nebula.widgets and its libraries (bokeh, jupyter_bokeh): {exc}; "
                             "install them with pip install 'nebula[notebook]'") from None
        return Dashboard()

    def timeline(self, filename: str | None = None):
        if not filename:
            raise UsageError("%nebula timeline FILE: name the file to write, e.g. %nebula timeline trace.json")
        count = len(nebula.timeline())
        nebula.timeline(filename)
        print(f"Nebula: wrote {count} task(s) to {filename}; open it in chrome://tracing or https://ui.perfetto.dev")
