"""Tests for the object store building blocks: extent allocator, shared arena, spill directory."""

from __future__ import annotations

import errno
import os
import random
import re
import socket
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import nebula
from nebula import store_arena
from nebula.exceptions import ObjectStoreFullError
from nebula.store_allocator import ExtentAllocator
from nebula.store_arena import Arena, default_store_capacity, parse_memory_size
from nebula.store_hugepages import ENV_SWITCH, STORE_FILE_NAME, HugePageFile, huge_pages_wanted
from nebula.store_spill import SpillDirectory

MiB = 1 << 20
GiB = 1 << 30


# ----------------------------------------------------------------------------- allocator


def test_offsets_are_aligned_and_sizes_rounded_up():
    allocator = ExtentAllocator(1 * MiB, alignment=64)
    for size in (0, 1, 63, 64, 65, 1000):
        offset = allocator.allocate(size)
        assert offset % 64 == 0
        assert allocator.allocated_size(offset) == max(64, -(-size // 64) * 64)
    assert allocator.used == 64 + 64 + 64 + 64 + 128 + 1024


def test_zero_size_allocations_get_distinct_offsets():
    allocator = ExtentAllocator(4096, alignment=128)
    offsets = {allocator.allocate(0) for _ in range(32)}
    assert len(offsets) == 32
    assert allocator.allocate(0) is None


def test_fragmentation_then_coalescing_in_any_order():
    allocator = ExtentAllocator(4 * 1024, alignment=64)
    a, b, c, d = (allocator.allocate(1024) for _ in range(4))
    assert allocator.largest_free() == 0 and allocator.allocate(0) is None
    allocator.free(a)
    allocator.free(c)
    assert allocator.largest_free() == 1024
    assert allocator.allocate(2048) is None  # 2 KiB free, but not in one piece
    allocator.free(b)  # merges with both neighbours
    assert allocator.largest_free() == 3072
    allocator.free(d)
    assert allocator.used == 0 and allocator.largest_free() == 4096
    assert allocator.allocate(4096) == 0


def test_best_fit_keeps_large_extents_whole():
    allocator = ExtentAllocator(10 * 1024, alignment=64)
    small_gap, _, big_gap, _ = (allocator.allocate(n) for n in (1024, 64, 4096, 64))
    allocator.free(small_gap)
    allocator.free(big_gap)
    assert allocator.allocate(512) == small_gap
    assert allocator.allocate(4096) == big_gap


def test_unaligned_capacity_tail_is_never_handed_out():
    allocator = ExtentAllocator(1000, alignment=64)
    offsets = [allocator.allocate(64) for _ in range(15)]
    assert max(offsets) + 64 <= 1000
    assert allocator.allocate(0) is None


def test_free_rejects_unknown_offsets_and_double_frees():
    allocator = ExtentAllocator(4096)
    offset = allocator.allocate(100)
    with pytest.raises(ValueError, match="not a live allocation"):
        allocator.free(offset + 64)
    allocator.free(offset)
    with pytest.raises(ValueError, match="already freed"):
        allocator.free(offset)
    with pytest.raises(ValueError):
        allocator.allocated_size(offset)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ExtentAllocator(-1)
    with pytest.raises(ValueError):
        ExtentAllocator(1024, alignment=0)
    with pytest.raises(ValueError):
        ExtentAllocator(1024).allocate(-5)


def _longest_free_run(occupied: bytearray) -> int:
    return max((len(run) for run in re.findall(rb"\x00+", bytes(occupied))), default=0)


def test_random_alloc_free_matches_a_byte_map_model():
    """100k random operations; the model is one byte per 64-byte unit (1 = in use)."""
    unit, units = 64, 4096
    allocator = ExtentAllocator(unit * units, alignment=unit)
    occupied = bytearray(units)
    live: list[int] = []
    rng = random.Random(1234)
    for step in range(100_000):
        if live and (rng.random() < 0.45 or allocator.largest_free() == 0):
            offset = live.pop(rng.randrange(len(live)))
            first, count = offset // unit, allocator.allocated_size(offset) // unit
            allocator.free(offset)
            occupied[first : first + count] = bytes(count)
        else:
            size = rng.choice((0, rng.randrange(1, 200), rng.randrange(1, 6000)))
            count = max(1, -(-size // unit))
            offset = allocator.allocate(size)
            if offset is None:
                assert b"\x00" * count not in occupied  # no free run was big enough
                continue
            first = offset // unit
            assert offset % unit == 0 and first + count <= units
            assert occupied.find(1, first, first + count) == -1, "overlapping allocation"
            occupied[first : first + count] = b"\x01" * count
            live.append(offset)
        if step % 2000 == 0:
            assert allocator.used == unit * occupied.count(1)
            assert allocator.largest_free() == unit * _longest_free_run(occupied)
    for offset in live:
        allocator.free(offset)
    assert allocator.used == 0 and allocator.largest_free() == unit * units


def test_100k_live_allocations_then_free_all_coalesces():
    allocator = ExtentAllocator(100_000 * 64, alignment=64)
    offsets = [allocator.allocate(1) for _ in range(100_000)]
    assert None not in offsets and allocator.largest_free() == 0
    random.Random(7).shuffle(offsets)
    for offset in offsets:
        allocator.free(offset)
    assert allocator.largest_free() == allocator.capacity == 100_000 * 64


# ----------------------------------------------------------------------------- arena


def _child_env() -> dict[str, str]:
    """Environment for a child python that imports the same nebula package as this one."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nebula.__file__)))
    if os.path.basename(os.path.dirname(os.path.abspath(nebula.__file__))) == "nebula":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def _run_child(code: str, pass_fds=(), *args: object) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        pass_fds=pass_fds,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_reserves_memfd_and_views_share_memory(tmp_path):
    with Arena.create(1 * MiB, str(tmp_path)) as arena:
        assert arena.backing == "memfd" and arena.capacity == 1 * MiB
        assert os.fstat(arena.fd).st_size == 1 * MiB
        assert arena.view() is arena.view()
        arena.view()[10:15] = b"hello"
        assert bytes(arena.readonly_view()[10:15]) == b"hello"
        with pytest.raises(TypeError):
            arena.readonly_view()[0:1] = b"x"
        assert not os.get_inheritable(arena.fd)
    assert os.listdir(tmp_path) == []


def test_child_attaches_fd_passed_with_pass_fds_and_writes(tmp_path):
    arena = Arena.create(2 * MiB, str(tmp_path))
    child = """
        import sys
        from nebula.store_arena import Arena
        arena = Arena.attach(int(sys.argv[1]), int(sys.argv[2]))
        print(arena.backing)
        arena.view()[4096:4096 + 11] = b"from child!"
        arena.view()[-1] = 42
        arena.close()
    """
    assert _run_child(child, (arena.fd,), arena.fd, arena.capacity).strip() == "memfd"
    assert bytes(arena.view()[4096 : 4096 + 11]) == b"from child!"
    assert arena.view()[-1] == 42
    arena.close()


def test_arena_fd_sent_with_send_fds_from_another_process(tmp_path):
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = f"""
        import socket, sys
        from nebula.store_arena import Arena
        sock = socket.socket(fileno=int(sys.argv[1]))
        arena = Arena.create(1 << 20, {str(tmp_path)!r})
        arena.view()[:13] = b"over a socket"
        socket.send_fds(sock, [str(arena.capacity).encode()], [arena.fd])
        sock.recv(1)  # wait until the parent has mapped it, then drop our copy
        arena.close()
    """
    with parent_end, child_end:
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(child), str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
            env=_child_env(),
        )
        message, fds, _, _ = socket.recv_fds(parent_end, 64, 1)
        arena = Arena.attach(fds[0], int(message))
        parent_end.sendall(b"x")
        assert process.wait(timeout=60) == 0
    assert arena.backing == "memfd"
    assert bytes(arena.view()[:13]) == b"over a socket"  # still mapped after the creator left
    arena.close()


def _pmd_mapped_kib(mapping_name: str) -> int:
    """KiB of this process's mappings of ``mapping_name`` that are mapped in 2 MiB pages."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = mapping_name in line
            elif inside and line.split(":")[0] in ("ShmemPmdMapped", "FilePmdMapped"):
                total += int(line.split()[1])
    return total


def test_store_lives_in_huge_pages_on_a_private_tmpfs(tmp_path):
    mount_dir = tmp_path / "mount"
    mount_dir.mkdir()
    huge_pages = HugePageFile(8 * MiB, str(mount_dir))
    with Arena.create(8 * MiB, str(tmp_path / "spill"), huge_pages) as arena:
        if huge_pages.reason:
            pytest.skip(f"this kernel gives no huge-page tmpfs: {huge_pages.reason}")
        assert arena.backing == store_arena.HUGE_PAGE_BACKING and os.fstat(arena.fd).st_size == 8 * MiB
        arena.view()[: 4 * MiB] = b"\x07" * (4 * MiB)
        assert _pmd_mapped_kib(STORE_FILE_NAME) >= 4096  # written pages are 2 MiB pages
        assert os.listdir(mount_dir) == []  # the mount is the helper's alone, the file unlinked
        child = """
            import sys
            from nebula.store_arena import Arena
            arena = Arena.attach(int(sys.argv[1]), int(sys.argv[2]))
            assert bytes(arena.view()[4 * 2**20 - 3 : 4 * 2**20]) == b"\\x07" * 3
            arena.view()[-2:] = b"ok"
            print(arena.backing)
        """
        assert _run_child(child, (arena.fd,), arena.fd, arena.capacity).strip() == arena.backing
        assert bytes(arena.view()[-2:]) == b"ok"


def test_store_uses_a_memfd_and_says_why_when_huge_pages_are_refused(tmp_path):
    huge_pages = HugePageFile(4 * MiB, str(tmp_path / "no-such-directory"))
    with Arena.create(4 * MiB, str(tmp_path / "spill"), huge_pages) as arena:
        assert arena.backing == "memfd"
    assert "mounting a tmpfs with huge=always" in huge_pages.reason and "No such file" in huge_pages.reason


@pytest.mark.parametrize("value, wanted", [(None, True), ("1", True), ("0", False), ("off", False)])
def test_huge_pages_can_be_turned_off(monkeypatch, value, wanted):
    if value is None:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(ENV_SWITCH, value)
    assert huge_pages_wanted() is wanted


def test_attach_rejects_an_fd_smaller_than_the_capacity(tmp_path):
    with Arena.create(1 * MiB, str(tmp_path)) as arena:
        duplicate = os.dup(arena.fd)
        with pytest.raises(ValueError, match="not the object store"):
            Arena.attach(duplicate, 2 * MiB)
        os.close(duplicate)


def _record_warnings(create):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arena = create()
    return arena, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _check_file_backed(arena, fallback_dir):
    assert arena.backing.startswith(f"file:{fallback_dir}") and arena.backing.endswith("(deleted)")
    assert os.listdir(fallback_dir) == []  # unlinked right after opening
    assert stat.S_IMODE(os.fstat(arena.fd).st_mode) == 0o600
    arena.view()[-5:] = b"works"
    assert bytes(arena.readonly_view()[-5:]) == b"works"


def test_falls_back_to_file_when_memfd_create_is_missing(tmp_path, monkeypatch):
    def no_memfd(*args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    arena, caught = _record_warnings(lambda: Arena.create(4 * MiB, str(tmp_path)))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "file-backed" in message and "memfd_create" in message and "object_store_memory" in message
    _check_file_backed(arena, str(tmp_path))
    arena.close()


def test_pages_are_reserved_on_first_use_and_a_full_machine_gives_store_full(tmp_path, monkeypatch):
    arena = Arena.create(8 * MiB, str(tmp_path))
    real_fallocate, calls = os.posix_fallocate, []

    def fallocate_full_after_one(fd, offset, length):
        calls.append((offset, length))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fallocate(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate_full_after_one)
    arena.reserve(0, 1 * MiB)  # the first use reserves its pages
    arena.reserve(4096, 1000)  # already reserved: no second call
    assert len(calls) == 1
    with pytest.raises(ObjectStoreFullError, match="object_store_memory="):
        arena.reserve(6 * MiB, 1 * MiB)  # the machine is out of memory: an error, never SIGBUS
    arena.view()[:4] = b"ok!!"
    assert bytes(arena.view()[:4]) == b"ok!!"
    arena.close()


def test_capacity_that_cannot_be_reserved_raises_store_full(tmp_path):
    with pytest.raises(ObjectStoreFullError, match="object_store_memory="):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no half-made arena, no warning
            Arena.create(10**15, str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_close_tolerates_exported_buffers(tmp_path):
    arena = Arena.create(1 * MiB, str(tmp_path))
    array = np.frombuffer(arena.view(), dtype=np.uint8, count=16)
    arena.view()[:16] = bytes(range(16))
    arena.close()
    assert arena.fd == -1
    assert array.tolist() == list(range(16))  # mapping kept alive for the exported buffer
    with pytest.raises(ValueError, match="closed"):
        arena.view()
    arena.close()  # idempotent


def test_default_capacity_rule(monkeypatch):
    assert 64 * MiB <= default_store_capacity() <= 16 * GiB
    for limit, expected in ((100 * GiB, 16 * GiB), (100 * MiB, 64 * MiB), (10 * GiB, 3 * GiB)):
        monkeypatch.setattr(store_arena, "memory_limit", lambda limit=limit: limit)
        assert default_store_capacity() == expected


def test_memory_limit_and_available_memory_are_sane():
    assert 0 < store_arena.available_memory() <= store_arena.memory_limit()


@pytest.mark.parametrize(
    "value, expected",
    [
        (1024, 1024),
        (0, 0),
        ("100", 100),
        ("100B", 100),
        ("512MB", 512 * MiB),
        ("512mb", 512 * MiB),
        ("2GiB", 2 * GiB),
        ("1.5G", 3 * GiB // 2),
        (" 10 KiB ", 10 * 1024),
        ("1T", 1 << 40),
        (".5M", MiB // 2),
    ],
)
def test_parse_memory_size(value, expected):
    assert parse_memory_size(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "-1GB", "5 XB", "1.5.5G", "GB", "10 iB", -1])
def test_parse_memory_size_rejects_nonsense(value):
    with pytest.raises(ValueError):
        parse_memory_size(value)


@pytest.mark.parametrize("value", [None, True, 1.5, b"1GB"])
def test_parse_memory_size_rejects_other_types(value):
    with pytest.raises(TypeError):
        parse_memory_size(value)


# ----------------------------------------------------------------------------- spill


def test_spill_round_trip_10mb(tmp_path):
    spill_dir = SpillDirectory(str(tmp_path / "spill"))
    data = np.random.default_rng(0).integers(0, 256, 10 * MiB, dtype=np.uint8)
    object_id = "ab" * 14
    assert spill_dir.spill(object_id, memoryview(data)) == 10 * MiB
    assert spill_dir.contains(object_id) and object_id in spill_dir
    assert spill_dir.size(object_id) == spill_dir.total_bytes == 10 * MiB
    assert stat.S_IMODE(os.stat(spill_dir.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(spill_dir.path, object_id)).st_mode) == 0o600
    restored = np.zeros(10 * MiB + 100, dtype=np.uint8)  # bigger destination is fine
    spill_dir.restore_into(object_id, memoryview(restored))
    assert np.array_equal(restored[: 10 * MiB], data) and not restored[10 * MiB :].any()


def test_spill_into_arena_and_back(tmp_path):
    spill_dir = SpillDirectory(str(tmp_path / "spill"))
    with Arena.create(1 * MiB, str(tmp_path)) as arena:
        arena.view()[:4] = b"spam"
        spill_dir.spill("01", arena.readonly_view()[:4])
        arena.view()[:4] = bytes(4)
        spill_dir.restore_into("01", arena.view()[100:104])
        assert bytes(arena.view()[100:104]) == b"spam"


def test_spill_bookkeeping_delete_and_cleanup(tmp_path):
    spill_dir = SpillDirectory(str(tmp_path / "spill"))
    spill_dir.spill("aa", b"1234")
    spill_dir.spill("bb", b"123456")
    spill_dir.spill("aa", b"12")  # replaces the old copy
    assert spill_dir.total_bytes == 8
    assert sorted(os.listdir(spill_dir.path)) == ["aa", "bb"]
    spill_dir.delete("aa")
    spill_dir.delete("aa")  # already gone: nothing to do
    assert not spill_dir.contains("aa") and spill_dir.total_bytes == 6
    with pytest.raises(KeyError):
        spill_dir.size("aa")
    with pytest.raises(KeyError):
        spill_dir.restore_into("aa", memoryview(bytearray(10)))
    with pytest.raises(ValueError, match="allocate the object's full size"):
        spill_dir.restore_into("bb", memoryview(bytearray(3)))
    spill_dir.cleanup()
    assert not os.path.exists(spill_dir.path) and spill_dir.total_bytes == 0
    spill_dir.spill("cc", b"again")  # recreated on demand
    assert os.listdir(spill_dir.path) == ["cc"]
    spill_dir.cleanup()


@pytest.mark.parametrize("bad_id", ["../escape", "", "xyz", "ab/cd", "ab.partial"])
def test_spill_rejects_ids_that_are_not_hex(tmp_path, bad_id):
    spill_dir = SpillDirectory(str(tmp_path / "spill"))
    with pytest.raises(ValueError, match="hex"):
        spill_dir.spill(bad_id, b"data")
    assert not (tmp_path / "spill").exists()
