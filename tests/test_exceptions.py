"""Tests for nebula.exceptions: dual-class task errors, pickling, and worker-crash messages."""

import os
import pickle
import subprocess
import sys
import threading
import types
import typing

import pytest

from nebula import exceptions
from nebula.exceptions import (
    ActorDiedError, ActorError, ActorUnavailableError, AuthenticationError, GetTimeoutError,
    NebulaError, NodeDiedError, ObjectLostError, ObjectStoreFullError, OwnerDiedError, RayError,
    RayActorError, RayTaskError, RuntimeEnvSetupError, TaskCancelledError, TaskError,
    WorkerCrashedError, capture_task_error, restore_task_error,
)


# ---------------------------------------------------------------- helpers


def _raise(exc):
    raise exc


def _caught(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def _capture(exc, **ids):
    ids = {"function_name": "f", "task_id": "t1", "pid": 123, "node_id": "ab12", **ids}
    return capture_task_error(exc, **ids)


def _round_trip(exc, **ids):
    return restore_task_error(_capture(exc, **ids))


def _nebula_code(source, name):
    """Run source as if it were a file inside the nebula package; return its namespace."""
    filename = os.path.join(os.path.dirname(exceptions.__file__), "fake_worker_for_tests.py")
    namespace = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


class NeedsArgs(Exception):
    init_calls = 0

    def __init__(self, a, b):
        NeedsArgs.init_calls += 1
        super().__init__(f"{a}-{b}")
        self.a, self.b = a, b


class HoldsLock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class ReduceRaises(Exception):
    def __reduce__(self):
        raise RuntimeError("no pickling for you")


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


class BrokenSetState(Exception):
    broken = False

    def __setstate__(self, state):
        if BrokenSetState.broken:
            raise RuntimeError("setstate broke")
        self.__dict__.update(state)


class NoSubclasses(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("NoSubclasses is final")


@typing.final
class MarkedFinal(Exception):
    pass


class StrictNew(Exception):
    def __new__(cls, *args, token):
        return super().__new__(cls, *args)

    def __init__(self, *args, token):
        super().__init__(*args)


# ---------------------------------------------------------------- names and tree


def test_aliases_and_tree():
    assert RayError is NebulaError and RayTaskError is TaskError and RayActorError is ActorError
    assert issubclass(GetTimeoutError, TimeoutError) and issubclass(OwnerDiedError, ObjectLostError)
    assert issubclass(ActorDiedError, ActorError) and issubclass(ActorUnavailableError, ActorError)


# ---------------------------------------------------------------- dual classes


def test_dual_class_is_task_error_and_cause_class():
    cause = ValueError("boom", 2)
    err = TaskError("f", "", cause, pid=1).as_instanceof_cause()
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert err.__cause__ is cause and err.cause is cause and err.args == ("boom", 2)
    assert type(err).__name__ == "TaskError(ValueError)"


def test_except_value_error_catches_restored_error():
    with pytest.raises(ValueError) as info:
        raise _round_trip(_caught(_raise, ValueError("boom")))
    assert isinstance(info.value, TaskError) and "ValueError: boom" in str(info.value)


def test_dual_class_is_cached_per_cause_class():
    first = TaskError("f", "", KeyError("a")).as_instanceof_cause()
    second = TaskError("g", "", KeyError("b")).as_instanceof_cause()
    assert type(first) is type(second)


def test_dual_class_reads_cause_attributes():
    err = TaskError("f", "", NeedsArgs(1, 2)).as_instanceof_cause()
    assert (err.a, err.b) == (1, 2)


def test_dual_never_calls_user_init():
    cause = NeedsArgs("x", "y")
    before = NeedsArgs.init_calls
    err = TaskError("f", "", cause).as_instanceof_cause()
    assert isinstance(err, NeedsArgs) and NeedsArgs.init_calls == before
    assert err.args == ("x-y",)


@pytest.mark.parametrize("cause", [NoSubclasses("x"), MarkedFinal("x"), StrictNew(1, token="t")])
def test_unsubclassable_or_uninstantiable_cause_falls_back(cause):
    err = TaskError("f", "", cause)
    assert err.as_instanceof_cause() is err


def test_nebula_error_cause_is_not_wrapped():
    err = TaskError("f", "", GetTimeoutError())
    assert err.as_instanceof_cause() is err and isinstance(err.cause, GetTimeoutError)


# ---------------------------------------------------------------- messages


def test_str_has_header_traceback_and_exception_line():
    err = _round_trip(_caught(_raise, ValueError("boom")), actor_id="a1")
    first, *rest = str(err).splitlines()
    assert first == "f() (pid=123, node=ab12, task=t1, actor=a1)"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"
    assert any("in _raise" in line for line in rest)


def test_render_traceback_lists_remote_lines():
    lines = _round_trip(_caught(_raise, ValueError("boom")))._render_traceback_()
    assert lines[0] == "TaskError(ValueError): f() (pid=123, node=ab12, task=t1)"
    assert "Traceback (most recent call last):" in lines and lines[-1] == "ValueError: boom"
    assert all("\n" not in line for line in lines)


def test_traceback_without_frames_still_ends_with_exception_line():
    assert str(TaskError("g", cause=KeyError("k"))).splitlines() == ["g()", "KeyError: 'k'"]


# ---------------------------------------------------------------- traceback filtering


def test_nebula_frames_are_dropped():
    run = _nebula_code("def run(fn):\n    return fn()\n", "run")
    def user_code():
        raise ValueError("deep")
    tb = _round_trip(_caught(run, user_code)).traceback_str
    assert "fake_worker_for_tests.py" not in tb
    assert "in user_code" in tb and tb.rstrip().endswith("ValueError: deep")


def test_all_nebula_stack_is_kept():
    make = _nebula_code(
        "def make():\n    try:\n        raise RuntimeError('internal')\n"
        "    except RuntimeError as exc:\n        return exc\n", "make")
    assert "fake_worker_for_tests.py" in exceptions.format_remote_traceback(make())


def test_chained_exceptions_are_formatted():
    def chained():
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    tb = _round_trip(_caught(chained)).traceback_str
    assert "KeyError: 'inner'" in tb and "direct cause" in tb


# ---------------------------------------------------------------- pickling


def test_dual_class_pickle_round_trip():
    err = _round_trip(_caught(_raise, ValueError("boom")), actor_id="a1")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.args == ("boom",)
    assert (back.pid, back.node_id, back.task_id, back.actor_id) == (123, "ab12", "t1", "a1")
    assert str(back) == str(err) and isinstance(back.__cause__, ValueError)


def test_plain_task_error_pickle_round_trip():
    err = TaskError("f", "", GetTimeoutError("slow"), pid=5)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is TaskError and str(back) == str(err) and str(back.cause) == "slow"


@pytest.mark.parametrize("err", [
    GetTimeoutError("waited 5s"),
    WorkerCrashedError.from_exit(-11, "f()"),
    ActorDiedError(actor_id="a1"),
    ActorUnavailableError(actor_id=b"\x01\x02"),
    TaskCancelledError("t9"),
    ObjectLostError(b"\xab\xcd", "node died"),
    OwnerDiedError("ff00"),
    ObjectStoreFullError(),
    NodeDiedError(node_id="n1"),
    AuthenticationError(),
    RuntimeEnvSetupError(error_text="pip failed"),
])
def test_system_errors_pickle_with_fields(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)


def test_object_lost_error_fields():
    err = ObjectLostError(b"\xab\xcd", "node died")
    assert err.object_id == "abcd" and err.reason == "node died" and "abcd" in str(err)


def test_init_args_cause_is_restored():
    err = _round_trip(_caught(_raise, NeedsArgs(1, 2)))
    assert isinstance(err, NeedsArgs) and (err.cause.a, err.cause.b) == (1, 2)
    assert str(err.cause) == "1-2"


# ---------------------------------------------------------------- unpicklable causes


def _assert_text_only(err, cls_name, text):
    assert type(err) is TaskError and err.cause is None and err.cause_cls_name.endswith(cls_name)
    assert f"{cls_name}: {text}" in str(err) and "not available here" in str(err)


def test_exception_holding_a_lock():
    _assert_text_only(_round_trip(_caught(_raise, HoldsLock("locked"))), "HoldsLock", "locked")


def test_exception_whose_reduce_raises():
    _assert_text_only(_round_trip(_caught(_raise, ReduceRaises("r"))), "ReduceRaises", "r")


def test_exception_whose_str_raises_is_captured():
    err = _round_trip(_caught(_raise, StrRaises()))
    assert isinstance(err, TaskError) and "StrRaises" in str(err)


def test_local_class_with_cloudpickle():
    pytest.importorskip("cloudpickle")
    class LocalError(Exception):
        pass
    with pytest.raises(LocalError):
        raise _round_trip(_caught(_raise, LocalError("here")))


def test_local_class_without_cloudpickle(monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    class LocalError(Exception):
        pass
    _assert_text_only(_round_trip(_caught(_raise, LocalError("here"))), "LocalError", "here")


def test_class_missing_on_driver(monkeypatch):
    module = types.ModuleType("nebula_vanishing_module")
    exec("class GoneError(Exception):\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    payload = _capture(_caught(_raise, module.GoneError("gone")))
    monkeypatch.delitem(sys.modules, module.__name__)
    err = restore_task_error(payload)
    _assert_text_only(err, "GoneError", "gone")
    assert err.cause_cls_name == "nebula_vanishing_module.GoneError"


def test_broken_setstate_on_driver(monkeypatch):
    exc = BrokenSetState("bad")
    exc.extra = 1
    payload = _capture(_caught(_raise, exc))
    monkeypatch.setattr(BrokenSetState, "broken", True)
    _assert_text_only(restore_task_error(payload), "BrokenSetState", "bad")


def test_capture_never_raises(monkeypatch):
    monkeypatch.setattr(exceptions, "_task_error_for", lambda *a, **k: 1 / 0)
    err = restore_task_error(_capture(ValueError("v")))
    assert type(err) is TaskError and err.cause_cls_name == "ValueError"
    assert "capturing it failed (ZeroDivisionError" in str(err) and err.task_id == "t1"


def test_corrupt_payload_gives_task_error():
    err = restore_task_error(b"not a pickle")
    assert type(err) is TaskError and "could not be decoded" in str(err)


# ---------------------------------------------------------------- nested errors


def test_system_error_raised_in_task_stays_the_cause():
    err = _round_trip(_caught(_raise, GetTimeoutError("inner get timed out")))
    assert type(err) is TaskError and isinstance(err.cause, GetTimeoutError)
    assert "GetTimeoutError: inner get timed out" in str(err)


def test_nested_task_error_passes_on_the_inner_cause():
    inner = _round_trip(_caught(_raise, ValueError("deep")), function_name="inner")
    outer = _round_trip(_caught(_raise, inner), function_name="outer")
    assert isinstance(outer, ValueError) and str(outer.cause) == "deep"
    assert str(outer).startswith("outer()") and "inner() (pid=123" in str(outer)


# ---------------------------------------------------------------- crossing a real process

_CHILD = """
import sys
from nebula.exceptions import capture_task_error
class ChildOnly(Exception):
    pass
def task():
    raise ChildOnly("from the child")
try:
    task()
except Exception as exc:
    sys.stdout.buffer.write(capture_task_error(
        exc, function_name="task", task_id="t", pid=1, node_id="n"))
"""


def test_payload_from_another_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         check=True, timeout=60).stdout
    err = restore_task_error(out)
    assert isinstance(err, TaskError) and err.cause_cls_name == "ChildOnly"
    assert "ChildOnly: from the child" in str(err) and "in task" in err.traceback_str


# ---------------------------------------------------------------- worker crashes


def test_worker_crash_exit_code():
    err = WorkerCrashedError.from_exit(1, "f()")
    assert str(err).startswith("The worker running f() died unexpectedly: exited with exit code 1")
    assert (err.exit_code, err.signal_name) == (1, None)


def test_worker_crash_sigsegv():
    err = WorkerCrashedError.from_exit(-11, "f()", extra="It will be retried.")
    assert str(err).startswith("The worker running f() died unexpectedly: killed by signal "
                               "SIGSEGV (segmentation fault in user or C-extension code?)")
    assert str(err).endswith("It will be retried.") and err.signal_name == "SIGSEGV"


def test_worker_crash_sigkill():
    err = WorkerCrashedError.from_exit(-9, "Actor.step()")
    assert ("killed by signal SIGKILL (out of memory? the kernel's OOM killer or `kill -9`)"
            in str(err))
    assert err.exit_code is None and "memory" in err.likely_cause


def test_worker_crash_unknown_signal():
    assert "killed by signal 99." in str(WorkerCrashedError.from_exit(-99, "f()"))
