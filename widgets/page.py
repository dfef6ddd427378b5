"""The full-page dashboard, served by the Jupyter server itself (same port, same login).

    dashboard_handlers(base_url) -> tornado handler tuples, already joined with ``base_url``:
      <base_url>nebula/dashboard              the page: a Bokeh server session per visit
      <base_url>nebula/dashboard/ws           its websocket (Bokeh's protocol)
      <base_url>nebula/dashboard/static/...   BokehJS
    Mount them with ``web_app.add_handlers(".*$", dashboard_handlers(base_url))``; the
    patterns carry ``base_url`` already, so do not join it again.

Each handler is Bokeh's own (``DocHandler``, ``WSHandler``) under Jupyter's
``JupyterHandler``: a request without Jupyter's token or login cookie is refused (the page
and BokehJS redirect to Jupyter's login, the websocket answers 403). Bokeh's session state
(sessions, keep-alive pings, cleanup of abandoned sessions) lives in a ``BokehTornado`` that
never listens: its handlers see it through ``_BokehApplicationView``. The page's views run
on the server's loop through the document's periodic callback; they show the cluster this
server's kernels share (``join_server_cluster``).
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
import urllib.parse

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.resources import Resources
from bokeh.server.tornado import BokehTornado
from bokeh.server.views.doc_handler import DocHandler
from bokeh.server.views.static_handler import StaticHandler
from bokeh.server.views.ws import WSHandler
from bokeh.settings import settings as bokeh_settings
from jupyter_server.base.handlers import AuthenticatedFileHandler, JupyterHandler
from tornado import web
from tornado.ioloop import IOLoop

import nebula

from .board import Board
from .views import NodeResourcesView, ObjectPlacementView, TaskGraphView, TimelineView

log = logging.getLogger("nebula.widgets")
PAGE_PATH = "nebula/dashboard"
ADDRESS_ENV = "NEBULA_ADDRESS"
UPDATE_PERIOD_MS = 200
NOT_CONNECTED = ("This Jupyter server has no Nebula cluster yet (with the Nebula server extension, one starts "
                 "with the first kernel); the views fill in once it has.")
# What Bokeh's handlers read from their BokehTornado; everything else comes from Jupyter's app.
BOKEH_ATTRIBUTES = frozenset({
    "resources", "secret_key", "sign_sessions", "generate_session_ids", "include_headers", "exclude_headers",
    "include_cookies", "exclude_cookies", "session_token_expiration", "websocket_origins", "io_loop",
    "new_connection", "client_lost", "auth_provider", "prefix"})
_servers: dict[str, DashboardServer] = {}
_joining = threading.Lock()


def dashboard_handlers(base_url: str = "/") -> list[tuple]:
    """Tornado handlers serving the dashboard page at ``<base_url>nebula/dashboard`` (see the module docstring)."""
    server = _servers.get(base_url) or _servers.setdefault(base_url, DashboardServer(base_url))
    prefix = server.prefix
    context = {"server": server}
    return [(prefix + "/?", DashboardPageHandler, context),
            (prefix + "/ws", DashboardSocketHandler, context),
            (prefix + "/static/(.*)", AuthenticatedFileHandler, {"path": bokeh_settings.bokehjs_path()})]


def stop_dashboards() -> None:
    """Stop the page's Bokeh housekeeping (for the server extension's shutdown)."""
    for server in list(_servers.values()):
        server.stop()


def make_document(doc) -> None:
    """One visit's document: the four views of the whole cluster, updated by a periodic callback."""
    board = Board([TaskGraphView(), ObjectPlacementView(), NodeResourcesView(), TimelineView()], switch=False,
                  title="Nebula dashboard", not_connected=NOT_CONNECTED)
    join_server_cluster()
    board.prime()
    doc.title = "Nebula dashboard"
    doc.add_root(board.layout)

    def update() -> None:
        join_server_cluster()
        board.tick()

    doc.add_periodic_callback(update, UPDATE_PERIOD_MS)
    doc.on_session_destroyed(lambda _context: board.close())


