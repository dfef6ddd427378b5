"""Finds and ends the processes one benchmark launch left behind, by a marker in their environment."""

import psutil

MARKER_VAR = "NEBULA_BENCH_LAUNCH"
GRACE_S = 5.0


def marked(token):
    """Live processes whose environment carries this launch's token."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER_VAR) == token:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def end(processes):
    """Terminate, then kill whatever is still alive after a short wait."""
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=2.0)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def reap(token):
    """Give the launch's processes a grace period to exit by themselves, end the rest; return their count."""
    _, alive = psutil.wait_procs(marked(token), timeout=GRACE_S)
    end(alive)
    return len(alive)
