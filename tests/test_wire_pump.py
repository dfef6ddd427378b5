"""The message pump of ``wire.Connection`` on a socket pair: framing across reads, writes from
many threads at once (``send_threadsafe``), and nothing handed on after a close."""
from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time

import pytest

from nebula import protocol as P
from nebula import wire
from polling import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on_loop(loop, coro, timeout=20):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def message(n: int, size: int = 0) -> P.Msg:
    return P.ExecuteTask(f"t{n}", "", b"", b"x" * size, [], "m", "o", "j")


def read_frames(sock: socket.socket, count: int) -> list:
    """``count`` messages from a blocking socket."""
    buffer, out = b"", []
    while len(out) < count:
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection closed early"
        buffer += chunk
        while len(buffer) >= 4:
            (length,) = struct.unpack_from("<I", buffer)
            if len(buffer) < 4 + length:
                break
            out.append(wire.decode_message(buffer[4:4 + length]))
            buffer = buffer[4 + length:]
    return out


def test_frames_split_anywhere_arrive_whole_and_in_order(loop):
    ours, theirs = socket.socketpair()
    sizes = [0, 10, 3, 200_000, 1, 5 * 2**20, 7, 0, 64 * 1024, 2]
    stream = b"".join(wire.encode_frame(message(i, size)) for i, size in enumerate(sizes))
    early, rest = stream[:5], stream[5:]
    theirs.sendall(early)  # bytes that arrive before run() is called are kept
    conn = on_loop(loop, wire.Connection.adopt(ours, "test"))
    assert wait_until(lambda: len(conn._rbuf) == len(early), timeout=10)  # held until run() is called
    got = []
    done = asyncio.run_coroutine_threadsafe(conn.run(got.append), loop)
    rng = random.Random(7)
    pos = 0
    while pos < len(rest):
        step = rng.choice([1, 2, 3, 4, 5, 100, 4096, 300_000])
        theirs.sendall(rest[pos:pos + step])
        pos += step
        if rng.random() < 0.2:
            time.sleep(0.002)  # separate reads on the other side
    wait_until(lambda: len(got) >= len(sizes), timeout=20)
    assert [m.task_id for m in got] == [f"t{i}" for i in range(len(sizes))]
    assert [len(m.args) for m in got] == sizes
    theirs.close()  # EOF ends run()
    done.result(10)
    assert conn.closed


def test_send_threadsafe_keeps_every_senders_order_and_loses_nothing(loop):
    ours, theirs = socket.socketpair()
    theirs.settimeout(30)
    conn = on_loop(loop, wire.Connection.adopt(ours, "test"))
    threads, per_thread = 4, 300

    def sender(t):
        for i in range(per_thread):
            size = 300_000 if i % 50 == 0 else 10  # large ones fill the socket: queued, then flushed
            conn.send_threadsafe(message(t * 10_000 + i, size))

    def from_loop():
        for i in range(per_thread):
            conn.send(message(90_000 + i))

    workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    loop.call_soon_threadsafe(from_loop)
    assert wait_until(lambda: not conn.idle(), timeout=10), "the socket never filled"  # nobody reads yet:
    # later sends queue behind what the socket could not take
    got = read_frames(theirs, threads * per_thread + per_thread)
    for w in workers:
        w.join(10)
    numbers = [int(m.task_id[1:]) for m in got]
    for t in list(range(threads)) + [9]:
        mine = [n for n in numbers if n // 10_000 == t]
        assert mine == sorted(mine) and len(mine) == per_thread, f"sender {t} out of order or short"
    loop.call_soon_threadsafe(conn.close)
    theirs.close()


def test_nothing_is_handed_on_after_close(loop):
    ours, theirs = socket.socketpair()
    conn = on_loop(loop, wire.Connection.adopt(ours, "test"))
    got = []

    def handle(msg):
        got.append(msg)
        conn.close()  # e.g. a stale link: what follows in the same read must not be read

    done = asyncio.run_coroutine_threadsafe(conn.run(handle), loop)
    theirs.sendall(wire.encode_frame(message(1)) + wire.encode_frame(message(2)))
    done.result(10)
    assert [m.task_id for m in got] == ["t1"]
    theirs.close()
