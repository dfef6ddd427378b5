"""Process lifecycle: init/shutdown, auto-init, joining, leaks, thread safety, task output."""
from __future__ import annotations

import glob
import os
import re
import signal
import threading
import time
import warnings

import psutil
import pytest

import nebula
from polling import wait_until
import nebula.output

from conftest import nebula_processes
from driver_process import joining_env, run_driver, standalone_env, start_driver

pytestmark = pytest.mark.timeout(60)


@nebula.remote
def square(x):
    return x * x


def our_nebula_processes() -> list:
    """Nebula processes (node agents, workers) descending from this test process."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    return [p for p in nebula_processes() if p.pid in mine]


def alive(pids) -> list:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def store_mappings() -> list[str]:
    """This process's file descriptors and mappings of the shared-memory object store."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "nebula" in target and ("memfd:" in target or "/dev/shm" in target or "nebula-store" in target):
            found.append(f"fd {fd} -> {target}")
    with open("/proc/self/maps") as f:
        found += [line.strip() for line in f if "nebula-store" in line or "/dev/shm/nebula" in line]
    return found


# ---- init --------------------------------------------------------------------------------

def test_init_twice_is_harmless_and_warns_about_ignored_arguments(cluster):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = nebula.init()  # nothing asked for: no warning
    assert again["address"] == cluster["address"]
    with pytest.warns(UserWarning, match="num_cpus"):
        info = nebula.init(num_cpus=7)
    assert info["address"] == cluster["address"]
    assert nebula.cluster_resources()["CPU"] == 2
    assert nebula.get(square.remote(3)) == 9


def test_init_with_ignore_reinit_error_false_raises(cluster):
    with pytest.raises(RuntimeError, match="already"):
        nebula.init(ignore_reinit_error=False)


