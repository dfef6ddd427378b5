"""``nebula start --head --dashboard-port P``: the dashboard page without Jupyter, token-guarded."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, response.read(), response.headers.get("Set-Cookie")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), None


def _status_or_none(url: str):
    try:
        return fetch(url)[0]
    except urllib.error.URLError:
        return None  # not listening yet


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture
def dashboard():
    root = tempfile.mkdtemp(prefix="nbd-")
    env = {**os.environ, "NEBULA_TMPDIR": root}
    env.pop("NEBULA_ADDRESS", None)
    port = free_port()
    try:
        subprocess.run([sys.executable, "-m", "nebula.cli", "start", "--head", "--port", "0", "--num-cpus", "1",
                        "--dashboard-port", str(port)], env=env, check=True, capture_output=True, timeout=60)
        current = json.load(open(os.path.join(root, f"nebula-{os.getuid()}", "current")))
        token = open(current["token_file"]).read().strip()
        url = f"http://127.0.0.1:{port}/dashboard"
        deadline = time.monotonic() + 30
        while _status_or_none(url) not in (302, 403):
            assert time.monotonic() < deadline, "the dashboard never answered"
            time.sleep(0.3)
        yield url, token
    finally:  # even when start-up failed half-way: nothing of ours keeps running
        subprocess.run([sys.executable, "-m", "nebula.cli", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_the_page_needs_the_token_once_then_a_cookie(dashboard):
    url, token = dashboard
    assert fetch(url)[0] in (302, 403)  # no token: refused
    assert fetch(url + "?token=wrong")[0] in (302, 403)
    status, body, cookie = fetch(f"{url}?token={token}")
    assert status == 200 and b"bokeh" in body.lower() and cookie
    assert fetch(url, {"Cookie": cookie.split(";")[0]})[0] == 200


def test_a_foreign_host_header_is_refused(dashboard):
    url, token = dashboard
    port = url.split(":")[2].split("/")[0]
    assert fetch(f"{url}?token={token}", {"Host": f"attacker.example:{port}"})[0] in (302, 403)
