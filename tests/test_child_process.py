"""Tests for nebula.child_process with real processes: no child outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from nebula.child_process import (
    PARENT_PID_ENV,
    describe_exit,
    install_parent_watch,
    spawn_child,
    terminate_tree,
)

pytestmark = pytest.mark.timeout(30)

# Subprocesses must import the same `nebula` as this test, installed or on a temporary path.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

# A child that watches its parent, says "ready", then sleeps (forever, as far as tests care).
SLEEPING_CHILD = textwrap.dedent("""
    import sys, time
    from nebula.child_process import install_parent_watch
    install_parent_watch()
    print("ready", flush=True)
    time.sleep(60)
""")

# A parent that spawns SLEEPING_CHILD, waits until it is ready, prints its pid, and then
# either sleeps (to be SIGKILLed by the test) or closes the lifeline and reports the exit.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from nebula.child_process import describe_exit, spawn_child
    child = spawn_child([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, name="sleeper")
    assert child.stdout.readline() == b"ready\\n"
    print(child.pid, flush=True)
    if sys.argv[2] == "leak-lifeline":  # a forked (not exec'd) helper keeps the write end open
        import os
        helper = os.fork()
        if helper == 0:
            time.sleep(60)
            os._exit(0)
        print(helper, flush=True)
    if sys.argv[2] == "close-lifeline":
        child.stdin.close()
        print(describe_exit(child.wait(timeout=10)), flush=True)
    time.sleep(60)
""")


