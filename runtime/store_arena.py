"""The object store's shared memory: one reserved, fd-backed mapping that every local process maps once."""

from __future__ import annotations

import errno
import fcntl
import fractions
import mmap
import os
import re
import shutil
import tempfile
import warnings

from .exceptions import ObjectStoreFullError
from .store_hugepages import STORE_FILE_NAME, HugePageFile

HUGE_PAGE_BACKING = "tmpfs (huge pages)"

MiB = 1 << 20
GiB = 1 << 30
MIN_DEFAULT_CAPACITY = 64 * MiB
MAX_DEFAULT_CAPACITY = 16 * GiB
DEFAULT_FRACTION = 0.3

# fallocate/ftruncate failures that mean "not enough memory here" rather than a bug.
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EOPNOTSUPP, errno.EFBIG})
_UNLIMITED = 1 << 60  # cgroup files report "no limit" as "max" or a huge page-rounded number


class Arena:
    """A shared, writable mapping of ``capacity`` bytes over the file descriptor ``fd``.

    ``create`` makes a new store (memfd, or an unlinked file when memory is short) whose pages
    are reserved up front, so running out of memory is an error at creation rather than a
    SIGBUS on first write. ``attach`` maps a descriptor received from the creator (inherited
    via ``subprocess``'s ``pass_fds`` or received with ``socket.recv_fds``). The fd is
    close-on-exec; ``pass_fds`` makes it inheritable in the child only. The Arena owns its fd
    and closes it in ``close()``.
    """

    def __init__(self, fd: int, capacity: int, backing: str) -> None:
        self.fd = fd
        self.capacity = capacity
        self.backing = backing
        self._mmap: mmap.mmap | None = mmap.mmap(fd, capacity, mmap.MAP_SHARED)
        _advise_huge_pages(self._mmap)
        self._view: memoryview | None = memoryview(self._mmap)
        self._readonly_view: memoryview | None = self._view.toreadonly()

    @classmethod
    def create(cls, capacity: int, fallback_dir: str, huge_pages: HugePageFile | None = None) -> Arena:
        """Reserve ``capacity`` bytes of shared memory, falling back to a file in ``fallback_dir``.

        With ``huge_pages`` (started early, see store_hugepages.py) the memory is that file's
        when it came, else a memfd; ``huge_pages.reason`` then says why."""
        if capacity <= 0:
            raise ValueError(f"object store capacity must be positive, got {capacity} bytes")
        try:
            fd, backing = _reserve_shared(capacity, huge_pages)
        except _MemoryUnavailable as reason:
            fd, path = _reserve_file(capacity, fallback_dir, reason)
            _warn_file_backed(capacity, path, reason)
            return cls(fd, capacity, f"file:{path} (deleted)")
        return cls(fd, capacity, backing)

    @classmethod
    def attach(cls, fd: int, capacity: int) -> Arena:
        """Map an arena fd made by ``create`` in another process; takes ownership of ``fd``."""
        size = os.fstat(fd).st_size
        if size < capacity:
            raise ValueError(
                f"fd {fd} is {size} bytes but the arena is {capacity} bytes: the fd is probably "
                "not the object store's (check the fd number passed to this process)"
            )
        return cls(fd, capacity, _describe_fd(fd))

    RESERVE_CHUNK = 2 * 2**20

    def reserve(self, offset: int, size: int) -> None:
        """Allocate the pages of ``[offset, offset+size)`` now, so writing them can never SIGBUS.

        Raises ObjectStoreFullError when memory (or the fallback disk) is exhausted."""
        if not hasattr(self, "_reserved"):
            self._reserved = bytearray(self.capacity // self.RESERVE_CHUNK + 1)
        first, last = offset // self.RESERVE_CHUNK, (offset + max(size, 1) - 1) // self.RESERVE_CHUNK
        if all(self._reserved[first:last + 1]):
            return
        start = first * self.RESERVE_CHUNK
        length = min(self.capacity, (last + 1) * self.RESERVE_CHUNK) - start
        try:
            os.posix_fallocate(self.fd, start, length)
        except OSError as err:
            raise ObjectStoreFullError(
                f"the machine ran out of memory for the object store ({err}); free memory, or lower "
                "object_store_memory= so that the store fits in what the machine has") from err
        self._reserved[first:last + 1] = b"\x01" * (last + 1 - first)

    def view(self) -> memoryview:
        """Writable memoryview over the whole arena (the same object on every call)."""
        if self._view is None:
            raise ValueError("this arena was closed; attach again to use the object store")
        return self._view

    def readonly_view(self) -> memoryview:
        """Read-only memoryview over the whole arena (the same object on every call)."""
        if self._readonly_view is None:
            raise ValueError("this arena was closed; attach again to use the object store")
        return self._readonly_view

    def close(self) -> None:
        """Release views, unmap and close the fd; buffers still exported keep the mapping alive."""
        for view in (self._readonly_view, self._view):
            if view is not None:
                _release_quietly(view)
        if self._mmap is not None:
            _close_quietly(self._mmap)
        self._readonly_view = self._view = self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Arena(fd={self.fd}, capacity={self.capacity}, backing={self.backing!r})"


class _MemoryUnavailable(Exception):
    """Internal: shared memory could not be reserved; the message says why."""


def _reserve_shared(capacity: int, huge_pages: HugePageFile | None) -> tuple[int, str]:
    """The store's shared memory as ``(fd, backing)``: the huge-page file if it came, else a memfd."""
    fd = huge_pages.result() if huge_pages is not None else None
    available = available_memory()
    if capacity > available:
        if fd is not None:
            os.close(fd)
        raise _MemoryUnavailable(
            f"only {_human(available)} of memory is available for a {_human(capacity)} store"
        )
    if fd is not None:
        return fd, HUGE_PAGE_BACKING
    return _reserve_memfd(capacity), "memfd"


def _reserve_memfd(capacity: int) -> int:
    """A memfd of ``capacity`` bytes, sealed against shrinking and growing."""
    try:
        fd = os.memfd_create("nebula-store", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError) as err:
        raise _MemoryUnavailable(f"memfd_create is unavailable ({err})") from err
    try:
        _reserve(fd, capacity)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    except OSError as err:
        os.close(fd)
        if err.errno not in _NO_ROOM_ERRNOS:
            raise
        raise _MemoryUnavailable(f"shared memory could not be reserved ({err})") from err
    return fd


def _reserve_file(capacity: int, directory: str, reason: Exception) -> tuple[int, str]:
    """An unlinked 0600 file in ``directory`` with ``capacity`` bytes allocated on disk."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        free = shutil.disk_usage(directory).free
        if capacity > free:
            raise OSError(errno.ENOSPC, f"only {_human(free)} free on disk")
        fd, path = tempfile.mkstemp(prefix="nebula-store-", dir=directory)  # 0600, cloexec
    except OSError as err:
        raise _store_full(capacity, directory, reason, err) from err
    os.unlink(path)
    try:
        _reserve(fd, capacity)
    except OSError as err:
        os.close(fd)
        raise _store_full(capacity, directory, reason, err) from err
    return fd, path


def _reserve(fd: int, capacity: int) -> None:
    """Size the arena; pages are reserved on first use (``Arena.reserve``), not up front:
    reserving gigabytes at start-up would cost seconds and commit memory nobody uses."""
    os.ftruncate(fd, capacity)


def _store_full(capacity: int, directory: str, reason: Exception, err: OSError):
    return ObjectStoreFullError(
        f"Could not reserve a {_human(capacity)} object store: {reason}, and the file fallback "
        f"in {directory!r} failed too ({err}). Lower the store size with "
        f"object_store_memory= (for example object_store_memory='1GiB'), free memory, "
        f"or point the fallback directory at a disk with more space."
    )


def _warn_file_backed(capacity: int, path: str, reason: Exception) -> None:
    warnings.warn(
        f"The {_human(capacity)} object store is file-backed ({path}, already unlinked) because "
        f"{reason}. It works, but reads and writes may hit the disk. Free memory or lower "
        f"object_store_memory= (for example object_store_memory='1GiB') to keep it in RAM.",
        RuntimeWarning,
        stacklevel=3,
    )


def _describe_fd(fd: int) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "unknown"
    if target.startswith("/memfd:"):
        return "memfd"
    return HUGE_PAGE_BACKING if target.endswith(f"/{STORE_FILE_NAME} (deleted)") else f"file:{target}"


def _advise_huge_pages(mapping: mmap.mmap) -> None:
    """Ask for 2 MiB pages (honoured for a memfd where shmem_enabled is ``advise``)."""
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass  # no transparent huge pages here: 4 KiB pages work too


def _release_quietly(view: memoryview) -> None:
    try:
        view.release()
    except BufferError:
        pass  # someone still holds a buffer exported from it; the GC finishes the job


def _close_quietly(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:
        pass  # exported buffers are alive; the mapping is unmapped when the last one dies


def default_store_capacity() -> int:
    """Default object store size: ``clamp(0.3 * memory_limit(), 64 MiB, 16 GiB)``.

    ``memory_limit()`` is the memory this process may use: the machine's total RAM, lowered to
    the cgroup limit (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, including parent
    cgroups) when one is set, as in containers and batch jobs.
    """
    wanted = int(DEFAULT_FRACTION * memory_limit())
    return max(MIN_DEFAULT_CAPACITY, min(MAX_DEFAULT_CAPACITY, wanted))


def memory_limit() -> int:
    """Total memory this process may use: RAM, or the tightest cgroup limit if lower."""
    from .node_resources import total_ram
    limits = [_cgroup_limit(directory) for directory in _cgroup_memory_dirs()]
    return min([total_ram()] + [limit for limit in limits if limit])


def available_memory() -> int:
    """Memory that can be allocated now without swapping or hitting a cgroup limit."""
    from .node_resources import meminfo_bytes
    free = meminfo_bytes(b"MemAvailable")  # psutil.virtual_memory().available
    if free is None:
        import psutil
        free = psutil.virtual_memory().available
    available = [free]
    for directory in _cgroup_memory_dirs():
        limit = _cgroup_limit(directory)
        if limit:
            available.append(max(0, limit - _cgroup_usage(directory)))
    return min(available)


def _cgroup_memory_dirs() -> list[str]:
    """This process's memory cgroup directories (v1 and v2), innermost first, with ancestors."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    directories = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            roots = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        elif "memory" in controllers.split(","):
            roots = ["/sys/fs/cgroup/memory"]
        else:
            continue
        directories += [d for root in roots for d in _with_ancestors(root, path)]
    return directories


def _with_ancestors(root: str, path: str) -> list[str]:
    parts = [part for part in path.split("/") if part]
    return [os.path.join(root, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _cgroup_limit(directory: str) -> int | None:
    for name in ("memory.max", "memory.limit_in_bytes"):
        limit = _read_int(os.path.join(directory, name))
        if limit is not None:
            return limit if limit < _UNLIMITED else None
    return None


def _cgroup_usage(directory: str) -> int:
    """Usage not counting inactive page cache (which the kernel reclaims on demand)."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        usage = _read_int(os.path.join(directory, name))
        if usage is not None:
            return max(0, usage - _inactive_file(directory))
    return 0


def _inactive_file(directory: str) -> int:
    try:
        with open(os.path.join(directory, "memory.stat")) as f:
            stats = dict(line.split() for line in f if line.strip())
    except (OSError, ValueError):
        return 0
    return int(stats.get("total_inactive_file", stats.get("inactive_file", 0)))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(?:i?b)?|(b)?)\s*", re.I)


def parse_memory_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MB"``, ``"2GiB"``, ``"1.5G"``, ``"100"``.

    Units are case-insensitive and binary: K, KB and KiB all mean 1024 bytes (likewise M, G,
    T, P). Fractions round down to whole bytes.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"memory size must be an int or a string like '2GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory size must be >= 0 bytes, got {value}")
        return value
    match = _SIZE_PATTERN.fullmatch(value)
    if match is None:
        raise ValueError(
            f"cannot read {value!r} as a memory size; use bytes or a number with a unit, "
            "for example 536870912, '512MB', '2GiB' or '1.5G'"
        )
    number, unit, _ = match.groups()
    return int(fractions.Fraction(number) * _UNITS[(unit or "").lower()])


def _human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
