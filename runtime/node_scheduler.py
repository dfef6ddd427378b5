"""The node's resource accounting and lease queue: pure logic, no sockets, threads or clocks.

A lease request asks for a worker with a resource shape (``{"CPU": 1, "GPU": 1, ...}``)
and a runtime_env key. ``LeaseQueue.next_grantable`` picks, round-robin across clients so
that one notebook's 10,000 tasks cannot starve another's, the first request whose shape
fits the free resources. Shapes that exceed the node's *total* are infeasible: they stay
queued (they can be cancelled) and are reported once.
"""
from __future__ import annotations

import collections
import dataclasses

EPSILON = 1e-9


class ResourcePool:
    """Total and available amounts per resource, plus which GPU indices are free."""

    def __init__(self, total: dict[str, float]):
        self.total = dict(total)
        self.available = dict(total)
        self.free_gpus = list(range(int(total.get("GPU", 0))))

    def feasible(self, shape: dict) -> bool:
        return all(self.total.get(k, 0.0) + EPSILON >= v for k, v in shape.items())

    def fits(self, shape: dict) -> bool:
        return all(self.available.get(k, 0.0) + EPSILON >= v for k, v in shape.items())

    def shortfall(self, shape: dict) -> str:
        return ", ".join(f"{k}: needs {v:g}, node has {self.total.get(k, 0.0):g}"
                         for k, v in shape.items() if self.total.get(k, 0.0) + EPSILON < v)

    def acquire(self, shape: dict) -> list[int]:
        """Take ``shape`` (must fit); returns the GPU indices assigned to it."""
        for key, value in shape.items():
            self.available[key] = self.available.get(key, 0.0) - value
        whole = int(shape.get("GPU", 0))
        if shape.get("GPU", 0) and not whole:
            return self.free_gpus[:1] or [0]
        gpus, self.free_gpus = self.free_gpus[:whole], self.free_gpus[whole:]
        return gpus

    def release(self, shape: dict, gpus: list[int]) -> None:
        for key, value in shape.items():
            self.available[key] = min(self.total.get(key, 0.0), self.available.get(key, 0.0) + value)
        if int(shape.get("GPU", 0)):
            self.free_gpus = sorted(set(self.free_gpus) | set(gpus))


@dataclasses.dataclass
class LeaseRequest:
    client: str
    request_id: int
    shape: dict
    env_key: str
    runtime_env: bytes = b""
    strategy: str = "DEFAULT"
    warned: bool = False
    forwarded: bool = False
    preferred_node: str = ""


class LeaseQueue:
    """Pending lease requests, served round-robin across clients."""

    def __init__(self):
        self.by_client: dict[str, collections.deque[LeaseRequest]] = {}
        self.turn: collections.deque[str] = collections.deque()

    def add(self, request: LeaseRequest) -> None:
        queue = self.by_client.get(request.client)
        if queue is None:
            queue = self.by_client[request.client] = collections.deque()
            self.turn.append(request.client)
        queue.append(request)

    def cancel(self, client: str, request_id: int) -> bool:
        queue = self.by_client.get(client, ())
        for request in queue:
            if request.request_id == request_id:
                queue.remove(request)
                return True
        return False

    def drop_client(self, client: str) -> None:
        self.by_client.pop(client, None)
        if client in self.turn:
            self.turn.remove(client)

    def __len__(self) -> int:
        return sum(len(q) for q in self.by_client.values())

    def pending(self):
        for queue in self.by_client.values():
            yield from queue

    def next_grantable(self, pool: ResourcePool) -> LeaseRequest | None:
        """Remove and return the next request that fits, taking clients in turn."""
        for _ in range(len(self.turn)):
            client = self.turn[0]
            self.turn.rotate(-1)
            queue = self.by_client.get(client)
            request = next((r for r in queue if pool.fits(r.shape)), None) if queue else None
            if request is not None:
                queue.remove(request)
                return request
        return None
