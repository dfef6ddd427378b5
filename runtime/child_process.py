"""Starts, watches and stops child processes so that no Nebula process is ever orphaned.

Two independent mechanisms tie a child to its parent:

* the lifeline: the child's stdin is a pipe whose write end only the parent holds and never
  writes to. When the parent exits for any reason (or closes it on purpose), the child reads EOF
  and exits, after an optional bounded clean-up hook;
* the parent-death signal: the child asks the kernel (prctl PR_SET_PDEATHSIG) to SIGKILL it
  when its parent goes away. This works even if the lifeline's write end leaked into another
  process (e.g. one the parent forked without exec).

The parent side is spawn_child(); the child side is install_parent_watch(), called first thing
in the child's main, from its main thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

# psutil, ctypes and logging are imported where used, and typing not at all: a node agent
# imports this module to start its first worker before it imports anything else.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Iterable, Mapping, Sequence

    import psutil

    StdStream = int | IO[Any] | None

# Set by spawn_child in the child's environment; install_parent_watch compares it with getppid().
PARENT_PID_ENV = "NEBULA_PARENT_PID"

# How long a child's on_parent_exit hook may run before the child exits regardless.
PARENT_EXIT_HOOK_TIMEOUT_S = 2.0

# Exit status of a child whose parent closed the lifeline (an orderly "you are no longer needed").
LIFELINE_CLOSED_EXIT_CODE = 0
# Exit status of a child that found its parent already gone at start-up.
PARENT_ALREADY_GONE_EXIT_CODE = 1

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _logger():
    import logging
    return logging.getLogger(__name__)


# -------------------------------------------------------------------------------- parent side


def spawn_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Iterable[int] = (),
    stdout: StdStream = None,
    stderr: StdStream = None,
    name: str,
) -> subprocess.Popen:
    """Start `argv` (normally [sys.executable, ...]) as a child tied to this process's lifetime.

    The child's stdin is the lifeline pipe: keep the returned Popen referenced and never write
    to popen.stdin. Dropping the Popen (garbage collection closes popen.stdin) or closing
    popen.stdin tells the child to exit; so does popen.communicate(), which closes stdin first.

    Call this from a thread that lives as long as the child should (the main thread, or a
    long-lived service thread), never from a short-lived worker thread: Linux sends the
    PR_SET_PDEATHSIG signal when the *thread* that forked the child exits, not the process,
    so a child started from a thread that then finishes is SIGKILLed at once.

    argv must run the child directly (exec), not through a shell or wrapper that forks it: the
    child checks that its parent pid is this process's pid and exits otherwise.
    `env` defaults to os.environ; PARENT_PID_ENV is added to it. `name` appears in logs/errors.
    """
    argv = _checked_argv(argv, name)
    child_env = {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}
    try:
        popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, env=child_env, cwd=cwd,
            pass_fds=tuple(pass_fds), close_fds=True, start_new_session=False,
        )
    except OSError as exc:
        _add_note(exc, f"Nebula could not start its {name} process ({argv[0]!r}, cwd={cwd!r}); "
                       "check that the executable exists and the working directory is readable.")
        raise
    _logger().debug("started %s as pid %d: %s", name, popen.pid, argv)
    return popen


def _checked_argv(argv: Sequence[str], name: str) -> list[str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"spawn_child needs a non-empty name for logs and errors, got {name!r}")
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError(f"spawn_child({name!r}) needs argv as a non-empty list, got {argv!r}")
    return [os.fspath(arg) for arg in argv]


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)


def terminate_tree(popen: subprocess.Popen, timeout: float = 3.0) -> int | None:
    """Stop a child and everything it started: SIGTERM, wait `timeout`, SIGKILL, reap.

    Descendants that outlive the child (e.g. ones it started without spawn_child) are SIGKILLed
    afterwards. Returns the child's return code (see describe_exit), or None if even SIGKILL
    did not end it within `timeout` (a process stuck in uninterruptible I/O).
    """
    descendants = _descendants(popen) if popen.poll() is None else []
    if popen.poll() is None:
        popen.terminate()
        if not _wait(popen, timeout):
            popen.kill()
            _wait(popen, timeout)
    _close_lifeline(popen)
    _kill_all(descendants)
    if popen.returncode is None:
        _logger().warning("pid %d survived SIGKILL for %.1f s (stuck in the kernel?)", popen.pid, timeout)
    return popen.returncode


def _descendants(popen: subprocess.Popen) -> list[psutil.Process]:
    """The child's descendants. The child is unreaped here, so its pid cannot have been reused."""
    import psutil
    try:
        return psutil.Process(popen.pid).children(recursive=True)
    except psutil.Error:
        return []


