"""Ray-shaped facade over a bare ProcessPoolExecutor: the plain-Python baseline for tasks."""

from concurrent.futures import ProcessPoolExecutor

_session = {}


class RemoteFunction:
    """What `remote(fn)` returns: `.remote(*args)` submits fn to the pool."""

    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return _session["pool"].submit(self._fn, *args)


def init(num_cpus):
    _session["pool"] = ProcessPoolExecutor(num_cpus)


def shutdown():
    _session.pop("pool").shutdown()


def remote(fn):
    return RemoteFunction(fn)


def get(refs):
    if isinstance(refs, list):
        return [future.result() for future in refs]
    return refs.result()