def join_server_cluster() -> None:
    """Connect this server process to the cluster its kernels share, once there is one (off the loop).

    The server extension exports the cluster's address (NEBULA_ADDRESS) for the kernels it
    starts; joining it here is a plain ``nebula.init()``, which never starts a cluster then.
    """
    if nebula.is_initialized() or not os.environ.get(ADDRESS_ENV) or not _joining.acquire(blocking=False):
        return
    threading.Thread(target=_join, name="nebula-dashboard-join", daemon=True).start()


def _join() -> None:
    try:
        nebula.init()
    except Exception:  # the page keeps saying it is not connected, and tries again
        log.warning("the dashboard could not join the cluster at %s", os.environ.get(ADDRESS_ENV), exc_info=True)
    finally:
        _joining.release()


class DashboardServer:
    """Bokeh's server-side state for the page, on the Jupyter server's loop, without a port of its own."""

    def __init__(self, base_url: str):
        self.prefix = urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", PAGE_PATH)
        self.tornado = BokehTornado({"/": Application(FunctionHandler(make_document))}, prefix=self.prefix,
                                    secret_key=os.urandom(32).hex(), sign_sessions=True,
                                    include_headers=[], include_cookies=[])
        self.context = self.tornado.applications["/"]
        self._started = False

    def ensure_started(self) -> None:
        """Start keep-alive pings and session cleanup on the running loop (at the first request)."""
        if not self._started:
            self._started = True
            self.tornado.initialize(IOLoop.current())
            self.tornado.start()

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.tornado.stop()

    def resources(self, absolute_url=None) -> Resources:
        """BokehJS from this server's static route, whatever BOKEH_RESOURCES says (the page stays small)."""
        return Resources(mode="server", root_url=self.prefix + "/", path_versioner=StaticHandler.append_version)


class _BokehApplicationView:
    """Jupyter's tornado application as Bokeh's handlers expect to see their BokehTornado."""

    def __init__(self, jupyter_app, server: DashboardServer):
        self._jupyter_app, self._server = jupyter_app, server

    def __getattr__(self, name: str):
        if name == "resources":
            return self._server.resources
        if name in BOKEH_ATTRIBUTES:
            return getattr(self._server.tornado, name)
        return getattr(self._jupyter_app, name)


class _JupyterAuthenticated:
    """Put first in a Bokeh handler's bases (with JupyterHandler next): Jupyter decides who may come in."""

    def __init__(self, application, request, *, server: DashboardServer, **kwargs):
        server.ensure_started()
        super().__init__(_BokehApplicationView(application, server), request, application_context=server.context,
                         bokeh_websocket_path=server.prefix + "/ws", **kwargs)

    def get_login_url(self) -> str:
        return web.RequestHandler.get_login_url(self)  # Jupyter's login page, not Bokeh's auth provider's

    async def _jupyter_prepare(self, **kwargs) -> None:
        result = JupyterHandler.prepare(self, **kwargs)
        while inspect.isawaitable(result):  # Bokeh's own prepare, chained after Jupyter's
            result = await result


class DashboardPageHandler(_JupyterAuthenticated, JupyterHandler, DocHandler):
    async def prepare(self) -> None:
        await self._jupyter_prepare()

    @web.authenticated
    async def get(self, *args, **kwargs):
        if self.get_argument("token", None) is not None:
            # Logged in by token (the login cookie is set now): reload without it, so the token
            # stays out of the page and the session Bokeh keeps for it.
            self.redirect(self.request.path)
            return
        await DocHandler.get(self, *args, **kwargs)


class DashboardSocketHandler(_JupyterAuthenticated, JupyterHandler, WSHandler):
    async def prepare(self) -> None:
        await self._jupyter_prepare(_redirect_to_login=False)
        # Jupyter lets through what its handlers do not mark as needing a login
        # (allow_unauthenticated_access); this one always does, with a 403, not a redirect.
        if self.current_user is None:
            raise web.HTTPError(403, "log in to Jupyter first (its token or login cookie)")
