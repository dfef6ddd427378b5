"""The workshop notebooks in tutorials/: each runs end to end in a fresh kernel on a fresh cluster.

Every notebook is executed by nbclient at ``NEBULA_TUTORIAL_SCALE=ci`` in its own kernel,
with no cluster address in its environment, so its ``nebula.init()`` starts a private
embedded cluster; any cell error fails the test, and the cluster's processes must be gone
once the kernel has shut down. A notebook whose front matter says ``requires: X`` is skipped
only when the runtime, probed in a subprocess, lacks capability X.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from conftest import nebula_processes

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 240      # a whole notebook, kernel start included (ci scale aims at < 45 s)
CELL_TIMEOUT_S = 180
RUN_TAG = "NEBULA_TUTORIAL_RUN"      # marks the processes one notebook run starts


# ---- capabilities a notebook may require -----------------------------------------------------

MULTI_NODE_PROBE = """
import nebula
try:
    nebula.init(address="local", num_nodes=3)
except TypeError as exc:
    print(exc)
    raise SystemExit(3)
nebula.shutdown()
"""


@functools.lru_cache(maxsize=None)
def missing_capability(name: str) -> str | None:
    """Why the runtime lacks capability ``name``, or None when it has it."""
    if name != "multi_node":
        raise ValueError(f"unknown capability {name!r} in a notebook's front matter (known: multi_node)")
    probe = subprocess.run([sys.executable, "-c", MULTI_NODE_PROBE], capture_output=True, text=True,
                           timeout=60, env=kernel_env())
    if probe.returncode == 3:
        return f"multi-node runtime not available yet ({probe.stdout.strip()})"
    return None


# ---- running a notebook ----------------------------------------------------------------------

def kernel_env() -> dict:
    """This process's environment, minus any cluster to join, at the tests' scale."""
    env = {k: v for k, v in os.environ.items() if k not in ("NEBULA_ADDRESS", "NEBULA_TOKEN_FILE", "NEBULA_TOKEN")}
    env.update(NEBULA_TUTORIAL_SCALE="ci", BOKEH_RESOURCES="inline", PYTHONUNBUFFERED="1")
    return env


def run_notebook(path: Path, workdir: Path, run_id: str) -> nbformat.NotebookNode:
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    env = kernel_env()
    env[RUN_TAG] = run_id
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        env[name] = str(workdir / name.lower())
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb


def processes_of_run(run_id: str) -> list:
    """Cluster processes started by one notebook run (they inherit its kernel's environment)."""
    import psutil
    found = []
    for proc in nebula_processes():
        try:
            if proc.environ().get(RUN_TAG) == run_id:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def wait_until_gone(run_id: str, timeout_s: float = 15.0) -> list:
    deadline = time.monotonic() + timeout_s
    while processes_of_run(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_of_run(run_id)


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for capability in nb.metadata.get("nebula", {}).get("requires", []):
        reason = missing_capability(capability)
        if reason:
            pytest.skip(reason)
    run_id = uuid.uuid4().hex
    executed = run_notebook(path, tmp_path, run_id)
    assert any(cell.get("outputs") for cell in executed.cells), "the notebook produced no output at all"
    left = wait_until_gone(run_id)
    assert not left, f"{path.name} left cluster processes running after its kernel ended: {left}"


# ---- the committed files ---------------------------------------------------------------------

def test_tutorials_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


def test_tutorials_match_their_sources():
    build = subprocess.run([sys.executable, str(TUTORIALS / "build.py"), "--check"], capture_output=True,
                           text=True, timeout=60)
    assert build.returncode == 0, build.stdout + build.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_shape(path):
    """Each starts a cluster, ends by shutting it down, and has exercises with solutions."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "nebula.init(" in "\n".join(code[:2])
    assert code[-1].strip().endswith("nebula.shutdown()")
    assert "<details>" in markdown and "Exercise" in markdown
    assert "SCALE" in code[0] and "NEBULA_TUTORIAL_SCALE" in code[0]
