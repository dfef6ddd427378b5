"""Failures on a real cluster: crashes at every stage of a call, retries, cancellation, forks.

The crash table puts each failure mode (raise, ``os._exit(3)``, a segfault) at each stage a
call goes through: pickling the call (driver), unpickling it (worker), running it, pickling
the result (worker), unpickling the result (driver). Rows that kill the driver run in a
subprocess driver joining the test cluster; the cluster must then free what it held.
"""
from __future__ import annotations

import gc
import os
import signal
import time

import psutil
import pytest

import nebula
from polling import wait_until
from nebula.exceptions import NebulaError, TaskCancelledError, TaskError, WorkerCrashedError

from driver_process import joining_env, run_driver

pytestmark = pytest.mark.timeout(60)


class UserError(Exception):
    """The user's own exception class."""


def detonate(mode: str, marker: str = ""):
    """Count an attempt in ``marker``, then fail the way ``mode`` says."""
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    if mode == "raise":
        raise UserError(f"detonated in pid {os.getpid()}")
    if mode == "exit":
        os._exit(3)
    if mode == "segfault":
        import ctypes
        ctypes.string_at(0)
    return "defused"


class ExplodesWhenUnpickled:
    """Pickles fine; rebuilding it (unpickling) calls detonate."""

    def __init__(self, mode, marker=""):
        self.mode, self.marker = mode, marker

    def __reduce__(self):
        return detonate, (self.mode, self.marker)


class ExplodesWhenPickled:
    """Pickling it calls detonate."""

    def __init__(self, mode, marker=""):
        self.mode, self.marker = mode, marker

    def __reduce__(self):
        detonate(self.mode, self.marker)
        return str, ("unreachable",)


@nebula.remote
def take(arg):
    return "ran"


@nebula.remote
def run_detonate(mode, marker):
    return detonate(mode, marker)


@nebula.remote
def return_pickle_bomb(mode, marker):
    return ExplodesWhenPickled(mode, marker)


def attempts(marker) -> int:
    try:
        with open(marker) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


# ---- the crash table: failures inside the worker -----------------------------------------

WORKER_STAGES = {
    "unpickling the call": lambda mode, marker: take.options(max_retries=1).remote(
        ExplodesWhenUnpickled(mode, marker)),
    "running it": lambda mode, marker: run_detonate.options(max_retries=1).remote(mode, marker),
    "pickling the result": lambda mode, marker: return_pickle_bomb.options(max_retries=1).remote(mode, marker),
}
DEATHS = {"exit": "exit code 3", "segfault": "SIGSEGV"}


@pytest.mark.parametrize("mode", ["raise", "exit", "segfault"])
@pytest.mark.parametrize("stage", list(WORKER_STAGES))
def test_crash_in_the_worker(cluster, tmp_path, stage, mode):
    marker = str(tmp_path / "attempts")
    ref = WORKER_STAGES[stage](mode, marker)
    if mode == "raise":
        with pytest.raises(UserError) as info:  # the task error is also the user's class
            nebula.get(ref, timeout=30)
        assert isinstance(info.value, TaskError)
        assert "detonated in pid" in str(info.value)
        assert attempts(marker) == 1  # user errors are not retried by default
    else:
        with pytest.raises(WorkerCrashedError) as info:
            nebula.get(ref, timeout=30)
        assert DEATHS[mode] in str(info.value)
        assert attempts(marker) == 2  # max_retries=1: retried once
        pids = set(open(marker).read().split())
        assert len(pids) == 2  # each attempt in a new worker: the crashed one is gone
    assert nebula.get(take.remote(1), timeout=30) == "ran"


def test_crash_while_pickling_the_call_is_raised_at_remote(cluster):
    with pytest.raises(TypeError, match="argument 0 of take") as info:
        take.remote(ExplodesWhenPickled("raise"))
    assert isinstance(info.value.__cause__, UserError)


def test_crash_while_unpickling_the_result_in_the_driver(cluster, tmp_path):
    marker = str(tmp_path / "attempts")

    @nebula.remote
    def return_unpickle_bomb():
        return ExplodesWhenUnpickled("raise", marker)

    ref = return_unpickle_bomb.remote()
    with pytest.raises(UserError, match="detonated in pid"):
        nebula.get(ref, timeout=30)
    assert open(marker).read().split() == [str(os.getpid())]  # it was rebuilt here, in the driver