def is_gone(pid: int) -> bool:
    """True once `pid` no longer runs; a zombie waiting for a (non-reaping) init counts as gone."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_parent(mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, SLEEPING_CHILD, mode],
                              stdout=subprocess.PIPE, env=SUBPROCESS_ENV)
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"parent failed to start its child: {line!r}"
    return parent, int(line)


def spawn_python(code: str, **kwargs) -> subprocess.Popen:
    return spawn_child([sys.executable, "-c", textwrap.dedent(code)], name="test-child",
                       env=SUBPROCESS_ENV, **kwargs)


# ------------------------------------------------------------------------------ parent death


def test_child_dies_when_its_parent_is_sigkilled():
    parent, child_pid = start_parent("sleep")
    try:
        assert not is_gone(child_pid)
        parent.kill()
        parent.wait()
        assert wait_until_gone(child_pid), "child outlived its SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait()
        kill_quietly(child_pid)


def test_parent_death_signal_works_even_if_the_lifeline_leaked():
    parent, child_pid = start_parent("leak-lifeline")
    helper_pid = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        assert not is_gone(helper_pid)  # the lifeline's write end is still open in the helper
        assert wait_until_gone(child_pid), "PR_SET_PDEATHSIG did not kill the orphaned child"
    finally:
        parent.kill()
        parent.wait()
        kill_quietly(child_pid)
        kill_quietly(helper_pid)


def test_spawning_from_a_short_lived_thread_gets_the_child_killed():
    """Documents why spawn_child must run on a long-lived thread (PDEATHSIG follows the thread)."""
    started = []

    def spawn_and_return():
        child = spawn_python(SLEEPING_CHILD, stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        started.append(child)

    thread = threading.Thread(target=spawn_and_return)
    thread.start()
    thread.join()
    child = started[0]
    try:
        assert child.wait(timeout=5) == -signal.SIGKILL
    finally:
        terminate_tree(child, timeout=1)


def test_child_exits_when_the_lifeline_closes_while_the_parent_lives():
    parent, child_pid = start_parent("close-lifeline")
    try:
        assert parent.stdout.readline().strip() == b"exit code 0"
        assert parent.poll() is None  # the parent is still alive
        assert is_gone(child_pid)
    finally:
        parent.kill()
        parent.wait()
        kill_quietly(child_pid)


def test_dropping_the_lifeline_runs_the_hook_then_exits(tmp_path):
    marker = tmp_path / "hook-ran"
    child = spawn_python(f"""
        import time
        from nebula.child_process import install_parent_watch
        install_parent_watch(on_parent_exit=lambda: open({str(marker)!r}, "w").close())
        print("ready", flush=True)
        time.sleep(60)
    """, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        child.stdin.close()
        assert child.wait(timeout=5) == 0
        assert marker.exists()
    finally:
        terminate_tree(child, timeout=1)


def test_a_slow_hook_is_cut_off_after_two_seconds():
    child = spawn_python("""
        import time
        from nebula.child_process import install_parent_watch
        install_parent_watch(on_parent_exit=lambda: time.sleep(60))
        print("ready", flush=True)
        time.sleep(60)
    """, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        child.stdin.close()
        assert child.wait(timeout=6) == 0
    finally:
        terminate_tree(child, timeout=1)


def test_child_exits_at_once_if_its_parent_is_already_gone():
    departed = subprocess.Popen([sys.executable, "-c", "pass"])
    departed.wait()  # a parent that is gone by the time the child checks
    env = {**SUBPROCESS_ENV, PARENT_PID_ENV: str(departed.pid)}
    result = subprocess.run(
        [sys.executable, "-c", "from nebula.child_process import install_parent_watch\n"
                               "install_parent_watch()\nprint('survived')"],
        env=env, stdin=subprocess.PIPE, capture_output=True, timeout=10)
    assert result.returncode == 1
    assert b"survived" not in result.stdout
    assert b"parent process" in result.stderr


def test_lifeline_is_moved_off_stdin_and_parent_pid_is_not_inherited():
    child = spawn_python("""
        import os
        from nebula.child_process import install_parent_watch
        assert install_parent_watch() is not None
        try:
            input()
            print("read something")
        except EOFError:
            print("stdin is /dev/null", os.environ.get("NEBULA_PARENT_PID"), flush=True)
    """, stdout=subprocess.PIPE)
    try:
        out = child.stdout.read()  # not communicate(): that would close the lifeline at once
        assert out.split() == [b"stdin", b"is", b"/dev/null", b"None"]
        assert child.wait(timeout=10) == 0
    finally:
        terminate_tree(child, timeout=1)


def test_install_parent_watch_without_a_nebula_parent_does_nothing(monkeypatch):
    monkeypatch.delenv(PARENT_PID_ENV, raising=False)
    assert install_parent_watch() is None


# ------------------------------------------------------------------------------- spawn_child


def test_spawn_child_keeps_the_session_and_sets_the_parent_pid():
    child = spawn_python("""
        import os
        print(os.getsid(0), os.getpgid(0), os.environ["NEBULA_PARENT_PID"], flush=True)
    """, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=10)
    sid, pgid, parent_pid = map(int, out.split())
    assert (sid, pgid, parent_pid) == (os.getsid(0), os.getpgid(0), os.getpid())
    assert child.returncode == 0


def test_spawn_child_passes_fds(tmp_path):
    read_end, write_end = os.pipe()
    try:
        child = spawn_python(f"import os; os.write({write_end}, b'hello')", pass_fds=[write_end])
        assert child.wait(timeout=10) == 0
        assert os.read(read_end, 5) == b"hello"
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("argv, name, message", [
    ([], "x", "non-empty list"),
    ("python", "x", "non-empty list"),
    ([sys.executable], "", "non-empty name"),
])
def test_spawn_child_rejects_bad_arguments(argv, name, message):
    with pytest.raises(ValueError, match=message):
        spawn_child(argv, name=name)


def test_spawn_child_says_which_process_failed_to_start():
    with pytest.raises(FileNotFoundError) as info:
        spawn_child(["/nonexistent/python"], name="raylet")
    assert "raylet" in "".join(getattr(info.value, "__notes__", [])) or sys.version_info < (3, 11)


# ---------------------------------------------------------------------------- terminate_tree


def test_terminate_tree_uses_sigterm_first():
    child = spawn_python("import time; print('ready', flush=True); time.sleep(60)",
                         stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    assert terminate_tree(child, timeout=3) == -signal.SIGTERM
    assert child.stdin.closed


def test_terminate_tree_escalates_to_sigkill():
    child = spawn_python("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    returncode = terminate_tree(child, timeout=0.3)
    assert returncode == -signal.SIGKILL
    assert describe_exit(returncode) == "killed by signal SIGKILL (9)"


def test_terminate_tree_kills_grandchildren_started_without_spawn_child():
    child = spawn_python("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                      start_new_session=True)
        print(grandchild.pid, flush=True)
        time.sleep(60)
    """, stdout=subprocess.PIPE)
    grandchild_pid = int(child.stdout.readline())
    try:
        terminate_tree(child, timeout=3)
        assert wait_until_gone(grandchild_pid)
    finally:
        kill_quietly(grandchild_pid)


def test_terminate_tree_on_a_finished_child_just_reports():
    child = spawn_python("import sys; sys.exit(3)")
    child.wait(timeout=10)
    assert terminate_tree(child) == 3


# ----------------------------------------------------------------------------- describe_exit


@pytest.mark.parametrize("returncode, text", [
    (0, "exit code 0"),
    (1, "exit code 1"),
    (-9, "killed by signal SIGKILL (9)"),
    (-15, "killed by signal SIGTERM (15)"),
    (-200, "killed by signal 200"),
    (None, "still running"),
])
def test_describe_exit(returncode, text):
    assert describe_exit(returncode) == text
