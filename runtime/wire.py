"""Framed, authenticated connections: the mutual HMAC handshake and the message pump.

A frame is a 4-byte little-endian length and a msgpack-encoded ``protocol.Msg``. Before
authentication only small handshake frames are read (``HANDSHAKE_LIMIT`` bytes, within
``HANDSHAKE_TIMEOUT`` seconds); each side proves it holds the token with an HMAC over both
nonces and its role, so the token never crosses the wire. A malformed or oversized frame
closes that connection (logged), never the process. After the handshake the socket is
handed to an asyncio loop as a ``Connection``, which batches everything queued in one
loop tick into one write.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import struct
import sys
import threading
import types
import typing

import msgspec

from . import protocol as P
from .exceptions import AuthenticationError

log = logging.getLogger("nebula.wire")

VERSION = "0.1.0"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
HANDSHAKE_LIMIT = 4096
HANDSHAKE_TIMEOUT = 5.0
FRAME_LIMIT = 1 << 31
STREAM_LIMIT = 16 * 2**20
_LEN = struct.Struct("<I")



def _encode_other(value):
    """Read-only mappings (state-feed events carry their fields as one) go as plain maps."""
    if isinstance(value, types.MappingProxyType):
        return dict(value)
    raise NotImplementedError(f"cannot send a {type(value).__name__} in a message")


_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_other)
_decoder = msgspec.msgpack.Decoder(typing.Union[P.MESSAGE_TYPES])  # type: ignore[valid-type]


class ProtocolError(Exception):
    """A peer sent something that is not a valid frame: the connection is closed."""


def encode_frame(msg: P.Msg) -> bytes:
    body = _encoder.encode(msg)
    return _LEN.pack(len(body)) + body


def decode_message(body: bytes | memoryview) -> P.Msg:
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"malformed message: {exc}") from None


def _proof(token: bytes, side: bytes, role: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    data = side + b"|" + role.encode() + b"|" + client_nonce + b"|" + server_nonce
    return hmac.new(token, data, hashlib.sha256).digest()


# ---- blocking handshake on a plain socket --------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ProtocolError("peer closed the connection during the handshake")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_handshake_frame(sock: socket.socket) -> P.Msg:
    (length,) = _LEN.unpack(_recv_exact(sock, 4))
    if length > HANDSHAKE_LIMIT:
        raise ProtocolError(f"handshake frame of {length} bytes exceeds {HANDSHAKE_LIMIT}")
    msg = decode_message(_recv_exact(sock, length))
    if not isinstance(msg, (P.Hello, P.Challenge, P.Proof, P.Welcome, P.Refused)):
        raise ProtocolError(f"unexpected {type(msg).__name__} before authentication")
    return msg


def _check_versions(msg, peer: str) -> str | None:
    if msg.version != VERSION or msg.python != PYTHON:
        return (f"version mismatch: this side runs Nebula {VERSION} on Python {PYTHON}, "
                f"the {peer} runs Nebula {msg.version} on Python {msg.python}; "
                "install the same Nebula and Python on both")
    return None


def server_handshake(sock: socket.socket, token: bytes, node_id: str, fds=()) -> str:
    """Authenticate an accepted socket; returns the peer's role. Raises on failure."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    hello = _recv_handshake_frame(sock)
    if not isinstance(hello, P.Hello):
        raise ProtocolError("expected Hello")
    mismatch = _check_versions(hello, "client")
    if mismatch:
        sock.sendall(encode_frame(P.Refused(mismatch)))
        raise ProtocolError(mismatch)
    nonce = os.urandom(16)
    proof = _proof(token, b"server", hello.role, hello.nonce, nonce)
    sock.sendall(encode_frame(P.Challenge(VERSION, PYTHON, nonce, proof)))
    answer = _recv_handshake_frame(sock)
    expected = _proof(token, b"client", hello.role, hello.nonce, nonce)
    if not isinstance(answer, P.Proof) or not hmac.compare_digest(answer.proof, expected):
        sock.sendall(encode_frame(P.Refused("authentication failed: wrong token")))
        raise AuthenticationError("a client failed to authenticate (wrong token)")
    welcome = encode_frame(P.Welcome(node_id, len(fds)))
    if fds:
        socket.send_fds(sock, [welcome], list(fds))
    else:
        sock.sendall(welcome)
    sock.settimeout(None)
    return hello.role


