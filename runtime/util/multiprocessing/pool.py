"""multiprocessing.Pool on Nebula actors: map, imap, starmap and apply, blocking or async."""
from __future__ import annotations

import collections
import itertools
import logging
import os
import pickle
import queue
import threading
import time
import weakref
from multiprocessing import TimeoutError
from multiprocessing.pool import RemoteTraceback

import cloudpickle

from ...actor import exit_actor
from ...api import get, init, is_initialized, kill, put, remote, wait
from ...cluster_info import cluster_resources
from ...exceptions import TaskCancelledError, format_remote_traceback

log = logging.getLogger("nebula.util.multiprocessing")
_COLLECT_POLL_S = 0.05


# ---------------------------------------------------------------- failures carried back


class _ExceptionByState:
    """Pickles an exception as class + args + __dict__, for __init__s that take other args."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return _rebuild_exception, (type(exc), exc.args, dict(exc.__dict__))


def _rebuild_exception(cls, args, state):
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _round_trips(value) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(value))
        return True
    except Exception:  # noqa: BLE001 - any failure means "use the next form"
        return False


def _portable(exc: BaseException):
    """exc in a form that unpickles in the caller; a RuntimeError naming it as the last resort."""
    for form in (exc, _ExceptionByState(exc)):
        if _round_trips(form):
            return form
    return RuntimeError(f"{type(exc).__name__}: {exc} (the original exception could not be pickled, "
                        "so this RuntimeError stands in for it)")


class _Failure:
    """What one call raised, carried back to the caller with its remote traceback."""

    def __init__(self, exc: BaseException, tb: str = ""):
        self.exc, self.tb = exc, tb

    def __reduce__(self):
        return _Failure, (_portable(self.exc), self.tb)

    def exception(self) -> BaseException:
        """The original exception, chained to the remote traceback as multiprocessing does."""
        if self.tb:
            self.exc.__cause__ = RemoteTraceback(f'\n"""\n{self.tb}"""')
        return self.exc


def _call(func, args, kwargs):
    try:
        return func(*args, **(kwargs or {}))
    except TaskCancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - goes back to the caller, as in multiprocessing
        return _Failure(exc, format_remote_traceback(exc))


class _PoolProcess:
    """One process of a pool: runs the initializer once, then chunks of calls in order."""

    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def ready(self) -> int:
        return os.getpid()

    def run_chunk(self, func, chunk: list) -> list:
        return [_call(func, args, kwargs) for args, kwargs in chunk]

    def stop(self) -> None:
        exit_actor()


# ---------------------------------------------------------------- chunks and their results


def _as_calls(iterable, star: bool):
    """(args, kwargs) per item: ``func(item)``, or ``func(*item)`` for the star variants."""
    return ((tuple(item), None) if star else ((item,), None) for item in iterable)


def _chunked(calls, size: int):
    calls = iter(calls)
    while chunk := list(itertools.islice(calls, size)):
        yield chunk


def _fetch(ref) -> list:
    """A chunk's outcomes; an error of the whole chunk (e.g. its process died) as one failure."""
    try:
        return get(ref)
    except Exception as exc:  # noqa: BLE001 - raised to the caller where the results are read
        return [_Failure(exc)]


def _first_failure(outcomes: list):
    return next((o for o in outcomes if isinstance(o, _Failure)), None)


def _unwrap(outcome):
    if isinstance(outcome, _Failure):
        raise outcome.exception()
    return outcome