# ---- the crash table: failures that kill the driver --------------------------------------

DRIVER_PRELUDE = """
    import os, sys, time
    import numpy as np
    import nebula
    nebula.init()

    def detonate(mode):
        if mode == "exit":
            os._exit(3)
        import ctypes
        ctypes.string_at(0)

    class ExplodesWhenPickled:
        def __init__(self, mode):
            self.mode = mode
        def __reduce__(self):
            detonate(self.mode)

    class ExplodesWhenUnpickled:
        def __init__(self, mode):
            self.mode = mode
        def __reduce__(self):
            return detonate, (self.mode,)

    @nebula.remote
    def sleeper(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(100)

    @nebula.remote
    def echo(x):
        return x

    @nebula.remote
    def make_bomb(mode):
        return ExplodesWhenUnpickled(mode)  # built here; rebuilding it in the driver detonates

    held = nebula.put(np.ones(4 << 20, dtype=np.uint8))
    running = sleeper.remote(os.environ["SLEEPER_PID_FILE"])
    while not os.path.exists(os.environ["SLEEPER_PID_FILE"]):
        time.sleep(0.02)
    print(os.getpid(), held.hex(), flush=True)
"""
DRIVER_STAGES = {
    "pickling the call": "echo.remote(ExplodesWhenPickled({mode!r}))",
    "unpickling the result": "nebula.get(make_bomb.remote({mode!r}))",
}


@pytest.mark.parametrize("mode", ["exit", "segfault"])
@pytest.mark.parametrize("stage", list(DRIVER_STAGES))
def test_crash_that_kills_the_driver_frees_its_work(cluster, tmp_path, stage, mode):
    pid_file = tmp_path / "sleeper.pid"
    env = {**joining_env(cluster), "SLEEPER_PID_FILE": str(pid_file)}
    code = DRIVER_PRELUDE + "\n    " + DRIVER_STAGES[stage].format(mode=mode) + "\n    print('survived')\n"
    result = run_driver(code, env)
    expected = 3 if mode == "exit" else -signal.SIGSEGV
    assert result.returncode == expected, result.stdout + result.stderr
    driver_pid, held_id = result.stdout.split()
    sleeper_pid = int(pid_file.read_text())
    assert wait_until(lambda: int(driver_pid) not in {c["pid"] for c in nebula.state.snapshot().clients})
    assert wait_until(lambda: held_id not in {o["object_id"] for o in nebula.state.snapshot().objects})
    assert wait_until(lambda: not _running(sleeper_pid))  # the worker running its task was stopped
    assert wait_until(lambda: nebula.available_resources().get("CPU") == 2)
    assert nebula.get(take.remote(1), timeout=30) == "ran"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- retries -----------------------------------------------------------------------------

