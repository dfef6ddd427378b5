"""``@nebula.remote`` on a class: actor classes, handles, methods, and ``exit_actor()``."""
from __future__ import annotations

import inspect
import pickle

from .options import ActorOptions, make_options
from .remote_function import _returned_refs


def method(*, num_returns: int = 1, concurrency_group=None, **unsupported):
    """``@nebula.method(num_returns=N)`` on an actor method."""
    if unsupported:
        raise TypeError(f"unsupported @method options: {', '.join(unsupported)}")

    def decorate(fn):
        fn.__nebula_num_returns__ = num_returns
        return fn
    return decorate


def exit_actor() -> None:
    """End the current actor from inside one of its methods; later calls get ActorDiedError."""
    from .session import current_session
    from .worker import ExitActor
    if not getattr(current_session().current_task, "actor_id", ""):
        raise TypeError("exit_actor() can only be called inside an actor method")
    raise ExitActor()


def _method_meta(cls) -> dict:
    meta = {}
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        meta[name] = getattr(member, "__nebula_num_returns__", 1)
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            meta["__async__"] = True
    return meta


class ActorClass:
    """A class whose instances live in their own worker process. Create with ``.remote()``."""

    def __init__(self, cls, options: ActorOptions):
        self._cls, self._options = cls, options
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def remote(self, *args, **kwargs) -> "ActorHandle":
        from .session import current_session
        session = current_session()
        meta = _method_meta(self._cls)
        handle_meta = pickle.dumps((self._cls.__name__, meta, self._options.max_task_retries))
        actor_id = session.actors.create(self._cls, args, kwargs, self._options, self._cls.__name__, meta,
                                         handle_meta)
        owns = not (self._options.name or self._options.lifetime == "detached")
        return ActorHandle(actor_id, self._cls.__name__, meta, self._options.max_task_retries, original=owns)

    def options(self, **kwargs) -> "ActorClass":
        return ActorClass(self._cls, make_options(ActorOptions, self._options, **kwargs))

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly; use "
                        f"{self.__name__}.remote(...)")

    def bind(self, *args, **kwargs):
        raise NotImplementedError("Nebula does not support actor DAGs (.bind()) yet; call .remote() instead")


class ActorMethod:
    def __init__(self, handle: "ActorHandle", name: str, num_returns: int):
        self._handle, self._name, self._num_returns = handle, name, num_returns

    def remote(self, *args, **kwargs):
        from .session import current_session
        handle = self._handle
        label = f"{handle._class_name}.{self._name}"
        refs = current_session().actors.submit(handle._actor_id, self._name, args, kwargs, self._num_returns,
                                               handle._max_task_retries, label)
        return _returned_refs(refs, self._num_returns)

    def options(self, num_returns: int | None = None, **unsupported) -> "ActorMethod":
        if unsupported:
            raise TypeError(f"unsupported actor method options: {', '.join(unsupported)}")
        return ActorMethod(self._handle, self._name, self._num_returns if num_returns is None else num_returns)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor methods cannot be called directly; use .{self._name}.remote(...)")


class ActorHandle:
    """A reference to an actor; picklable, so it can be passed to tasks and other actors."""

    def __init__(self, actor_id: str, class_name: str, meta: dict, max_task_retries: int, original: bool = False):
        self._actor_id, self._class_name, self._meta = actor_id, class_name, meta
        self._max_task_retries = max_task_retries
        self._original = original

    def __getattr__(self, name: str):
        meta = self.__dict__.get("_meta", {})
        if name in meta and name != "__async__":
            return ActorMethod(self, name, meta[name])
        raise AttributeError(f"actor {self.__dict__.get('_class_name', '?')} has no method {name!r}")

    def __reduce__(self):
        self._original = False  # a copy escaped: only the cluster knows when it is out of use
        return ActorHandle, (self._actor_id, self._class_name, self._meta, self._max_task_retries)

    def __del__(self):
        if not self.__dict__.get("_original"):
            return
        try:
            from .session import current_session_or_none
            session = current_session_or_none()
            if session is not None and not session.closed:
                session.post(session.actors.handle_released, self._actor_id)
        except Exception:  # noqa: BLE001 - interpreter shutdown: the cluster is going away anyway
            pass

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self):
        return hash(self._actor_id)

    def __repr__(self):
        return f"Actor({self._class_name}, {self._actor_id})"


def handle_from_meta(actor_id: str, meta_bytes: bytes) -> ActorHandle:
    class_name, meta, retries = pickle.loads(meta_bytes)
    return ActorHandle(actor_id, class_name, meta, retries)
