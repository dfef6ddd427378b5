"""Nebula's exception types and the helpers that carry task errors between processes.

Exception tree (``Ray*`` names are aliases of the class on the same line)::

    Exception
     └── NebulaError  (RayError)
          ├── TaskError  (RayTaskError)       user code raised inside a task or actor method
          │    └── TaskError(ValueError) ...  dual classes made by as_instanceof_cause()
          ├── GetTimeoutError                 also a builtin TimeoutError
          ├── WorkerCrashedError
          ├── ActorError  (RayActorError)
          │    ├── ActorDiedError
          │    └── ActorUnavailableError
          ├── TaskCancelledError
          ├── ObjectLostError
          │    └── OwnerDiedError
          ├── ObjectStoreFullError
          ├── NodeDiedError
          ├── AuthenticationError
          └── RuntimeEnvSetupError
"""

import os
import pickle
import signal
import threading
import traceback
import types

__all__ = [
    "NebulaError", "RayError", "TaskError", "RayTaskError", "GetTimeoutError",
    "WorkerCrashedError", "ActorError", "RayActorError", "ActorDiedError",
    "ActorUnavailableError", "TaskCancelledError", "ObjectLostError", "OwnerDiedError",
    "ObjectStoreFullError", "NodeDiedError", "AuthenticationError", "RuntimeEnvSetupError",
    "capture_task_error", "restore_task_error", "format_remote_traceback",
]


def _rebuild_exception(cls, args, state):
    """Recreate an exception from class, args and __dict__ without calling its __init__."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class NebulaError(Exception):
    """Base class of every error Nebula raises; pickles its fields, never re-running __init__."""

    def __reduce__(self):
        return _rebuild_exception, (type(self), self.args, dict(self.__dict__))


RayError = NebulaError


def _hex(value):
    """Printable id: bytes and id objects as hex, anything else as str."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value.hex() if callable(getattr(value, "hex", None)) else str(value)


# ---------------------------------------------------------------- system errors


class GetTimeoutError(NebulaError, TimeoutError):
    """nebula.get / nebula.wait gave up before the objects were ready."""

    def __init__(self, message=None):
        super().__init__(message or (
            "Timed out waiting for the object(s) to be ready. The producing tasks may be "
            "slow, queued for resources, or stuck; pass a larger timeout or check the dashboard."))


class ActorError(NebulaError):
    """An actor could not run a method call."""

    def __init__(self, message=None, *, actor_id=None):
        self.actor_id = None if actor_id is None else _hex(actor_id)
        super().__init__(message or self._describe())

    def _who(self):
        return f"actor {self.actor_id}" if self.actor_id else "actor"

    def _describe(self):
        return f"The {self._who()} could not run this call."


RayActorError = ActorError


class ActorDiedError(ActorError):
    """The actor's process is gone (crashed, killed, or the actor was terminated)."""

    def _describe(self):
        return (f"The {self._who()} died before this call finished: its process exited, was "
                "killed, or nebula.kill() was called. Check the actor's log; pass max_restarts "
                "to restart it automatically.")


class ActorUnavailableError(ActorError):
    """The actor is unreachable for now (restarting or a network problem); it may come back."""

    def _describe(self):
        return (f"The {self._who()} is temporarily unreachable (restarting or a network "
                "problem); the call may or may not have run. Retry it later, and make the method "
                "idempotent if retries must be safe.")


class TaskCancelledError(NebulaError):
    """The task was cancelled with nebula.cancel before it finished."""

    def __init__(self, task_id=None, message=None):
        self.task_id = None if task_id is None else _hex(task_id)
        suffix = f" {self.task_id}" if self.task_id else ""
        super().__init__(message or f"Task{suffix} was cancelled before it finished "
                                    "(nebula.cancel was called on it or on a task it depends on).")


