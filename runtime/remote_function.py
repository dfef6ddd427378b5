"""``@nebula.remote`` on a function: ``f.remote(...)`` submits a task, ``f.options(...)`` reconfigures."""
from __future__ import annotations

import hashlib

from .options import TaskOptions, make_options
from .serialization import dumps_function


class RemoteFunction:
    """A function that runs as a task on the cluster. Call it with ``.remote()``."""

    def __init__(self, function, options: TaskOptions, pickled: list | None = None):
        self._function = function
        self._options = options
        self._pickled = pickled if pickled is not None else []  # shared by .options() copies
        self.__name__ = getattr(function, "__name__", "task")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__module__ = getattr(function, "__module__", None)
        self.__wrapped__ = function

    def _function_bytes(self) -> tuple[str, bytes]:
        if not self._pickled:
            try:
                data = dumps_function(self._function)
            except Exception as exc:
                raise TypeError(f"cannot serialize the remote function {self.__qualname__}: {exc}. A function "
                                "ships by value with everything it references; move unpicklable globals "
                                "(locks, open files, clients) inside the function") from exc
            self._pickled.append((hashlib.sha1(data).hexdigest(), data))
        return self._pickled[0]

    def remote(self, *args, **kwargs):
        from .session import current_session
        session = current_session()
        function_id, data = self._function_bytes()
        name = self._options.name or self.__name__
        refs = session.tasks.submit(function_id, data, name, args, kwargs, self._options)
        return _returned_refs(refs, self._options.num_returns)

    def options(self, **kwargs) -> "RemoteFunction":
        return RemoteFunction(self._function, make_options(TaskOptions, self._options, **kwargs), self._pickled)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self.__qualname__} cannot be called directly; use "
                        f"{self.__name__}.remote(...) to run it as a task (or {self.__name__}.__wrapped__(...) "
                        "to call the plain function here)")

    def bind(self, *args, **kwargs):
        raise NotImplementedError("Nebula does not support task DAGs (.bind()) yet; call .remote() instead")

    def __repr__(self):
        return f"<RemoteFunction {self.__qualname__}>"


def _returned_refs(refs: list, num_returns: int):
    if num_returns == 1:
        return refs[0]
    if num_returns == 0:
        return None
    return refs
