"""The Jupyter server extension: one Nebula cluster per server, shared by its kernels, and its REST API.

Configuration (``jupyter_server_config.py`` or ``--NebulaApp.<name>=...``)::

    c.NebulaApp.autostart = "lazy"   # True: with the server; "lazy": on first use; False: on POST cluster/start
    c.NebulaApp.num_cpus = None      # CPUs of each local node (default: all)
    c.NebulaApp.num_nodes = 1        # local nodes (each with num_cpus); POST nebula/api/cluster/scale changes it
    c.NebulaApp.address = ""         # attach to this cluster instead ("auto": this user's `nebula start`)
    c.NebulaApp.token_file = ""      # its token file (default: $NEBULA_TOKEN_FILE)

How kernels find the cluster: the server puts ``NEBULA_ADDRESS`` and ``NEBULA_TOKEN_FILE`` in
its own environment, which every kernel it starts inherits, so a plain ``nebula.init()`` in a
kernel joins. "First use" is the first kernel start (the kernel manager's ``start_kernel`` is
wrapped to start the cluster just before the kernel process is spawned) or the first REST
call. The kernel start is the one moment the server controls that precedes any
``nebula.init()`` in a kernel: the environment must be right before the kernel exists, and the
runtime knows nothing of Jupyter, so a kernel cannot ask the server later. It costs the first
kernel about half a second, once. The cluster stops with the server (SIGTERM,
``POST /api/shutdown``), and dies with it on SIGKILL (parent-death signal).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, Union, default, validate

from .cluster_keeper import ADDRESS_ENV, MAX_LOCAL_NODES, ClusterKeeper, exported_env
from .reprs import DASHBOARD_URL_ENV
from .rest_api import HANDLERS

DASHBOARD_PATH = "nebula/dashboard"


class NebulaApp(ExtensionApp):
    """Runs (or attaches to) the Nebula cluster this server's kernels share; see the module docstring."""

    name = "nebula"
    load_other_extensions = True

    autostart = Union([Bool(), Enum(["lazy"])], default_value="lazy", config=True,
                      help='Start the cluster with the server (True), on first use ("lazy": first kernel '
                           'start or REST call), or only on POST nebula/api/cluster/start (False)')
    num_cpus = Float(None, allow_none=True, config=True, help="CPUs of each local node (default: all)")
    num_nodes = Int(1, config=True, help="local node agents to start (each with num_cpus CPUs); "
                                         "POST nebula/api/cluster/scale changes it while the server runs")
    address = Unicode("", config=True, help="attach to this cluster instead of starting one ('auto': this "
                                            "user's `nebula start` cluster); default: $NEBULA_ADDRESS")
    token_file = Unicode("", config=True, help="token file of the cluster at `address` (default: $NEBULA_TOKEN_FILE)")

    @default("address")
    def _default_address(self):
        return os.environ.get(ADDRESS_ENV, "")

    @validate("num_nodes")
    def _valid_num_nodes(self, proposal):
        if not 1 <= proposal["value"] <= MAX_LOCAL_NODES:
            raise TraitError(f"NebulaApp.num_nodes must be from 1 to {MAX_LOCAL_NODES}, got {proposal['value']}")
        return proposal["value"]

    # ---- server lifecycle -------------------------------------------------------------------

    def initialize_settings(self):
        self.keeper = ClusterKeeper(num_cpus=self.num_cpus, num_nodes=self.num_nodes, address=self.address,
                                    token_file=self.token_file, log=self.log)
        self.stopped_by_request = False
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nebula-jupyter")
        os.environ[DASHBOARD_URL_ENV] = url_path_join(self.serverapp.base_url, DASHBOARD_PATH)
        if self.keeper.attached or self.autostart is True:
            self.keeper.start()
        else:
            self._start_cluster_before_first_kernel()

    def initialize_handlers(self):
        self.handlers.extend(HANDLERS)
        self.serverapp.web_app.add_handlers(".*$", _dashboard_handlers(self.serverapp.base_url, self.log))

    async def stop_extension(self):
        await self.run_blocking(self.keeper.close)
        self.pool.shutdown(wait=False)

    # ---- used by the handlers ---------------------------------------------------------------------

    @property
    def starts_on_first_use(self) -> bool:
        return self.autostart == "lazy" and not self.stopped_by_request

    async def run_blocking(self, method, *args):
        """Run a blocking keeper call on the extension's one worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, method, *args)

    async def start_cluster(self) -> None:
        """Start the cluster if it is not running; kernels that restart later get its address."""
        await self.run_blocking(self.keeper.start)
        manager = self.serverapp.kernel_manager
        if hasattr(manager, "update_env"):  # jupyter_client >= 8.5; a restart reuses the start environment
            for kernel_id in manager.list_kernel_ids():
                manager.update_env(kernel_id=kernel_id, env=exported_env())

    def _start_cluster_before_first_kernel(self) -> None:
        # The kernel manager spawns a kernel with the server's os.environ: exporting the cluster's
        # address there just before the first kernel starts is what lets it join with plain init().
        manager = self.serverapp.kernel_manager
        start_kernel = manager.start_kernel

        async def start_kernel_in_cluster(*args, **kwargs):
            if self.starts_on_first_use and not self.keeper.running:
                await self.start_cluster()
                if kwargs.get("env") is not None:  # the session manager copied os.environ already
                    kwargs["env"] = {**kwargs["env"], **exported_env()}
            return await start_kernel(*args, **kwargs)

        manager.start_kernel = start_kernel_in_cluster


def _dashboard_handlers(base_url: str, log) -> list:
    """The full-page dashboard's handlers from nebula.widgets.page, when that module is there."""
    try:
        from nebula.widgets.page import dashboard_handlers
    except ImportError as exc:
        log.info("Nebula: no full-page dashboard (%s)", exc)
        return []
    return mounted(dashboard_handlers(base_url), url_path_join(base_url, DASHBOARD_PATH))


def mounted(handlers, mount: str) -> list:
    """Handler tuples with every pattern under ``mount``: patterns already there are kept, others
    (relative to the dashboard) are joined onto it."""
    prefix = mount.rstrip("/")
    return [(h[0] if h[0].startswith(prefix) else url_path_join(prefix, h[0]), *h[1:]) for h in handlers]
