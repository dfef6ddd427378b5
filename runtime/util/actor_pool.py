"""ActorPool: spread calls over a fixed set of actors and collect results in or out of order."""
from __future__ import annotations

from ..api import get, wait
from ..exceptions import ActorDiedError, GetTimeoutError

_TIMED_OUT = "Timed out waiting for result"


def _key(future):
    """A hashable key for what ``fn`` returned: an ObjectRef, or a list of them."""
    return tuple(future) if isinstance(future, list) else future


def _refs(future) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _is_ready(future, timeout) -> bool:
    refs = _refs(future)
    ready, _ = wait(refs, num_returns=len(refs), timeout=timeout)
    return len(ready) == len(refs)


class ActorPool:
    """Runs ``fn(actor, value)`` on whichever actor is idle (Ray's ``ray.util.ActorPool``).

        pool = ActorPool([Worker.remote(), Worker.remote()])
        list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3]))   # [2, 4, 6]

    ``fn`` must return the ObjectRef (or list of them) of one call; the actor counts as busy
    until its result has been taken with ``get_next``/``get_next_unordered``.
    """

    def __init__(self, actors: list):
        self._idle_actors = list(actors)
        self._future_to_actor: dict = {}      # future key -> (submission index, actor)
        self._index_to_future: dict = {}      # submission index -> future
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list = []      # (fn, value) waiting for an idle actor

    # ---- bulk ----------------------------------------------------------------------------

    def map(self, fn, values):
        """Submit ``fn`` over ``values``; an iterator of the results in submission order."""
        while self.has_next():  # drop results nobody collected, as Ray does
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next)

    def map_unordered(self, fn, values):
        """Like ``map``, but results come back as they finish."""
        while self.has_next():  # let earlier submissions finish first, as Ray does
            self.get_next_unordered()
        for value in values:
            self.submit(fn, value)
        return self._drain(self.get_next_unordered)

    def _drain(self, get_one):
        while self.has_next():
            yield get_one()

    # ---- one at a time -------------------------------------------------------------------

    def submit(self, fn, value) -> None:
        """Run ``fn(actor, value)`` on an idle actor now, or as soon as one becomes idle."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether any submitted result has not been returned yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout=None, ignore_if_timedout=False):
        """The next result in submission order; GetTimeoutError (a TimeoutError) after ``timeout`` s.

        With ``ignore_if_timedout`` a timed-out call is skipped (its actor freed) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = timeout is not None and not _is_ready(future, timeout)
        if timed_out and not ignore_if_timedout:
            raise GetTimeoutError(_TIMED_OUT)
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        return self._finish(future, actor, timed_out)

    def get_next_unordered(self, timeout=None, ignore_if_timedout=False):
        """Whichever result finishes first; GetTimeoutError (a TimeoutError) after ``timeout`` s."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._first_ready(timeout)
        if key is None and not ignore_if_timedout:
            raise GetTimeoutError(_TIMED_OUT)
        timed_out = key is None
        index, actor = self._future_to_actor.pop(next(iter(self._future_to_actor)) if timed_out else key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        return self._finish(future, actor, timed_out)

    def _first_ready(self, timeout):
        """The key of a finished call (earliest submitted first), or None after ``timeout``."""
        by_ref = {_refs(key)[0]: key for key in self._future_to_actor}
        ready, _ = wait(list(by_ref), num_returns=1, timeout=timeout)
        return by_ref[ready[0]] if ready else None

    def _finish(self, future, actor, timed_out: bool):
        if timed_out:
            self._return_actor(actor)
            raise GetTimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")
        alive = True
        try:
            return get(future)
        except ActorDiedError:
            alive = False  # a dead actor never goes back to the idle set
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))

    # ---- membership ----------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self):
        """Remove and return an idle actor, or None when none is free."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it starts idle, taking a waiting submission if any)."""
        busy = [member for _, member in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