def test_joining_an_existing_cluster_with_num_cpus_raises(cluster):
    result = run_driver("""
        import nebula
        try:
            nebula.init(num_cpus=4)
        except ValueError as exc:
            print("ValueError:", exc)
        else:
            print("joined")
    """, joining_env(cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ValueError:") and "num_cpus" in result.stdout


def test_a_second_driver_joins_and_runs_tasks(cluster):
    result = run_driver("""
        import nebula
        info = nebula.init()
        @nebula.remote
        def cube(x):
            return x ** 3
        print(info["embedded"], nebula.get(cube.remote(3)))
    """, joining_env(cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "27"]


def test_thread_safety_many_threads_submit_and_get(cluster):
    errors, results = [], {}

    def run(thread_index):
        try:
            values = list(range(thread_index * 125, (thread_index + 1) * 125))
            refs = [square.remote(v) for v in values[:60]]
            got = nebula.get(refs)
            got += [nebula.get(square.remote(v)) for v in values[60:80]]
            more = [square.remote(v) for v in values[80:]]
            got += nebula.get(more)
            results[thread_index] = (values, got)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert sum(len(v) for v, _ in results.values()) == 1000
    for values, got in results.values():
        assert got == [v * v for v in values]


# ---- task output -------------------------------------------------------------------------

@pytest.fixture
def captured_output():
    lines = []
    nebula.output.set_output_sink(lambda context, prefix, stream, new: lines.extend(
        (prefix, stream, line) for line in new))
    yield lines
    nebula.output.set_output_sink(None)


def test_print_in_a_task_reaches_the_driver_with_a_prefix(cluster, captured_output):
    @nebula.remote
    def chatty():
        import sys
        print("hello from the task")
        print("to stderr", file=sys.stderr)
        sys.stdout.flush()
        os.write(1, b"raw C-level write\n")
        return os.getpid()

    pid = nebula.get(chatty.remote())
    assert wait_until(lambda: len(captured_output) >= 3)
    by_text = {line: (prefix, stream) for prefix, stream, line in captured_output}
    assert by_text["hello from the task"][1] == "stdout"
    assert by_text["to stderr"][1] == "stderr"
    assert by_text["raw C-level write"][1] == "stdout"
    for prefix, _stream in by_text.values():
        assert re.fullmatch(rf"chatty pid={pid} node=\w+", prefix), prefix


def test_default_sink_prints_prefixed_lines(cluster, capfd):
    @nebula.remote
    def speak():
        print("spoken line")
        return os.getpid()

    pid = nebula.get(speak.remote())
    deadline = time.monotonic() + 5
    seen = ""
    while time.monotonic() < deadline and "spoken line" not in seen:
        seen += capfd.readouterr().out
        time.sleep(0.05)
    assert re.search(rf"^\(speak pid={pid} node=\w+\) spoken line$", seen, re.M), seen


class _Talker:
    def talk(self, text):
        print(text)
        return os.getpid()


class _AsyncTalker:
    async def talk(self, text):
        print(text)
        return os.getpid()


@pytest.mark.parametrize("kind", ["plain", "threaded", "async"])
def test_actor_output_is_prefixed_too(cluster, captured_output, kind):
    cls = _AsyncTalker if kind == "async" else _Talker
    options = {"max_concurrency": 2} if kind == "threaded" else {}
    talker = nebula.remote(**options)(cls).remote()
    text = f"{kind} actor says hi"
    pid = nebula.get(talker.talk.remote(text), timeout=30)
    assert wait_until(lambda: any(line == text for _p, _s, line in captured_output))
    prefix = next(p for p, _s, line in captured_output if line == text)
    assert re.fullmatch(rf"{cls.__name__}\.talk pid={pid} node=\w+", prefix), prefix


# ---- restarting and leaks (these replace the module's cluster) ---------------------------

def test_init_shutdown_init(cluster):
    nebula.shutdown()
    assert not nebula.is_initialized()
    first = nebula.init(num_cpus=1, object_store_memory="64MiB")
    assert nebula.get(square.remote(4)) == 16
    assert nebula.cluster_resources()["CPU"] == 1
    nebula.shutdown()
    second = nebula.init(num_cpus=2, object_store_memory="64MiB")
    assert second["session_dir"] != first["session_dir"]
    assert nebula.cluster_resources()["CPU"] == 2
    assert nebula.get(square.remote(5)) == 25
    nebula.shutdown()


def test_shutdown_leaves_no_processes_and_no_shared_memory():
    import numpy as np
    nebula.shutdown()
    earlier = set(store_mappings())  # e.g. arrays an earlier failed test's traceback still holds
    shm_before = set(glob.glob("/dev/shm/*nebula*"))
    nebula.init(num_cpus=2, object_store_memory="64MiB")

    @nebula.remote
    class Holder:
        def ping(self):
            return "pong"

    refs = [square.remote(i) for i in range(4)]
    assert nebula.get(refs) == [0, 1, 4, 9]
    holder = Holder.remote()
    assert nebula.get(holder.ping.remote()) == "pong"
    assert float(nebula.get(nebula.put(np.ones(1 << 20))).sum()) == float(1 << 20)
    pids = [p.pid for p in our_nebula_processes()]
    assert len(pids) >= 3  # the node agent, task workers, the actor
    assert set(store_mappings()) - earlier
    del refs, holder
    nebula.shutdown()
    assert wait_until(lambda: not alive(pids), timeout=3), alive(pids)
    assert not our_nebula_processes()
    assert wait_until(lambda: not set(store_mappings()) - earlier, timeout=2), store_mappings()
    assert not set(glob.glob("/dev/shm/*nebula*")) - shm_before


def test_auto_init_on_first_remote_and_put(tmp_path):
    nebula.shutdown()
    try:
        ref = square.remote(6)
        assert nebula.is_initialized()
        assert nebula.get(ref) == 36
    finally:
        nebula.shutdown()
    result = run_driver("""
        import nebula
        ref = nebula.put("auto")
        print(nebula.is_initialized(), nebula.get(ref))
    """, standalone_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "auto"]


def test_sigkilled_driver_leaves_no_processes():
    driver = start_driver("""
        import os, sys, time
        import nebula
        nebula.init(num_cpus=2, object_store_memory="64MiB")

        @nebula.remote
        def busy():
            time.sleep(100)

        @nebula.remote
        class Actor:
            def ping(self):
                return "pong"

        refs = [busy.remote() for _ in range(2)]
        actor = Actor.remote()
        nebula.get(actor.ping.remote())
        time.sleep(0.5)
        print("ready", flush=True)
        time.sleep(100)
    """, standalone_env())
    try:
        assert driver.stdout.readline().strip() == "ready", driver.stderr.read() if driver.poll() is not None else ""
        descendants = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        assert len(descendants) >= 4  # the node agent, two busy workers, the actor
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        assert wait_until(lambda: not alive(descendants), timeout=3), alive(descendants)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
        driver.stderr.close()
