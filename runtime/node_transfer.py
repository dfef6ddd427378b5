"""Object transfer between nodes over a dedicated socket: shared memory straight to the wire.

    puller thread ──connect (role "data") + handshake──► holder's accept thread
                  ──PullObject──►  holder: pin (loop) ─► sendall(view of its arena) ─► unpin
                  ◄──ObjectChunk header (size)──
      allocate here (loop) ─► recv_into(view of our arena) ─► seal (loop)

No Python bytes objects hold the data on either side and the event loops never touch it, so
a transfer runs at socket speed and both nodes keep serving meanwhile.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket

from . import protocol as P
from . import wire

log = logging.getLogger("nebula.node.transfer")
DATA_ROLE = "data"


def run_on_loop(loop: asyncio.AbstractEventLoop, fn, *args, timeout: float = 30.0):
    """Call ``fn(*args)`` on the node's loop from a transfer thread and return its result."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def call():
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            done.set_exception(exc)
    loop.call_soon_threadsafe(call)
    return done.result(timeout)


# ---- the holder's side (an accept thread after the handshake) ------------------------------------

def serve_pull(node, sock: socket.socket) -> None:
    """Answer one PullObject on an authenticated data connection, then close it."""
    try:
        request = _read_message(sock)
        if not isinstance(request, P.PullObject):
            return
        located = run_on_loop(node.loop, _pin_for_transfer, node, request.object_id)
        if isinstance(located, str):
            sock.sendall(wire.encode_frame(P.ObjectChunk(0, request.object_id, 0, 0, error=located)))
            return
        offset, size = located
        try:
            sock.sendall(wire.encode_frame(P.ObjectChunk(0, request.object_id, 0, size)))
            sock.sendall(node.objects.view[offset:offset + size])
        finally:
            node.loop.call_soon_threadsafe(node.objects.unpin, request.object_id, "transfer")
        node.loop.call_soon_threadsafe(lambda: node.emit("object", request.object_id, "TRANSFERRED", size=size))
    except (OSError, wire.ProtocolError, concurrent.futures.TimeoutError) as exc:
        log.warning("object transfer to a peer failed: %s", exc)
    finally:
        sock.close()


def _pin_for_transfer(node, object_id: str):
    objects = node.objects
    rec = objects.records.get(object_id)
    if rec is None or rec.state != "SEALED":
        return "not held here"
    error = objects.restore(rec) if rec.spilled else ""
    if error:
        return error
    objects.pin(rec, "transfer")
    return rec.offset, rec.size


def _read_message(sock: socket.socket) -> P.Msg:
    (length,) = wire._LEN.unpack(wire._recv_exact(sock, 4))
    if length > wire.HANDSHAKE_LIMIT:
        raise wire.ProtocolError("oversized transfer request")
    return wire.decode_message(wire._recv_exact(sock, length))


# ---- the puller's side (an executor thread) --------------------------------------------------

def pull_object(node, address: str, object_id: str) -> str:
    """Copy ``object_id`` from the node at ``address`` into our store; '' or an error text."""
    sock, _welcome, _fds = wire.connect(address, node.token, DATA_ROLE)
    try:
        sock.sendall(wire.encode_frame(P.PullObject(0, object_id)))
        header = _read_message(sock)
        if not isinstance(header, P.ObjectChunk) or header.error:
            return getattr(header, "error", "") or "bad transfer header"
        offset = run_on_loop(node.loop, _allocate_copy, node, object_id, header.total)
        if isinstance(offset, str):
            return offset
        _receive_into(sock, node.objects.view[offset:offset + header.total])
        return ""
    finally:
        sock.close()


def _allocate_copy(node, object_id: str, size: int):
    result = node.objects.allocate(object_id, size, "")
    if not isinstance(result, str):
        node.arena.reserve(result, size)
    return result


def _receive_into(sock: socket.socket, view: memoryview) -> None:
    sock.settimeout(None)
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], min(len(view) - got, 8 * 2**20))
        if n == 0:
            raise ConnectionError("the holding node closed the transfer early")
        got += n
