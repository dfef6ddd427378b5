"""The dashboard page for clusters without Jupyter: ``nebula start --head --dashboard-port P``.

    python -m nebula.widgets.standalone --port P [--host 127.0.0.1]
        (NEBULA_ADDRESS and NEBULA_TOKEN_FILE name the cluster; its token guards the page)

A Bokeh server of its own on 127.0.0.1 unless told otherwise, read-only (the views only
read ``nebula.state``). The cluster token is required once, as ``?token=...``; it is then
kept in a signed, HTTP-only cookie. Requests whose Host (and websockets whose Origin) is
not this server's own address are refused, so other sites cannot reach it through a
browser.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import os

from bokeh.server.auth_provider import AuthProvider
from bokeh.server.server import Server
from tornado import web

from nebula.session_files import read_token

from .page import make_document

COOKIE = "nebula_dashboard"


class _Refused(web.RequestHandler):
    def get(self):
        self.set_status(403)
        self.finish("Nebula dashboard: open it with ?token=<the cluster token> (from its token file)")


class TokenAuth(AuthProvider):
    """The cluster token once (``?token=``), then a signed cookie; wrong Host: refused."""

    def __init__(self, token: bytes, hosts: set[str]):
        self.token, self.hosts = token, hosts
        self.proof = hmac.new(token, b"nebula-dashboard", hashlib.sha256).hexdigest()
        super().__init__()

    @property
    def get_user(self):
        return self._user

    @property
    def login_url(self):
        return "/refused"

    @property
    def login_handler(self):
        return _Refused

    def _user(self, handler):
        if handler.request.host not in self.hosts:
            return None
        if hmac.compare_digest(handler.get_secure_cookie(COOKIE) or b"", self.proof.encode()):
            return "viewer"
        given = handler.get_argument("token", "")
        if given and hmac.compare_digest(given.encode(), self.token):
            handler.set_secure_cookie(COOKIE, self.proof, httponly=True, samesite="Strict")
            return "viewer"
        return None


def serve(host: str, port: int) -> None:
    token = read_token()
    hosts = {f"{host}:{port}", f"localhost:{port}"} if host in ("127.0.0.1", "localhost") else {f"{host}:{port}"}
    server = Server({"/dashboard": make_document}, address=host, port=port, allow_websocket_origin=sorted(hosts),
                    auth_provider=TokenAuth(token, hosts), cookie_secret=os.urandom(32).hex(),
                    redirect_root=True)
    server.start()
    print(f"Nebula dashboard at http://{host}:{port}/dashboard?token=... (the cluster token)", flush=True)
    server.io_loop.start()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Nebula's dashboard page, without Jupyter")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
