"""Ray-shaped facade over dask.distributed futures: remote tasks, put via scatter, get via gather."""

from distributed import Client, LocalCluster

_session = {}


class RemoteFunction:
    """What `remote(fn)` returns: `.remote(*args)` submits fn as a dask future."""

    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return _session["client"].submit(self._fn, *args, pure=False)


def init(num_cpus):
    cluster = LocalCluster(
        n_workers=num_cpus, threads_per_worker=1, processes=True, dashboard_address=None
    )
    _session["cluster"] = cluster
    _session["client"] = Client(cluster)


def shutdown():
    _session.pop("client").close()
    _session.pop("cluster").close()


def remote(fn):
    return RemoteFunction(fn)


def put(value):
    return _session["client"].scatter(value, hash=False)


def get(refs):
    return _session["client"].gather(refs)
