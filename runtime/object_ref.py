"""ObjectRef: a future for a value in the cluster; hashable, picklable, awaitable."""
from __future__ import annotations

import concurrent.futures
import sys


class ObjectRef:
    """A reference to an object owned by some process (``owner`` is its client id).

    Creating one counts a local reference in this process's session; dropping the last
    one lets the cluster free the object. Pickled inside arguments or results, it stays a
    reference (and keeps its object alive) on the other side.
    """

    __slots__ = ("_id", "_owner", "_session", "__weakref__")

    def __init__(self, object_id: str, owner: str, session, *, counted: bool = True):
        self._id, self._owner, self._session = object_id, owner, session
        if counted:
            session.add_local_ref(object_id, owner)
        else:
            self._session = None

    def __del__(self):
        session = self._session
        if session is not None:
            session.remove_local_ref(self._id)

    def hex(self) -> str:
        return self._id

    def binary(self) -> bytes:
        return bytes.fromhex(self._id)

    @property
    def owner(self) -> str:
        return self._owner

    def task_id(self) -> str:
        return self._id[:-4]

    def __hash__(self):
        return hash(self._id)

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self):
        return f"ObjectRef({self._id})"

    def __reduce__(self):
        serialization = sys.modules.get(_SERIALIZATION)  # not imported: no serialization under way
        if serialization is not None:
            serialization.note_serialized_ref(self)
        return _rebuild_ref, (self._id, self._owner)

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future resolved with the value (or the task's error)."""
        return _current_session().value_future(self)

    def __await__(self):
        import asyncio
        return asyncio.wrap_future(self.future()).__await__()


_SERIALIZATION = __name__.rpartition(".")[0] + ".serialization"  # nebula.serialization, imported when used


def _current_session():
    from .session import current_session
    return current_session()


def _rebuild_ref(object_id: str, owner: str) -> ObjectRef:
    from .session import current_session_or_none
    session = current_session_or_none()
    if session is None:
        return ObjectRef(object_id, owner, None, counted=False)
    return session.borrow_ref(object_id, owner)