def client_handshake(sock: socket.socket, token: bytes, role: str, address: str):
    """Authenticate a connected socket; returns (Welcome, received fds)."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    nonce = os.urandom(16)
    sock.sendall(encode_frame(P.Hello(VERSION, PYTHON, role, nonce)))
    challenge = _recv_handshake_frame(sock)
    _raise_if_refused(challenge, address)
    mismatch = _check_versions(challenge, f"cluster at {address}")
    if mismatch:
        raise AuthenticationError(mismatch)
    if not hmac.compare_digest(challenge.proof, _proof(token, b"server", role, nonce, challenge.nonce)):
        raise AuthenticationError(
            f"the cluster at {address} could not prove it holds our token: "
            "wrong token file or NEBULA_TOKEN, or not a Nebula cluster")
    sock.sendall(encode_frame(P.Proof(_proof(token, b"client", role, nonce, challenge.nonce))))
    welcome, fds = _recv_welcome(sock, address)
    sock.settimeout(None)
    return welcome, fds


def _recv_welcome(sock: socket.socket, address: str):
    if sock.family == socket.AF_UNIX:
        data, fds, _flags, _addr = socket.recv_fds(sock, HANDSHAKE_LIMIT + 4, 4)
    else:
        data, fds = sock.recv(HANDSHAKE_LIMIT + 4), []
    if len(data) < 4:
        raise AuthenticationError(f"the cluster at {address} closed the connection: wrong token?")
    (length,) = _LEN.unpack(data[:4])
    data += _recv_exact(sock, length + 4 - len(data)) if len(data) < length + 4 else b""
    msg = decode_message(data[4:4 + length])
    _raise_if_refused(msg, address)
    return msg, fds


def _raise_if_refused(msg, address: str) -> None:
    if isinstance(msg, P.Refused):
        raise AuthenticationError(f"the cluster at {address} refused the connection: {msg.reason}")


def connect(address: str, token: bytes, role: str):
    """Open and authenticate a blocking socket to ``unix:PATH`` or ``HOST:PORT``."""
    sock = open_socket(address)
    try:
        welcome, fds = client_handshake(sock, token, role, address)
    except BaseException:
        sock.close()
        raise
    return sock, welcome, fds


def open_socket(address: str) -> socket.socket:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address[5:]
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (host, int(port))
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise ConnectionError(f"cannot reach a Nebula process at {address}: {exc}") from None
    return sock


# ---- the message pump -----------------------------------------------------------------------

class _FrameProtocol(asyncio.StreamReaderProtocol):
    """Hands what arrives straight to its Connection, inside the transport's read callback: no
    stream buffer and no reader task to wake per message. Write flow control (``drain()``) is
    StreamReaderProtocol's, unchanged."""

    def __init__(self, reader: asyncio.StreamReader, loop):
        super().__init__(reader, loop=loop)
        self.conn: Connection | None = None
        self.early: list[bytes] = []  # arrived before the Connection was made
        self.ended = False

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self.early.append(data)
        else:
            self.conn._received(data)

    def eof_received(self) -> bool:
        self.ended = True
        if self.conn is not None:
            self.conn._ended()
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self.ended = True
        if self.conn is not None:
            self.conn._ended()