def test_worker_death_is_retried_max_retries_times(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    with pytest.raises(WorkerCrashedError, match="exit code 3"):
        nebula.get(run_detonate.options(max_retries=2).remote("exit", marker), timeout=30)
    assert attempts(marker) == 3


def test_max_retries_zero_fails_at_the_first_death(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    with pytest.raises(WorkerCrashedError, match="exit code 3"):
        nebula.get(run_detonate.options(max_retries=0).remote("exit", marker), timeout=30)
    assert attempts(marker) == 1


def test_a_retry_that_succeeds_returns_the_value(cluster, tmp_path):
    marker = str(tmp_path / "attempts")

    @nebula.remote(max_retries=3)
    def flaky():
        detonate("none", marker)
        if attempts(marker) < 3:
            os._exit(3)
        return "third time lucky"

    assert nebula.get(flaky.remote(), timeout=30) == "third time lucky"
    assert attempts(marker) == 3


def test_retry_exceptions_true_retries_user_errors(cluster, tmp_path):
    marker = str(tmp_path / "attempts")
    ref = run_detonate.options(max_retries=2, retry_exceptions=True).remote("raise", marker)
    with pytest.raises(UserError):
        nebula.get(ref, timeout=30)
    assert attempts(marker) == 3


def test_retry_exceptions_list_retries_only_those_classes(cluster, tmp_path):
    retried, not_retried = str(tmp_path / "retried"), str(tmp_path / "not_retried")
    with pytest.raises(UserError):
        nebula.get(run_detonate.options(max_retries=2, retry_exceptions=[UserError]).remote("raise", retried),
                   timeout=30)
    assert attempts(retried) == 3
    with pytest.raises(UserError):
        nebula.get(run_detonate.options(max_retries=2, retry_exceptions=[KeyError]).remote("raise", not_retried),
                   timeout=30)
    assert attempts(not_retried) == 1


# ---- errors that cannot travel -----------------------------------------------------------

def test_exception_class_unknown_to_the_driver_still_arrives_as_task_error(cluster, tmp_path):
    (tmp_path / "worker_only_errors.py").write_text(
        "class HiddenError(Exception):\n    pass\n")

    @nebula.remote(runtime_env={"working_dir": str(tmp_path)})
    def raise_hidden():
        import worker_only_errors
        raise worker_only_errors.HiddenError("only the worker knows this class")

    with pytest.raises(TaskError) as info:
        nebula.get(raise_hidden.remote(), timeout=30)
    text = str(info.value)
    assert "HiddenError" in text and "only the worker knows this class" in text


# ---- cancellation ------------------------------------------------------------------------

@nebula.remote
def sleep_and_report(path, seconds=100):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


@nebula.remote
def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_cancel_interrupts_a_running_task_and_keeps_its_worker(fresh_cluster, tmp_path):
    pid_file = tmp_path / "pid"
    ref = sleep_and_report.remote(str(pid_file))
    assert wait_until(pid_file.exists, timeout=20)
    pid = int(pid_file.read_text())
    nebula.cancel(ref)
    with pytest.raises(TaskCancelledError):
        nebula.get(ref, timeout=1.0)  # interrupted within a second, not after 100 s
    assert _running(pid)
    pids = nebula.get([pid_after.remote(0.5), pid_after.remote(0.5)], timeout=30)
    assert pid in pids  # the same worker process runs the next tasks


def _worker_running(task_id: str, outcome):
    """A worker's cancellation state as it runs ``task_id`` (no process: its handler and _run alone)."""
    from nebula import protocol as P
    from nebula.worker import Worker
    worker = Worker.__new__(Worker)
    worker.cancelled, worker.interruptible = set(), False
    worker.current = P.ExecuteTask(task_id, "f", b"", b"", [], "f", "owner", "job")
    worker._outcome = outcome
    return worker


def test_a_cancel_signal_raises_only_inside_the_tasks_work_and_once():
    """A cancel's signal can land while the worker sets a task up or sends its reply: it must
    not raise there (the task would never answer), and the task must still end cancelled."""
    from nebula import protocol as P
    from nebula.session import decode_error
    seen = []

    def work(spec, start):  # the task's work, during which two cancel signals land
        worker._on_cancel_signal(signal.SIGUSR1, None)
        seen.append("not interrupted")
        return P.TaskResult(spec.task_id)
    worker = _worker_running("t1", work)
    worker.cancelled.add("t1")
    worker._on_cancel_signal(signal.SIGUSR1, None)  # while being set up: ignored, no raise
    result = worker._run(worker.current, 1.0)     # the check in _run still ends it cancelled
    assert isinstance(decode_error(result.error), TaskCancelledError) and seen == []
    worker = _worker_running("t2", work)
    worker.cancelled.add("t2")
    worker.interruptible = True  # as during the work: it raises, once
    with pytest.raises(TaskCancelledError):
        worker._on_cancel_signal(signal.SIGUSR1, None)
    worker._on_cancel_signal(signal.SIGUSR1, None)  # a second signal, while the reply is made
    assert not worker.interruptible


def test_a_cancel_signal_during_the_work_ends_the_task_cancelled():
    from nebula import protocol as P
    from nebula.session import decode_error

    def work(spec, start):
        worker.cancelled.add(spec.task_id)
        worker._on_cancel_signal(signal.SIGUSR1, None)
        return P.TaskResult(spec.task_id)
    worker = _worker_running("t3", work)
    result = worker._run(worker.current, 1.0)
    assert isinstance(decode_error(result.error), TaskCancelledError) and not worker.interruptible


def test_force_cancel_kills_the_worker(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    ref = sleep_and_report.remote(str(pid_file))
    assert wait_until(pid_file.exists, timeout=20)
    pid = int(pid_file.read_text())
    nebula.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        nebula.get(ref, timeout=10)
    assert wait_until(lambda: not _running(pid))
    assert nebula.get(take.remote(1), timeout=30) == "ran"


def test_cancel_a_pending_task(cluster, tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    blockers = [sleep_and_report.remote(str(f)) for f in files]
    assert wait_until(lambda: all(f.exists() for f in files), timeout=20)  # both CPUs busy
    never = tmp_path / "never"
    pending = sleep_and_report.remote(str(never), 0)
    time.sleep(0.2)
    nebula.cancel(pending)
    with pytest.raises(TaskCancelledError):
        nebula.get(pending, timeout=5)
    for ref in blockers:
        nebula.cancel(ref)
    for ref in blockers:
        with pytest.raises(TaskCancelledError):
            nebula.get(ref, timeout=5)
    time.sleep(0.3)
    assert not never.exists()


def test_cancel_a_task_waiting_for_its_arguments(cluster, tmp_path):
    blocker_file = tmp_path / "blocker"
    blocker = sleep_and_report.remote(str(blocker_file), 100)
    dependent = take.remote(blocker)
    nebula.cancel(dependent)
    with pytest.raises(TaskCancelledError):
        nebula.get(dependent, timeout=5)
    nebula.cancel(blocker)
    with pytest.raises(TaskCancelledError):
        nebula.get(blocker, timeout=10)


@nebula.remote
def wait_for_child(path):
    return nebula.get(sleep_and_report.remote(path))


def test_cancelling_a_task_blocked_in_get_cancels_its_children(cluster, tmp_path):
    child_file = tmp_path / "child"
    parent = wait_for_child.remote(str(child_file))
    assert wait_until(child_file.exists, timeout=20)
    child_pid = int(child_file.read_text())
    nebula.cancel(parent)
    with pytest.raises(TaskCancelledError):
        nebula.get(parent, timeout=2)
    assert wait_until(lambda: nebula.available_resources().get("CPU") == 2)  # the child stopped too
    assert _running(child_pid)  # interrupted, not killed


# ---- forks -------------------------------------------------------------------------------

def test_forked_child_gets_a_clear_error(cluster):
    assert nebula.get(take.remote(1)) == "ran"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the next call does, then leave without clean-up
        os.close(read_fd)
        try:
            take.remote(1)
            message = "no error"
        except NebulaError as exc:
            message = "NebulaError: " + str(exc)
        except BaseException as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, message.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert message.startswith("NebulaError") and "fork" in message, message
    assert nebula.get(take.remote(2)) == "ran"  # the parent is unaffected
    gc.collect()


def test_the_memory_monitor_kills_the_newest_task_and_says_why():
    """With the monitor's threshold just above what the machine uses now, a task that takes
    a further 1 GiB is killed, and its error says it was the monitor, at what use."""
    nebula.shutdown()
    memory = psutil.virtual_memory()
    threshold = memory.percent + (2**30 / memory.total) * 100 / 2   # half of what the task will take
    nebula.init(num_cpus=1, object_store_memory="64MiB", _node_config={"memory_monitor_percent": threshold})
    try:
        @nebula.remote(max_retries=0)
        def hog():
            block = bytearray(2**30)          # 1 GiB, touched page by page
            for at in range(0, len(block), 4096):
                block[at] = 1
            time.sleep(30)

        with pytest.raises(WorkerCrashedError) as caught:
            nebula.get(hog.remote(), timeout=45)
        message = str(caught.value)
        assert "killed by the memory monitor" in message and "GiB" in message
        assert nebula.get(nebula.put(1)) == 1  # the node goes on
    finally:
        nebula.shutdown()
