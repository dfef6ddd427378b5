"""Spilled objects on disk: one private file per object id in a private directory."""

from __future__ import annotations

import os
import re
import shutil
import stat

_OBJECT_ID = re.compile(r"[0-9a-fA-F]+")
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call anyway


class SpillDirectory:
    """Objects spilled out of the shared-memory store, as files named by their hex object id.

    The directory is 0700 and every file 0600. One SpillDirectory owns its directory: sizes
    are tracked in memory, so ``contains``/``size``/``total_bytes`` cost no system calls.
    Files are written under a temporary name and renamed, so a crash or a full disk never
    leaves a truncated file under an object's name. ``cleanup()`` removes the directory; the
    caller is responsible for calling it (it is registered with nothing).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sizes: dict[str, int] = {}
        self._total_bytes = 0
        self._directory_ready = False

    def spill(self, object_id: str, data: memoryview) -> int:
        """Write ``data`` as the object's file (replacing an older one); returns bytes written."""
        final_path = self._path_of(object_id)
        self._ensure_directory()
        temporary_path = f"{final_path}.partial"
        data = memoryview(data).cast("B")
        try:
            _write_file(temporary_path, data)
            os.replace(temporary_path, final_path)
        except BaseException:
            _unlink_if_present(temporary_path)
            raise
        self._total_bytes += data.nbytes - self._sizes.get(object_id, 0)
        self._sizes[object_id] = data.nbytes
        return data.nbytes

    def restore_into(self, object_id: str, dest: memoryview) -> None:
        """Read the object's bytes straight into the start of ``dest`` (no intermediate copy)."""
        size = self.size(object_id)
        dest = memoryview(dest).cast("B")
        if dest.nbytes < size:
            raise ValueError(
                f"destination holds {dest.nbytes} bytes but spilled object {object_id} has "
                f"{size}: allocate the object's full size before restoring it"
            )
        with open(os.open(self._path_of(object_id), _READ_FLAGS), "rb", buffering=0) as f:
            _read_exactly(f, dest[:size], object_id)

    def size(self, object_id: str) -> int:
        """Bytes of the spilled object; KeyError if it is not spilled here."""
        try:
            return self._sizes[object_id]
        except KeyError:
            raise KeyError(f"object {object_id} is not spilled in {self.path}") from None

    def delete(self, object_id: str) -> None:
        """Remove the object's file; deleting an object that is not spilled does nothing."""
        path = self._path_of(object_id)
        size = self._sizes.pop(object_id, None)
        if size is not None:
            self._total_bytes -= size
            _unlink_if_present(path)

    def contains(self, object_id: str) -> bool:
        return object_id in self._sizes

    __contains__ = contains

    @property
    def total_bytes(self) -> int:
        """Bytes of all spilled objects together."""
        return self._total_bytes

    def cleanup(self) -> None:
        """Delete every spilled file and the directory itself; a later spill recreates it."""
        self._sizes.clear()
        self._total_bytes = 0
        self._directory_ready = False
        shutil.rmtree(self.path, ignore_errors=True)

    def _path_of(self, object_id: str) -> str:
        if not isinstance(object_id, str) or not _OBJECT_ID.fullmatch(object_id):
            raise ValueError(f"object ids are hex strings, got {object_id!r}")
        return os.path.join(self.path, object_id)

    def _ensure_directory(self) -> None:
        if self._directory_ready:
            return
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        info = os.lstat(self.path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise PermissionError(
                f"spill directory {self.path} is not a directory owned by this user; "
                "choose another spill path"
            )
        os.chmod(self.path, 0o700)
        self._directory_ready = True

    def __repr__(self) -> str:
        return f"SpillDirectory({self.path!r}, objects={len(self._sizes)}, bytes={self.total_bytes})"


def _write_file(path: str, data: memoryview) -> None:
    _unlink_if_present(path)  # a leftover from an interrupted spill
    fd = os.open(path, _WRITE_FLAGS, 0o600)
    with open(fd, "wb", buffering=0) as f:
        written = 0
        while written < data.nbytes:
            written += f.write(data[written : written + _MAX_WRITE])


def _read_exactly(f, dest: memoryview, object_id: str) -> None:
    done = 0
    while done < dest.nbytes:
        count = f.readinto(dest[done:])
        if not count:
            raise OSError(
                f"spill file for object {object_id} ended after {done} of {dest.nbytes} bytes: "
                "it was truncated or changed outside Nebula (disk full or another process?)"
            )
        done += count


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