def _time_left(deadline):
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class AsyncResult:
    """The pending result of ``apply_async``/``map_async``/``starmap_async``."""

    def __init__(self, refs: list, single: bool, callback=None, error_callback=None):
        self._slot_of = {ref: i for i, ref in enumerate(refs)}
        self._pending = list(refs)
        self._chunks: list = [None] * len(refs)
        self._single = single
        self._callback, self._error_callback = callback, error_callback
        self._failure: _Failure | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        if not refs:
            self._done.set()

    @property
    def _has_callbacks(self) -> bool:
        return self._callback is not None or self._error_callback is not None

    def ready(self) -> bool:
        """Whether the call has finished (successfully or not)."""
        self.wait(0)
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError while it is not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._failure is None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is ready or ``timeout`` s passed (never raises TimeoutError)."""
        if self._has_callbacks:
            self._done.wait(timeout)  # the pool's result thread finishes it, callbacks first
        else:
            self._collect(timeout)

    def get(self, timeout: float | None = None):
        """The result; re-raises the call's exception; multiprocessing.TimeoutError after ``timeout``."""
        self.wait(timeout)
        if not self._done.is_set():
            raise TimeoutError(f"the result was not ready within {timeout} s")
        if self._failure is not None:
            raise self._failure.exception()
        return self._value()

    def _value(self):
        values = [value for chunk in self._chunks for value in chunk]
        return values[0] if self._single else values

    def _collect(self, timeout) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return
        try:
            while not self._done.is_set():
                ready, _ = wait(self._pending, num_returns=1, timeout=_time_left(deadline))
                if not ready:
                    return
                self._absorb(ready[0])
        finally:
            self._lock.release()

    def _absorb(self, ref) -> None:
        """Record one finished chunk; finish at the first failure or the last chunk."""
        self._pending.remove(ref)
        self._chunks[self._slot_of[ref]] = outcomes = _fetch(ref)
        self._failure = _first_failure(outcomes)
        if self._failure is not None or not self._pending:
            self._finish()

    def _finish(self) -> None:
        try:
            if self._failure is not None and self._error_callback is not None:
                self._error_callback(self._failure.exception())
            elif self._failure is None and self._callback is not None:
                self._callback(self._value())
        except Exception:  # noqa: BLE001 - a broken callback must not stop other results
            log.exception("a Pool callback raised")
        finally:
            self._done.set()


ApplyResult = MapResult = AsyncResult


class _ResultThread(threading.Thread):
    """Finishes the results that have callbacks, like multiprocessing's result-handler thread."""

    def __init__(self):
        super().__init__(name="nebula-pool-results", daemon=True)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.owners: dict = {}  # ref -> AsyncResult
        self.closing = False

    def add(self, result: AsyncResult) -> None:
        self.inbox.put(result)

    def close(self) -> None:
        self.closing = True
        self.inbox.put(None)

    def run(self) -> None:
        try:
            while self.owners or not self.closing:
                self._take_new(block=not self.owners)
                self._collect_ready()
        except Exception as exc:  # noqa: BLE001 - the cluster went away: nothing left to collect
            log.debug("pool result thread ends: %s", exc)

    def _take_new(self, block: bool) -> None:
        try:
            result = self.inbox.get(block=block)
            while True:
                if result is not None:
                    self.owners.update((ref, result) for ref in result._pending)
                result = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _collect_ready(self) -> None:
        if not self.owners:
            return
        ready, _ = wait(list(self.owners), num_returns=1, timeout=_COLLECT_POLL_S)
        for ref in ready:
            result = self.owners.pop(ref)
            result._absorb(ref)
            if result._done.is_set():
                for other in result._pending:
                    self.owners.pop(other, None)


# ---------------------------------------------------------------- imap iterators


