"""The REST API under ``<base_url>/nebula/api/``, behind jupyter_server's authentication.

    GET  cluster           the cluster: nodes, resources, running tasks, workers, actors, objects
                           (503 when the cluster does not answer)
    POST cluster/start     start the server's cluster (no-op when running)
    POST cluster/stop      stop it (409 when the server only attached to a cluster)
    POST cluster/scale     change the number of nodes (501 until multi-node local clusters exist)

Every handler is an ``APIHandler`` with ``@tornado.web.authenticated``: requests without the
server's token get 403, and cookie-authenticated POSTs need the XSRF token. The blocking
cluster calls run on the extension's single worker thread.
"""
from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from .cluster_keeper import ClusterConflict, ClusterUnreachable


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
        try:
            wanted = json.loads(self.request.body or b"{}").get("num_nodes")
        except (ValueError, AttributeError):
            return self.refuse(400, 'send a JSON object such as {"num_nodes": 2}')
        self.refuse(501, f"scaling to num_nodes={wanted} is not available yet: this server runs one local node "
                         "agent, and local multi-node clusters are not implemented in this version of Nebula")


HANDLERS = [
    (r"/nebula/api/cluster", ClusterHandler),
    (r"/nebula/api/cluster/start", ClusterStartHandler),
    (r"/nebula/api/cluster/stop", ClusterStopHandler),
    (r"/nebula/api/cluster/scale", ClusterScaleHandler),
]