class ObjectLostError(NebulaError):
    """Every copy of an object is gone and it could not be rebuilt."""

    def __init__(self, object_id="", reason="", message=None):
        self.object_id, self.reason = _hex(object_id), reason
        super().__init__(message or self._describe())

    def _describe(self):
        return (f"Object {self.object_id} was lost: {self.reason or 'every copy is gone'}. "
                "Objects made by tasks are rebuilt from lineage only while retries remain "
                "(max_retries); objects from nebula.put cannot be rebuilt.")


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (created its ref) died, so the object is unreachable."""

    def _describe(self):
        return (f"Object {self.object_id} is unreachable because its owner (the worker or driver "
                f"that created it) died{': ' + self.reason if self.reason else ''}. Keep refs "
                "owned by a long-lived process, e.g. return them to the driver instead of "
                "passing refs created inside short-lived tasks.")


class ObjectStoreFullError(NebulaError):
    """The shared-memory object store has no room for a new object."""

    def __init__(self, message=None):
        super().__init__(message or (
            "The object store is full. Drop references you no longer need (del ref), fetch "
            "results in smaller batches, or start the node with a larger object_store_memory."))


class NodeDiedError(NebulaError):
    """A node of the cluster died while work or objects depended on it."""

    def __init__(self, message=None, *, node_id=None):
        self.node_id = None if node_id is None else _hex(node_id)
        super().__init__(message or (
            f"Node {self.node_id or '(unknown)'} died (machine lost, killed, or network cut). "
            "Tasks on it are retried if max_retries allows; check that node's logs."))


class AuthenticationError(NebulaError):
    """A connection was refused because its cluster token did not match."""

    def __init__(self, message=None):
        super().__init__(message or (
            "Connection refused: the cluster token did not match. Connect with the token the "
            "head node printed at start, or the address it wrote to its session file."))


class RuntimeEnvSetupError(NebulaError):
    """The runtime environment for a task or actor could not be set up."""

    def __init__(self, message=None, *, error_text=""):
        self.error_text = error_text
        detail = f":\n{error_text}" if error_text else "."
        super().__init__(message or (
            f"Setting up the runtime environment failed{detail} "
            "Fix the runtime_env (packages, working_dir, env vars) and retry."))


# ---------------------------------------------------------------- worker crashes

_SIGNAL_HINTS = {  # signal name -> (likely cause, what to do)
    "SIGKILL": ("out of memory? the kernel's OOM killer or `kill -9`",
                "Check the node's memory (`dmesg | grep -i oom`) and lower the task's memory "
                "use or run it where more memory is available."),
    "SIGSEGV": ("segmentation fault in user or C-extension code?",
                "Reproduce by calling the function locally; the worker log may hold a native "
                "stack trace (faulthandler)."),
    "SIGBUS": ("bus error: a memory-mapped file was truncated or /dev/shm is full?",
               "Check free space in /dev/shm and files the task memory-maps."),
    "SIGABRT": ("abort() in native code, e.g. a failed assertion in a C/C++ library?",
                "Look at the end of the worker log for the library's error message."),
    "SIGFPE": ("arithmetic error in C-extension code?",
               "Reproduce by calling the function locally."),
    "SIGILL": ("illegal instruction: a native library built for another CPU?",
               "Reinstall the native packages for this machine's CPU."),
    "SIGTERM": ("terminated by `kill`, a shutdown, or the machine's scheduler?",
                "Check what stops processes on that node."),
}
_DEFAULT_ADVICE = "Check the worker's log for what it printed before it died."


def _signal_hint(number):
    """(how it died, signal name, likely cause, advice) for a death by signal `number`."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = str(number)
    return (f"killed by signal {name}", name, *_SIGNAL_HINTS.get(name, ("", _DEFAULT_ADVICE)))


def _exit_hint(exit_code):
    """(how it died, None, likely cause, advice) for a non-negative or unknown exit code."""
    if exit_code is None:
        return "exit status unknown", None, "", _DEFAULT_ADVICE
    likely = ("sys.exit() or os._exit() in the task?" if exit_code == 0
              else "sys.exit(), os._exit(), or a fatal interpreter error?")
    return f"exited with exit code {exit_code}", None, likely, _DEFAULT_ADVICE


