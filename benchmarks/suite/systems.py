"""Which systems the suite runs, the Python each runs under, and whether it works here."""

import os
import shutil
import sys
from dataclasses import dataclass

from suite.launch import launch

PEER_ENV_VARS = {"ray": "NEBULA_BENCH_RAY_PYTHON", "dask": "NEBULA_BENCH_DASK_PYTHON"}
DEFAULT_PEER_PYTHON = "/opt/bench/{name}/bin/python"
PROBE_TIMEOUT_S = 90
ALL = ("nebula", "ray", "dask", "pool")

# Each probe prints the version; nebula's also proves init, put and get work.
PROBES = {
    "nebula": (
        "import importlib.metadata as m, nebula as rt; rt.init(num_cpus=2); "
        "assert rt.get(rt.put(1)) == 1; rt.shutdown(); print(m.version('nebula'))"
    ),
    "ray": "import ray; print(ray.__version__)",
    "dask": "import dask, distributed; print(distributed.__version__)",
    "pool": "import sys; print('python ' + sys.version.split()[0])",
}


@dataclass(frozen=True)
class System:
    """One system: its interpreter and version, or why it is absent."""

    name: str
    python: str | None
    version: str | None = None
    absent_because: str | None = None


def peer_python(name):
    """The peer's interpreter: its env var, else the default venv if it exists, else None."""
    configured = os.environ.get(PEER_ENV_VARS[name])
    if configured:
        return configured
    default = DEFAULT_PEER_PYTHON.format(name=name)
    return default if os.path.exists(default) else None


def python_for(name):
    """Nebula and the ProcessPool baseline run under this interpreter; peers under their own."""
    return peer_python(name) if name in PEER_ENV_VARS else sys.executable


def probe(name, python):
    """Check the system imports (and for nebula, runs); return it with its version or why not."""
    if python is None:
        return System(name, None, absent_because=f"no interpreter: set {PEER_ENV_VARS[name]}")
    if shutil.which(python) is None:
        return System(name, python, absent_because=f"{python} is not an executable")
    done = launch([python, "-c", PROBES[name]], PROBE_TIMEOUT_S)
    if done.returncode != 0 or done.timed_out:
        why = "probe timed out" if done.timed_out else _last_line(done.stderr)
        return System(name, python, absent_because=why)
    return System(name, python, version=done.stdout.strip().splitlines()[-1])


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed with no message"


def discover(names):
    """Probe each named system."""
    return {name: probe(name, python_for(name)) for name in names}
