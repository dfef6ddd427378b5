"""Huge pages for the object store: an unlinked file on a private ``tmpfs`` mounted ``huge=always``.

Shared memory in 4 KiB pages is slow to hand out: the kernel allocates, zeroes and maps each
page on its own, which on a common VM costs about 7x a plain memory copy of the same bytes, so
a put into pages never used before runs at a fraction of memory speed, and every process pays
a page-table entry per 4 KiB it touches. In 2 MiB pages the same work is a few hundred calls
per 100 MB instead of 25,600, and a reader's TLB covers 512 times more.

``memfd_create`` gets huge pages only where the administrator enabled them for all shared
memory (``/sys/kernel/mm/transparent_hugepage/shmem_enabled``; ``Arena`` also asks with
``MADV_HUGEPAGE``, which that setting honours when it is ``advise``). A ``tmpfs`` mounted with
``huge=always`` gets them regardless (unless that setting is ``deny``), and any user may mount
one inside a user and mount namespace of its own. So a short-lived helper process
(``HUGE_PAGE_HELPER`` run with ``python -S -c``) enters such a namespace, mounts a tmpfs on a
directory of ours there (nobody outside sees the mount), creates the store file, unlinks it
and sends its descriptor back over a socket pair. The namespace ends with the helper; the
open file keeps its tmpfs alive until the last process of the cluster closes or unmaps it.

Where the kernel refuses (no user namespaces, as under some container or AppArmor policies;
no transparent huge pages), ``HugePageFile.result`` returns None with the reason and the store
uses a memfd as before. ``NEBULA_HUGE_PAGES=0`` turns the attempt off.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

HUGE_PAGE = 2 << 20
ENV_SWITCH = "NEBULA_HUGE_PAGES"
HELPER_TIMEOUT_S = 5.0
STORE_FILE_NAME = "nebula-store"

# Runs in the helper process (``python -S -c``): argv = [socket fd, size, mount directory, file name].
HUGE_PAGE_HELPER = r"""
import ctypes, os, socket, sys
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
libc = ctypes.CDLL(None, use_errno=True)

def check(result, doing):
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{doing}: {os.strerror(number)}")

def write(path, text):
    with open(path, "w") as f:
        f.write(text)

def enter_private_mount_namespace():
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNS) != 0:  # without CAP_SYS_ADMIN: a user namespace of our own first
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"{uid} {uid} 1")
        write("/proc/self/gid_map", f"{gid} {gid} 1")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making our mounts private")

def make_store_file(size, directory):
    options = f"huge=always,size={size},nr_inodes=16,mode=0700".encode()
    check(libc.mount(b"nebula-store", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                     options), "mounting a tmpfs with huge=always")
    path = os.path.join(directory, sys.argv[4])
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    return fd

sock = socket.socket(fileno=int(sys.argv[1]))
try:
    enter_private_mount_namespace()
    fd = make_store_file(int(sys.argv[2]), sys.argv[3])
except OSError as err:
    sock.sendall(f"no {err}".encode())
else:
    socket.send_fds(sock, [b"ok"], [fd])
"""


def huge_pages_wanted() -> bool:
    """False where the user turned huge pages off with NEBULA_HUGE_PAGES=0."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class HugePageFile:
    """Starts the helper at once (it runs while the caller does other work); ``result()`` then
    gives the file's descriptor, or None with ``reason`` saying why there is none.

    ``capacity`` is the store's size (the tmpfs is sized to hold it); ``mount_dir`` an existing
    directory of ours that the helper mounts over in its own namespace only.
    """

    def __init__(self, capacity: int, mount_dir: str) -> None:
        self.capacity = capacity
        self.reason = ""
        self._fd: int | None = None
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        size = -(-capacity // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-S", "-c", HUGE_PAGE_HELPER, str(theirs.fileno()), str(size), mount_dir,
                 STORE_FILE_NAME],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
        except OSError as err:
            self._helper, self.reason = None, f"the helper process could not start ({err})"
        finally:
            theirs.close()

    def result(self, timeout: float = HELPER_TIMEOUT_S) -> int | None:
        """The store file's descriptor (sized to ``capacity``, owned by the caller), or None."""
        if self._helper is not None:
            self._collect(timeout)
        fd, self._fd = self._fd, None
        return fd

    def _collect(self, timeout: float) -> None:
        helper, self._helper = self._helper, None
        self._ours.settimeout(timeout)
        try:
            message, fds, _, _ = socket.recv_fds(self._ours, 512, 1)
        except OSError as err:
            message, fds = f"no answer from the helper ({err})".encode(), []
        finally:
            self._ours.close()
        _end(helper)
        try:
            if message == b"ok" and fds:
                self._fd = fds[0]
                os.ftruncate(self._fd, self.capacity)
            else:
                for fd in fds:
                    os.close(fd)
                self.reason = _reason(message, helper)
        finally:
            helper.stderr.close()


def _end(helper: subprocess.Popen) -> None:
    try:
        helper.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _reason(message: bytes, helper: subprocess.Popen) -> str:
    """Why no file came: the helper's own words, else its exit status and last output."""
    text = message.decode(errors="replace").removeprefix("no ").strip()
    if not text:
        stderr = helper.stderr.read().decode(errors="replace").strip()
        text = f"the helper exited with status {helper.returncode}: {stderr[-300:] or 'no output'}"
    return text