class WorkerCrashedError(NebulaError):
    """The worker process died while running a task (signal, exit, or crash)."""

    def __init__(self, message=None, *, exit_code=None, signal_name=None, likely_cause=""):
        self.exit_code, self.signal_name, self.likely_cause = exit_code, signal_name, likely_cause
        super().__init__(message or f"The worker died unexpectedly while running a task. "
                                    f"{_DEFAULT_ADVICE}")

    @classmethod
    def from_exit(cls, exit_code_or_negative_signal, task_desc, extra=""):
        """Build the error from a Popen-style return code (negative = killed by that signal)."""
        code = exit_code_or_negative_signal
        by_signal = code is not None and code < 0
        how, name, likely, advice = _signal_hint(-code) if by_signal else _exit_hint(code)
        cause = f" ({likely})" if likely else ""
        message = f"The worker running {task_desc} died unexpectedly: {how}{cause}. {advice}"
        message += f" {extra}" if extra else ""
        exit_code = None if by_signal else code
        return cls(message, exit_code=exit_code, signal_name=name, likely_cause=likely)


# ---------------------------------------------------------------- remote tracebacks

def _package_dirs(path):
    """The nebula package's folder; in a source checkout (pyproject's package-dir maps runtime/ to
    nebula) nebula.kernel_ext and nebula.widgets live in folders beside it, and are nebula too."""
    here = os.path.dirname(path)
    siblings = ("kernel_ext", "widgets") if os.path.basename(here) == "runtime" else ()
    return [here] + [os.path.join(os.path.dirname(here), name) for name in siblings]


_NEBULA_DIRS = tuple({os.path.join(folder, "")
                      for path in (os.path.abspath(__file__), os.path.realpath(__file__))
                      for folder in _package_dirs(path)})


def _in_nebula(filename):
    """True when a frame's file lives inside the nebula package directory."""
    if not filename or filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    return path.startswith(_NEBULA_DIRS) or os.path.realpath(path).startswith(_NEBULA_DIRS)


def _chained(te, exc):
    """(TracebackException, exception) pairs for te's cause, context and group members."""
    pairs = [(te.__cause__, exc.__cause__), (te.__context__, exc.__context__)]
    return pairs + list(zip(getattr(te, "exceptions", None) or (), getattr(exc, "exceptions", ())))


def _drop_nebula_frames(te, exc, seen):
    """Strip nebula frames from a TracebackException chain, keeping a stack that is all nebula."""
    if te is None or id(te) in seen:
        return
    seen.add(id(te))
    user_frames = [frame for frame in te.stack if not _in_nebula(frame.filename)]
    if user_frames:
        te.stack = traceback.StackSummary.from_list(user_frames)
    if isinstance(exc, TaskError):
        te.__cause__ = None  # a nested TaskError's message already shows its cause
    for child_te, child_exc in _chained(te, exc):
        _drop_nebula_frames(child_te, child_exc, seen)


def format_remote_traceback(exc):
    """Format `exc` with its chain like the interpreter would, keeping user frames only."""
    try:
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        _drop_nebula_frames(te, exc, set())
        return "".join(te.format())
    except Exception:
        return f"{_class_name(type(exc))}: {_safe_str(exc)}\n"


def _class_name(cls):
    """Class name as tracebacks print it: qualified unless builtin or from __main__."""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "Exception")
    module = getattr(cls, "__module__", None)
    return qualname if module in (None, "builtins", "__main__") else f"{module}.{qualname}"


def _safe_str(exc):
    try:
        return str(exc)
    except Exception:
        return f"<str() of {type(exc).__name__} failed>"


def _describe_failure(exc):
    return f"{type(exc).__name__}: {_safe_str(exc)}"


# ---------------------------------------------------------------- pickling causes


def _pickler():
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:
        return pickle


def _defining_class(cls, name):
    return next((klass for klass in cls.__mro__ if name in vars(klass)), object)


def _uses_builtin_pickling(cls):
    """True unless the class customised how it pickles (then only its own way is tried)."""
    hooks = ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__")
    return all(_defining_class(cls, name).__module__ == "builtins" for name in hooks)


