"""Packing a call's arguments: top-level ObjectRefs become placeholders resolved before the call.

Refs nested in containers stay refs (Ray's semantics). A large top-level argument goes into
the store once (``put``) and travels as a ref, so pipes never carry big payloads.
"""
from __future__ import annotations

from .object_ref import ObjectRef
from .serialization import INLINE_ARG_LIMIT, deserialize, find_unpicklable, serialize


class RefArg:
    """Stands for a top-level ObjectRef argument; replaced by its value in the worker."""

    __slots__ = ("object_id",)

    def __init__(self, object_id: str):
        self.object_id = object_id

    def __reduce__(self):
        return RefArg, (self.object_id,)


def pack_args(session, args: tuple, kwargs: dict, call_name: str):
    """-> (args bytes, top-level dep refs, nested refs). Raises TypeError naming a bad argument."""
    deps: list[ObjectRef] = []
    args = tuple(_placeholder(a, deps) for a in args)
    kwargs = {k: _placeholder(v, deps) for k, v in kwargs.items()}
    obj = _serialize_call(args, kwargs, call_name)
    if obj.total_size > INLINE_ARG_LIMIT:
        args, kwargs = _store_large_args(session, args, kwargs, deps)
        obj = _serialize_call(args, kwargs, call_name)
    return obj.to_bytes(), deps or (), obj.contained or ()  # () allocates nothing (most calls)


def _placeholder(value, deps: list):
    if isinstance(value, ObjectRef):
        deps.append(value)
        return RefArg(value.hex())
    return value


def _store_large_args(session, args, kwargs, deps):
    def stored(value):
        if isinstance(value, RefArg) or serialize(value).total_size <= INLINE_ARG_LIMIT // 4:
            return value
        ref = session.put(value)
        deps.append(ref)
        return RefArg(ref.hex())
    return tuple(stored(a) for a in args), {k: stored(v) for k, v in kwargs.items()}


def _serialize_call(args, kwargs, call_name: str):
    try:
        return serialize((args, kwargs))
    except Exception as exc:
        named = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        culprit = find_unpicklable(named)
        if culprit is None:
            raise TypeError(f"cannot serialize the arguments of {call_name}: {exc}") from exc
        name, value, error = culprit
        raise TypeError(
            f"cannot serialize {name} of {call_name}: {type(value).__name__} object {_short_repr(value)} "
            f"cannot be pickled ({error}). Pass something picklable, or create the object inside "
            "the task instead.") from exc


def _short_repr(value) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a repr that raises still must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def unpack_args(data: bytes, values: dict):
    """Rebuild (args, kwargs), replacing each RefArg with ``values[object_id]``."""
    args, kwargs = deserialize(data)
    if not values:  # no top-level ref arguments, so no RefArg to replace
        return args, kwargs
    args = tuple(values[a.object_id] if isinstance(a, RefArg) else a for a in args)
    kwargs = {k: values[v.object_id] if isinstance(v, RefArg) else v for k, v in kwargs.items()}
    return args, kwargs
