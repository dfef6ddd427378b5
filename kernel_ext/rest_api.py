"""The REST API under ``<base_url>/nebula/api/``, behind jupyter_server's authentication.

    GET  cluster           the cluster: nodes, resources, running tasks, workers, actors, objects
                           (503 when the cluster does not answer)
    POST cluster/start     start the server's cluster (no-op when running)
    POST cluster/stop      stop it (409 when the server only attached to a cluster)
    POST cluster/scale     {"nodes": N[, "grace_s": S]}: add local nodes, or drain added ones (idle
                           first; busy ones take no new work and get S seconds, default 30, to
                           finish); answers like GET cluster (nodes still draining have
                           "draining": true). 400 for bad input, 409 when only attached

Every handler is an ``APIHandler`` with ``@tornado.web.authenticated``: requests without the
server's token get 403, and cookie-authenticated POSTs need the XSRF token. The blocking
cluster calls run on the extension's single worker thread.
"""
from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from .cluster_keeper import DRAIN_GRACE_S, MAX_LOCAL_NODES, ClusterConflict, ClusterUnreachable

SCALE_USAGE = f'send a JSON object such as {{"nodes": 3}} (1 to {MAX_LOCAL_NODES} nodes; optional "grace_s")'


class NebulaHandler(ExtensionHandlerMixin, APIHandler):
    """Base: the extension app (``self.extensionapp``) owns the keeper and its worker thread."""

    async def run_keeper(self, method, *args):
        return await self.extensionapp.run_blocking(method, *args)

    def reply(self, data: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def refuse(self, status: int, message: str) -> None:
        self.reply({"message": message}, status)


class ClusterHandler(NebulaHandler):
    @tornado.web.authenticated
    async def get(self):
        app = self.extensionapp
        if app.starts_on_first_use:
            await app.start_cluster()
        try:
            self.reply(await self.run_keeper(app.keeper.describe))
        except ClusterUnreachable as exc:
            self.refuse(503, str(exc))


class ClusterStartHandler(NebulaHandler):
    @tornado.web.authenticated
    async def post(self):
        keeper = self.extensionapp.keeper
        await self.extensionapp.start_cluster()
        self.extensionapp.stopped_by_request = False
        self.reply(await self.run_keeper(keeper.describe))


class ClusterStopHandler(NebulaHandler):
    @tornado.web.authenticated
    async def post(self):
        keeper = self.extensionapp.keeper
        try:
            await self.run_keeper(keeper.stop)
        except ClusterConflict as exc:
            return self.refuse(409, str(exc))
        self.extensionapp.stopped_by_request = True
        self.reply(await self.run_keeper(keeper.describe))


class ClusterScaleHandler(NebulaHandler):
    @tornado.web.authenticated
    async def post(self):
        request = scale_request(self.request.body)
        if isinstance(request, str):
            return self.refuse(400, request)
        try:
            reply = await self.run_keeper(self.extensionapp.keeper.scale, *request)
        except ClusterConflict as exc:
            return self.refuse(409, str(exc))
        except ClusterUnreachable as exc:
            return self.refuse(503, str(exc))
        except RuntimeError as exc:  # a node agent failed to start
            return self.refuse(500, f"scaling failed: {exc}")
        self.extensionapp.stopped_by_request = False
        self.reply(reply)


def scale_request(body: bytes) -> tuple | str:
    """``(nodes, grace_s)`` from a scale request's body, or what is wrong with it."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return f"the body is not JSON: {SCALE_USAGE}"
    if not isinstance(data, dict) or "nodes" not in data:
        return SCALE_USAGE
    nodes, grace_s = data["nodes"], data.get("grace_s", DRAIN_GRACE_S)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_LOCAL_NODES:
        return f"nodes={nodes!r} is not a whole number from 1 to {MAX_LOCAL_NODES}: {SCALE_USAGE}"
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or not 0 <= grace_s <= 3600:
        return f"grace_s={grace_s!r} is not a number of seconds from 0 to 3600"
    return nodes, float(grace_s)


HANDLERS = [
    (r"/nebula/api/cluster", ClusterHandler),
    (r"/nebula/api/cluster/start", ClusterStartHandler),
    (r"/nebula/api/cluster/stop", ClusterStopHandler),
    (r"/nebula/api/cluster/scale", ClusterScaleHandler),
]