class _ByState:
    """Pickles an exception as class + args + __dict__ (for __init__s that take other args)."""

    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return _rebuild_exception, (type(exc), exc.args, dict(exc.__dict__))


def _round_trip(obj):
    """Pickled bytes of obj if they load back here, else the reason they do not."""
    try:
        data = _pickler().dumps(obj)
        pickle.loads(data)
        return data, None
    except Exception as exc:
        return None, _describe_failure(exc)


def _dump_cause(cause):
    """(bytes or None, why not): the cause pickled in a form known to load back."""
    if cause is None:
        return None, None
    data, reason = _round_trip(cause)
    if data is None and _uses_builtin_pickling(type(cause)):
        data = _round_trip(_ByState(cause))[0]
    return data, None if data is not None else f"it could not be pickled ({reason})"


def _load_cause(data):
    """(exception or None, why not) from _dump_cause bytes."""
    if data is None:
        return None, None
    try:
        cause = pickle.loads(data)
    except Exception as exc:
        return None, f"it could not be unpickled here ({_describe_failure(exc)})"
    if not isinstance(cause, BaseException):
        return None, f"it unpickled as a {type(cause).__name__}"
    return cause, None


# ---------------------------------------------------------------- task errors

_TASK_FIELDS = ("function_name", "traceback_str", "cause_cls_name", "cause_text",
                "cause_lost_reason", "pid", "node_id", "task_id", "actor_id")


class TaskError(NebulaError):
    """A user exception raised inside a remote task or actor method, with its remote traceback."""

    def __init__(self, function_name, traceback_str="", cause=None, *, cause_cls_name=None,
                 cause_text=None, cause_lost_reason=None, pid=None, node_id=None,
                 task_id=None, actor_id=None):
        self.function_name, self.cause = function_name, cause
        self.cause_cls_name = cause_cls_name or _class_name(
            Exception if cause is None else type(cause))
        if cause_text is None and cause is not None:
            cause_text = _safe_str(cause)
        self.cause_text = cause_text
        self.traceback_str = traceback_str or self._exception_line() + "\n"
        self.cause_lost_reason = cause_lost_reason
        self.pid = pid
        self.node_id, self.task_id, self.actor_id = (
            None if value is None else _hex(value) for value in (node_id, task_id, actor_id))
        super().__init__(self._message())
        self.__cause__ = cause

    def _exception_line(self):
        text = self.cause_text or ""
        return f"{self.cause_cls_name}: {text}" if text else self.cause_cls_name

    def _header(self):
        name = str(self.function_name)
        call = name if name.endswith(")") else f"{name}()"
        ids = (("pid", self.pid), ("node", self.node_id), ("task", self.task_id),
               ("actor", self.actor_id))
        shown = ", ".join(f"{key}={value}" for key, value in ids if value is not None)
        return f"{call} ({shown})" if shown else call

    def _lost_note(self):
        if self.cause is not None or not self.cause_lost_reason:
            return []
        return [f"(The original {self.cause_cls_name} is not available here because "
                f"{self.cause_lost_reason}; catch nebula.exceptions.TaskError instead.)"]

    def _lines(self):
        return [*self.traceback_str.rstrip("\n").split("\n"), *self._lost_note()]

    def _message(self):
        return "\n".join([self._header(), *self._lines()])

    def __str__(self):
        return self._message()

    def _render_traceback_(self):
        """IPython hook: show the remote traceback instead of the local frames that re-raised it."""
        return [f"{type(self).__name__}: {self._header()}", *self._lines()]

    def as_instanceof_cause(self):
        """This error as an instance of TaskError *and* the cause's class, or self if impossible."""
        cause = self.cause
        if not isinstance(cause, Exception) or isinstance(cause, NebulaError):
            return self  # nothing to mimic, or a Nebula system error kept as the cause
        if isinstance(self, type(cause)):
            return self
        dual_cls = _dual_class(type(cause))
        return self if dual_cls is None else _make_dual(dual_cls, self)

    def _state(self):
        state = {name: self.__dict__.get(name) for name in _TASK_FIELDS}
        state["cause_bytes"], lost = _dump_cause(self.cause)
        state["cause_lost_reason"] = state["cause_lost_reason"] or lost
        return state

    def __reduce__(self):
        return _task_error_from_state, (self._state(), getattr(type(self), "_nebula_dual", False))


