"""Shipping the notebook values a %%remote cell reads: checked first, big ones via the store, local modules by value.

A value that cannot be pickled fails the cell before anything runs, naming the variable.
ObjectRefs travel as refs, so the worker receives their values. A value over ``BIG_VALUE``
is put into the object store once per cell run (every task of the cell then reads the same
copy). Modules the notebook imported from outside site-packages and the standard library
(a ``helpers.py`` beside the notebook) are registered with cloudpickle to ship by value, so
workers run the notebook's current version of them.
"""
from __future__ import annotations

import dataclasses
import os
import site
import sys
import sysconfig

import cloudpickle

import nebula

BIG_VALUE = 100 * 1024 ** 2


class CellShippingError(TypeError):
    """A value the cell reads cannot be sent to the cluster."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]


@dataclasses.dataclass
class Shipment:
    names: tuple = ()
    values: tuple = ()
    notes: tuple = ()

    def add(self, name: str, value) -> None:
        self.names += (name,)
        self.values += (value,)


def ship_names(user_ns: dict, names, hidden: dict, store_over: int | None = None) -> Shipment:
    """The values of ``names`` that the notebook defines, ready to pass as task arguments.

    Values over ``store_over`` bytes (default ``BIG_VALUE``) are put into the object store once
    and travel as refs."""
    store_over = BIG_VALUE if store_over is None else store_over
    register_local_modules()
    shipment = Shipment()
    for name in sorted(names):
        if name in user_ns and not _is_ipython_helper(name, user_ns, hidden):
            shipment.add(name, _prepared(name, user_ns[name], shipment, store_over))
    return shipment


def _is_ipython_helper(name: str, user_ns: dict, hidden: dict) -> bool:
    return name in hidden and user_ns[name] is hidden[name]


def _prepared(name: str, value, shipment: Shipment, store_over: int):
    if isinstance(value, nebula.ObjectRef):
        return value
    size = pickled_size(name, value)
    if size <= store_over:
        return value
    if size > BIG_VALUE:
        shipment.notes += (f"{name} ({_megabytes(size)}) goes to the cluster through the object store; to "
                           f"send it once for many cells, bind {name}_ref = nebula.put({name}) and read "
                           f"{name}_ref in the cell (refs arrive as their values)",)
    return nebula.put(value)


class _Counter:
    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)

    def buffer(self, pickle_buffer) -> None:
        self.size += pickle_buffer.raw().nbytes


def pickled_size(name: str, value) -> int:
    """Bytes ``value`` takes pickled (without copying large buffers); names the variable if it cannot."""
    counter = _Counter()
    try:
        cloudpickle.CloudPickler(counter, protocol=5, buffer_callback=counter.buffer).dump(value)
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot travel
        raise CellShippingError(
            f"%%remote cannot send the variable {name!r} ({type(value).__name__}) to the cluster: {exc}. "
            f"Create it inside the cell instead, or keep it where it lives with --actor") from None
    return counter.size


def _megabytes(size: int) -> str:
    return f"{size / 1024 ** 2:,.0f} MB"


# ---- local modules ship by value --------------------------------------------------------------

_seen_modules: dict = {}


def ignore_modules_loaded_so_far() -> None:
    """Modules imported before the extension loaded are not the notebook's: leave them by reference."""
    for name, module in list(sys.modules.items()):
        _seen_modules.setdefault(name, module)


def register_local_modules() -> list:
    """Register new local top-level modules with cloudpickle (by value); returns their names."""
    if not _seen_modules:
        ignore_modules_loaded_so_far()  # used without the extension loaded: only later imports count
    added = []
    for name, module in list(sys.modules.items()):
        if "." in name or _seen_modules.get(name) is module:
            continue
        _seen_modules[name] = module
        if _is_local_module(name, module):
            cloudpickle.register_pickle_by_value(module)
            added.append(name)
    return added


def _is_local_module(name: str, module) -> bool:
    path = getattr(module, "__file__", None)
    if not path or name.startswith("_") or name == "nebula" or not path.endswith(".py"):
        return False
    path = os.path.realpath(path)
    return not any(path.startswith(root) for root in _library_roots()) and "-packages" not in path


def _library_roots() -> tuple:
    paths = sysconfig.get_paths()
    roots = {paths.get("stdlib"), paths.get("platstdlib"), paths.get("purelib"), paths.get("platlib")}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)
