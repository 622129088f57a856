"""One writer per folder: an OS-level lock on ``<folder>/.lock``, held for a whole run or study point.

The lock is ``fcntl.flock`` on an open file, so the operating system releases it
when its holder exits, however it exits: a lock left by a killed process is free
for the next one to take, and there is never a stale lock file to delete. The
file records who holds it (host, pid, since when) for the message others see.
A child process that inherits the open file (``pass_fds``) shares the lock, so
a folder stays locked for as long as any process working in it lives.

flock is advisory and local: every process that writes a folder must take its
lock, and on a network file system it holds only where the file system
supports flock (NFSv4 and Lustre do; some older mounts do not).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

LOCK_FILE = ".lock"
POLL_SECONDS = 0.2


class FolderBusy(RuntimeError):
    """The folder is locked by another process (``holder`` says which)."""

    def __init__(self, folder: Path, holder: str):
        super().__init__(f"{folder} is in use by {holder}")
        self.folder = folder
        self.holder = holder

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        """Pickle by the constructor's arguments, so the error survives a trip between processes."""
        return FolderBusy, (self.folder, self.holder)


class FolderLock:
    """An exclusive lock on one folder; a context manager.

    ``wait=True`` blocks until the holder finishes (polling, so ``cancelled``
    can stop the wait and ``timeout`` can bound it); ``wait=False`` raises
    :class:`FolderBusy` at once, naming the holder.
    """

    def __init__(self, folder: str | os.PathLike, *, wait: bool = True, timeout: float | None = None,
                 cancelled: Callable[[], bool] | None = None):
        self.folder = Path(folder)
        self.wait = wait
        self.timeout = timeout
        self.cancelled = cancelled
        self.fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> FolderLock:
        """Take the lock (see the class for waiting); records this process as the holder."""
        if self.fd is not None:
            raise RuntimeError(f"{self.folder}: this lock is already held")
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    out_of_time = deadline is not None and time.monotonic() >= deadline
                    if not self.wait or out_of_time or (self.cancelled is not None and self.cancelled()):
                        raise FolderBusy(self.folder, _describe(fd)) from None
                    time.sleep(POLL_SECONDS)
            holder = {"host": socket.gethostname(), "pid": os.getpid(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (closing the file releases it; children that inherited it keep it)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _describe(fd: int) -> str:
    """'host/pid (since T)' from the lock file's record, or 'another process' when it has none yet."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"{holder['host']}/{holder['pid']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s lock now ('host/pid (since T)'), or None when nobody does."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _describe(fd)
    finally:
        os.close(fd)