RayTaskError = TaskError

_DUAL_CLASSES = {}
_DUAL_LOCK = threading.Lock()


def _delegate_to_cause(self, name):
    """__getattr__ of dual classes: attributes the TaskError lacks come from the cause."""
    cause = self.__dict__.get("cause")
    if cause is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(cause, name)


def _new_dual_class(cause_cls):
    """class TaskError(<cause>)(TaskError, cause_cls), or None when cause_cls refuses subclasses."""
    if getattr(cause_cls, "__final__", False):
        return None
    name = f"TaskError({cause_cls.__name__})"
    body = {"__module__": __name__, "__qualname__": name, "_nebula_dual": True,
            "__getattr__": _delegate_to_cause}
    try:
        return types.new_class(name, (TaskError, cause_cls), exec_body=lambda ns: ns.update(body))
    except Exception:
        return None


def _dual_class(cause_cls):
    with _DUAL_LOCK:
        if cause_cls not in _DUAL_CLASSES:
            _DUAL_CLASSES[cause_cls] = _new_dual_class(cause_cls)
        return _DUAL_CLASSES[cause_cls]


def _make_dual(dual_cls, error):
    """Instance of dual_cls carrying error's fields, made without calling any __init__."""
    cause = error.cause
    for new_args in (cause.args, ()):
        try:
            dual = dual_cls.__new__(dual_cls, *new_args)
            dual.__dict__.update(error.__dict__)
            dual.args = cause.args
            dual.__cause__ = cause
            return dual
        except Exception:
            continue
    return error


def _task_error_from_state(state, as_dual=True):
    """TaskError from a _state() dict; a dual-class instance when the cause loads and allows it."""
    state = dict(state)
    cause, lost = _load_cause(state.pop("cause_bytes", None))
    state["cause_lost_reason"] = state.get("cause_lost_reason") or lost
    error = TaskError(state.pop("function_name"), state.pop("traceback_str"), cause, **state)
    return error.as_instanceof_cause() if as_dual else error


# ---------------------------------------------------------------- crossing processes


def _task_error_for(exc, function_name, **ids):
    """The TaskError a worker reports for exc; a nested TaskError passes on its own cause."""
    nested = isinstance(exc, TaskError)
    cause = exc.cause if nested else exc
    names = {"cause_cls_name": exc.cause_cls_name, "cause_text": exc.cause_text,
             "cause_lost_reason": exc.cause_lost_reason} if nested else {}
    return TaskError(function_name, format_remote_traceback(exc), cause, **names, **ids)


def _plain(value):
    return value if value is None or isinstance(value, (int, str)) else _safe_str(value)


def capture_task_error(exc, *, function_name, task_id, pid, node_id, actor_id=None):
    """Worker side: pickle exc with its remote traceback for restore_task_error; never raises."""
    ids = {"task_id": task_id, "pid": pid, "node_id": node_id, "actor_id": actor_id}
    try:
        return pickle.dumps(_task_error_for(exc, function_name, **ids)._state())
    except Exception as failure:
        reason = f"capturing it failed ({_describe_failure(failure)})"
        return pickle.dumps({"function_name": _plain(function_name), "traceback_str": "",
                             "cause_cls_name": _class_name(type(exc)),
                             "cause_lost_reason": reason,
                             **{key: _plain(value) for key, value in ids.items()}})


def restore_task_error(payload):
    """Driver side: the TaskError (dual-class when possible) from a capture_task_error payload."""
    try:
        state = pickle.loads(payload)
    except Exception as exc:
        text = f"the error payload could not be decoded ({_describe_failure(exc)})"
        return TaskError("<unknown task>", cause_cls_name="TaskError", cause_text=text)
    return _task_error_from_state(state)