class IMapIterator:
    """Results of ``imap`` in input order; two chunks per process are in flight at a time."""

    _per_process = 2  # the next chunk waits at the process, so it never idles between chunks

    def __init__(self, pool: "Pool", func, calls, chunksize: int):
        self._pool, self._func = pool, func
        self._chunks = _chunked(calls, chunksize)
        self._in_flight: collections.deque = collections.deque()  # (ref, process index)
        self._buffer: collections.deque = collections.deque()
        self._lock = threading.Lock()
        window = pool._processes * self._per_process
        for index in itertools.islice(itertools.cycle(range(pool._processes)), window):
            self._submit(index)

    def _submit(self, index: int) -> bool:
        chunk = None if self._pool._terminated else next(self._chunks, None)
        if chunk is not None:
            self._in_flight.append((self._pool._run_chunk(index, self._func, chunk), index))
        return chunk is not None

    def _submit_all(self) -> None:
        """Send every remaining chunk now (the pool is closing: no more lazy submission)."""
        with self._lock:
            for index in itertools.cycle(range(self._pool._processes)):
                if not self._submit(index):
                    return

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: float | None = None):
        """The next result; multiprocessing.TimeoutError if none arrives within ``timeout`` s."""
        with self._lock:
            while not self._buffer:
                self._receive(timeout)
            return _unwrap(self._buffer.popleft())

    def _receive(self, timeout) -> None:
        if not self._in_flight:
            raise StopIteration
        ref, index = self._take_finished(timeout)
        self._buffer.extend(_fetch(ref))
        self._submit(index)

    def _take_finished(self, timeout) -> tuple:
        ref, _ = self._in_flight[0]
        if not wait([ref], timeout=timeout)[0]:
            raise TimeoutError(f"no result within {timeout} s")
        return self._in_flight.popleft()