class Connection:
    """One authenticated peer on an asyncio loop: ``send`` batches, ``run`` dispatches.

    ``send_threadsafe`` lets other threads write too: straight onto the socket when nothing is
    queued or buffered ahead (no wake-up of the loop thread), else queued behind the rest. One
    lock orders every write; the transport itself is only ever touched on the loop thread."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str):
        self.reader, self.writer, self.name = reader, writer, name
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # set by adopt(): the socket for direct writes
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.peer_info: dict = {}
        self._handle: typing.Callable[[P.Msg], None] | None = None
        self._rbuf = bytearray()  # received bytes not yet dispatched (a partial frame, or before run())
        self._need = 4  # bytes _rbuf must hold before a frame can be complete
        self._done: asyncio.Future | None = None  # set when reading ends (EOF, loss, close)

    @classmethod
    async def adopt(cls, sock: socket.socket, name: str) -> "Connection":
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = _FrameProtocol(reader, loop)
        if sock.family == socket.AF_UNIX:
            transport, _ = await loop.create_unix_connection(lambda: protocol, sock=sock)
        else:
            transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        # Large limits: object chunks (4 MiB) must not stall the stream in pause/resume cycles.
        transport.set_write_buffer_limits(high=STREAM_LIMIT)
        conn = cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop), name)
        conn._sock, conn._loop, conn._done = sock, loop, loop.create_future()
        protocol.conn = conn
        for data in protocol.early:
            conn._received(data)
        protocol.early.clear()
        if protocol.ended:
            conn._ended()
        return conn

    def send(self, msg: P.Msg) -> None:
        """Queue a message; everything queued in this loop tick goes out in one write (loop thread)."""
        if self.closed:
            return
        frame = encode_frame(msg)
        with self._lock:
            self._pending.append(frame)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def send_threadsafe(self, msg: P.Msg) -> None:
        """Send from any thread, in order with every other send on this connection.

        When nothing is queued here or buffered in the transport, the frame goes straight onto
        the (non-blocking) socket from this thread; whatever does not fit is queued for the loop.
        The transport buffers only what our own ``_flush`` (under the lock) could not write, so an
        empty buffer seen under the lock stays empty until we release it."""
        frame = encode_frame(msg)
        with self._lock:
            if self.closed:
                return
            transport = self.writer.transport
            if not self._pending and self._sock is not None and not transport.get_write_buffer_size() \
                    and not transport.is_closing():
                try:
                    sent = self._sock.send(frame)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    return  # the link is broken: its reader sees that and reports the loss
                if sent == len(frame):
                    return
                frame = frame[sent:]
            self._pending.append(frame)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                try:
                    self._loop.call_soon_threadsafe(self._flush)
                except RuntimeError:
                    pass  # loop closed: the process is shutting down

    def idle(self) -> bool:
        """Nothing queued here or in the transport's buffer: all sent so far is in the kernel."""
        return not self._pending and not self.writer.transport.get_write_buffer_size()

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if self.closed or not self._pending:
                return
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            try:
                self.writer.write(data)
            except (ConnectionError, RuntimeError):
                self.closed = True

    async def run(self, handle: typing.Callable[[P.Msg], None]) -> None:
        """Hand each message to ``handle`` as it arrives, until EOF, a protocol error or close.

        Messages are decoded and handled inside the transport's read callback, in order."""
        self._handle = handle
        try:
            if self._rbuf and not self.closed:
                self._received(b"")  # what arrived before run()
            await self._done
        finally:
            self.close()

    def _received(self, data: bytes) -> None:
        """Bytes arrived (loop thread): dispatch every whole frame, keep the rest."""
        if self.closed:
            return  # never hand on what arrives after close (e.g. a stale reply)
        rbuf = self._rbuf
        if rbuf or self._handle is None:
            rbuf += data
            if len(rbuf) < self._need or self._handle is None:
                return
            data = rbuf
        view = memoryview(data)
        pos, end, need = 0, len(data), 4
        try:
            while end - pos >= 4:
                (length,) = _LEN.unpack_from(view, pos)
                if length > FRAME_LIMIT:
                    raise ProtocolError(f"frame of {length} bytes exceeds the limit")
                stop = pos + 4 + length
                if stop > end:
                    need = 4 + length
                    break
                msg = decode_message(view[pos + 4:stop])
                pos = stop
                self._handle(msg)
                if self.closed:
                    return
        except ProtocolError as exc:
            log.warning("closing connection %s: %s", self.name, exc)
            self.close()
            return
        except Exception:  # a handler bug must cost this connection, not the process
            log.exception("closing connection %s after an internal error", self.name)
            self.close()
            return
        finally:
            view.release()
        if data is rbuf:
            del rbuf[:pos]
        elif pos < end:
            rbuf += data[pos:]
        self._need = need

    def _ended(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self._flush()
        self.closed = True
        self._ended()
        try:
            self.writer.close()
        except RuntimeError:
            pass
