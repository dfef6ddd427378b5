"""Helpers for tests that run a second driver in a subprocess (joining a cluster, or its own)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# Subprocesses must import the same `nebula` as the tests, installed or on a temporary path.
_PYTHONPATH = os.pathsep.join(p for p in sys.path if p)


def joining_env(info: dict) -> dict:
    """Environment for a process that joins the cluster ``info`` (what ``nebula.init()`` returned)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env.update(PYTHONPATH=_PYTHONPATH, NEBULA_ADDRESS=info["address"],
               NEBULA_TOKEN_FILE=os.path.join(info["session_dir"], "token"))
    return env


def standalone_env() -> dict:
    """Environment for a process that starts its own embedded cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env["PYTHONPATH"] = _PYTHONPATH
    if os.environ.get("NEBULA_TMPDIR"):
        env["NEBULA_TMPDIR"] = os.environ["NEBULA_TMPDIR"]
    return env


def run_driver(code: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter; returns the finished process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_driver(code: str, env: dict) -> subprocess.Popen:
    """Start ``code`` (dedented) in a fresh interpreter, stdout piped, and return at once."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