class IMapUnorderedIterator(IMapIterator):
    """Results of ``imap_unordered`` in the order they finish; each process gets its next chunk
    when it returns one, so a slow call never holds up chunks queued behind it."""

    _per_process = 1

    def _take_finished(self, timeout) -> tuple:
        ready, _ = wait([ref for ref, _ in self._in_flight], num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError(f"no result within {timeout} s")
        entry = next(e for e in self._in_flight if e[0] == ready[0])
        self._in_flight.remove(entry)
        return entry


# ---------------------------------------------------------------- the pool


def _connect(processes, address) -> None:
    if is_initialized():
        return
    if address is not None:
        init(address=address)
    elif os.environ.get("NEBULA_ADDRESS"):
        init()
    else:
        init(num_cpus=processes)


def _check_pool_args(processes, maxtasksperchild) -> None:
    if processes is not None and processes < 1:
        raise ValueError("Number of processes must be at least 1")
    if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
        raise ValueError("maxtasksperchild must be a positive int or None")


def _default_processes() -> int:
    return int(cluster_resources().get("CPU", 0)) or os.cpu_count() or 1


def _check_chunksize(chunksize) -> None:
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")


class Pool:
    """A drop-in for ``multiprocessing.Pool`` whose processes are Nebula actors.

        with Pool() as pool:                       # one process per CPU of the cluster
            pool.map(square, range(100))

    ``initializer(*initargs)`` runs once in each process, so state it sets up (globals, a
    connection) is there for every call that process runs. Exceptions re-raise in the caller
    with their original type. ``ray_address`` joins a running cluster when none is connected;
    ``ray_remote_args`` are the actors' ``.options()``.
    """

    def __init__(self, processes: int | None = None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None, ray_address: str | None = None, ray_remote_args: dict | None = None):
        _check_pool_args(processes, maxtasksperchild)
        _connect(processes, ray_address)
        self._processes = processes or _default_processes()
        self._maxtasksperchild = maxtasksperchild
        self._initializer, self._initargs = initializer, tuple(initargs or ())
        self._actor_class = remote(_PoolProcess).options(**{"num_cpus": 0, **(ray_remote_args or {})})
        self._closed = self._terminated = False
        self._retiring: list = []  # (actor, ref of its stop() call)
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._result_thread: _ResultThread | None = None
        self._next_index = itertools.cycle(range(self._processes))
        self._slots = [self._new_slot() for _ in range(self._processes)]
        self._wait_started()

    def _new_slot(self) -> list:
        """[actor, chunks sent to it]."""
        return [self._actor_class.remote(self._initializer, self._initargs), 0]

    def _wait_started(self) -> None:
        try:
            get([actor.ready.remote() for actor, _ in self._slots])
        except BaseException:
            self.terminate()
            raise

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _run_chunk(self, index: int, func, chunk: list):
        """Send one chunk to process ``index``; replace the process after maxtasksperchild chunks."""
        slot = self._slots[index]
        ref = slot[0].run_chunk.remote(func, chunk)
        slot[1] += 1
        if self._maxtasksperchild and slot[1] >= self._maxtasksperchild:
            self._retiring.append((slot[0], slot[0].stop.remote()))
            self._slots[index] = self._new_slot()
        return ref

    def _default_chunksize(self, count: int) -> int:
        chunksize, extra = divmod(count, self._processes * 4)
        return max(1, chunksize + bool(extra))

    def _result(self, refs: list, single: bool, callback, error_callback) -> AsyncResult:
        result = AsyncResult(refs, single, callback, error_callback)
        if refs and result._has_callbacks:
            if self._result_thread is None:
                self._result_thread = _ResultThread()
                self._result_thread.start()
            self._result_thread.add(result)
        return result

    # ---- apply ---------------------------------------------------------------------------

    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` in one of the pool's processes; its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None) -> AsyncResult:
        """Like ``apply``, returning an AsyncResult; ``callback(result)`` runs when it is done."""
        self._check_running()
        ref = self._run_chunk(next(self._next_index), func, [(tuple(args or ()), dict(kwds or {}))])
        return self._result([ref], True, callback, error_callback)

    # ---- map -----------------------------------------------------------------------------

    def map(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed in chunks across the pool."""
        return self._map_async(func, iterable, chunksize, False, None, None).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed in chunks across the pool."""
        return self._map_async(func, iterable, chunksize, True, None, None).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _map_async(self, func, iterable, chunksize, star, callback, error_callback) -> AsyncResult:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is not None:
            _check_chunksize(chunksize)
        chunks = list(_chunked(_as_calls(items, star), chunksize or self._default_chunksize(len(items))))
        shared = put(func) if len(chunks) > 1 else func  # one copy of func for all chunks
        refs = [self._run_chunk(next(self._next_index), shared, chunk) for chunk in chunks]
        return self._result(refs, False, callback, error_callback)

    # ---- imap ----------------------------------------------------------------------------

    def imap(self, func, iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` in input order, fed lazily from ``iterable``."""
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize: int = 1) -> IMapUnorderedIterator:
        """An iterator of ``func(x)`` in the order the calls finish."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, kind, func, iterable, chunksize: int):
        self._check_running()
        _check_chunksize(chunksize)
        iterator = kind(self, put(func), _as_calls(iterable, False), chunksize)
        self._iterators.add(iterator)
        return iterator

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more work; the processes exit once the work already given is done."""
        if self._closed:
            return
        self._closed = True
        for iterator in list(self._iterators):
            iterator._submit_all()
        self._retiring += [(actor, actor.stop.remote()) for actor, _ in self._slots]
        self._close_result_thread()

    def terminate(self) -> None:
        """Stop the processes now; results not yet computed fail (ActorDiedError)."""
        self._closed = self._terminated = True
        for actor in [actor for actor, _ in self._slots] + [actor for actor, _ in self._retiring]:
            kill(actor)
        self._close_result_thread()

    def join(self) -> None:
        """Wait for the processes of a closed pool to exit (and its callbacks to run)."""
        if not self._closed:
            raise ValueError("Pool is still running")
        refs = [ref for _, ref in self._retiring]
        if refs:
            wait(refs, num_returns=len(refs))
        if self._result_thread is not None:
            self._result_thread.join()

    def _close_result_thread(self) -> None:
        if self._result_thread is not None:
            self._result_thread.close()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc_info):
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self):
        state = "TERMINATED" if self._terminated else "CLOSED" if self._closed else "RUN"
        return f"<nebula.util.multiprocessing.Pool state={state} pool_size={self._processes}>"