def _wait(popen: subprocess.Popen, timeout: float) -> bool:
    try:
        popen.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _close_lifeline(popen: subprocess.Popen) -> None:
    try:
        if popen.stdin is not None:
            popen.stdin.close()
    except OSError:
        pass


def _kill_all(processes: list[psutil.Process]) -> None:
    import psutil
    for process in processes:
        try:
            process.kill()  # psutil refuses if the pid now belongs to another process
        except psutil.Error:
            pass


def describe_exit(returncode: int | None) -> str:
    """A Popen return code in words: "exit code 1", "killed by signal SIGKILL (9)"."""
    if returncode is None:
        return "still running"
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by signal {signal.Signals(-returncode).name} ({-returncode})"
    except ValueError:
        return f"killed by signal {-returncode}"


# --------------------------------------------------------------------------------- child side


def install_parent_watch(
    on_parent_exit: Callable[[], None] | None = None,
) -> threading.Thread | None:
    """Make this process exit when its parent does. Call first thing in main, on the main thread.

    1. prctl(PR_SET_PDEATHSIG, SIGKILL) (best effort, Linux only);
    2. exit at once if the parent already died before that (getppid() != NEBULA_PARENT_PID);
    3. move the lifeline off fd 0 (fd 0 becomes /dev/null, so input() and grandchildren don't
       see it) and watch it from a daemon thread. On EOF, `on_parent_exit` runs (at most
       PARENT_EXIT_HOOK_TIMEOUT_S seconds, e.g. to stop our own children), then os._exit(0).

    Does nothing and returns None when the process was not started by spawn_child (no
    NEBULA_PARENT_PID, e.g. started by hand from a terminal) or on a second call.
    Returns the watcher thread otherwise.
    """
    expected = os.environ.pop(PARENT_PID_ENV, None)  # our own children must not inherit it
    if expected is None:
        return None
    set_parent_death_signal(signal.SIGKILL)
    _exit_if_parent_gone(_parse_pid(expected))
    lifeline = _take_lifeline_from_stdin()
    if lifeline is None:
        return None
    watcher = threading.Thread(target=_watch_lifeline, args=(lifeline, on_parent_exit),
                               name="nebula-parent-watch", daemon=True)
    watcher.start()
    return watcher


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` to this process when its parent thread exits; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        status = libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(signum)),
                            ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    except (OSError, AttributeError):
        return False
    return status == 0


def _parse_pid(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{PARENT_PID_ENV}={text!r} is not a process id; it is set by "
                         "nebula's spawn_child and should not be set by hand") from None


def _exit_if_parent_gone(expected_ppid: int) -> None:
    actual = os.getppid()
    if actual == expected_ppid:
        return
    _write_stderr(f"nebula: parent process {expected_ppid} is gone (our parent is now pid {actual}); "
                  "exiting. If the parent is alive, it started us through a wrapper that forks "
                  "instead of exec-ing; start Python directly.\n")
    os._exit(PARENT_ALREADY_GONE_EXIT_CODE)


def _take_lifeline_from_stdin() -> int | None:
    """Duplicate fd 0 to a private (non-inheritable) fd and put /dev/null on fd 0."""
    try:
        lifeline = os.dup(0)
    except OSError:
        return None
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return lifeline


def _watch_lifeline(lifeline: int, on_parent_exit: Callable[[], None] | None) -> None:
    """Block until the parent's end of the lifeline closes, then leave."""
    while True:
        try:
            if not os.read(lifeline, 4096):  # parent never writes; ignore it if it does
                break
        except OSError:
            break
    _leave_after_parent(on_parent_exit)


def _leave_after_parent(on_parent_exit: Callable[[], None] | None) -> None:
    last_words = threading.Thread(target=_run_last_words, args=(on_parent_exit,),
                                  name="nebula-on-parent-exit", daemon=True)
    last_words.start()
    last_words.join(PARENT_EXIT_HOOK_TIMEOUT_S)
    os._exit(LIFELINE_CLOSED_EXIT_CODE)


def _run_last_words(on_parent_exit: Callable[[], None] | None) -> None:
    try:
        if on_parent_exit is not None:
            on_parent_exit()
    except BaseException:
        _logger().exception("on_parent_exit hook failed")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _write_stderr(message: str) -> None:
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    except Exception:  # stderr may be a pipe whose reader died with the parent
        pass
