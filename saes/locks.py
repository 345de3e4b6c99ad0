"""One writer per output directory.

Two runs writing into one directory interleave their logs and replace each other's files
with no error (two ``interp train --out SAME`` both exit 0, two harvests into one store
leave a manifest that matches neither). Every command that writes a directory takes
:func:`directory_lock` first; a second writer gets :class:`DirectoryLockedError` naming the
holder (its pid, host, command and start time) and what to do.

The lock is an advisory ``flock`` on ``<directory>/.lock``: the operating system releases
it when the holder exits, however it exits (a crash or a SIGKILL leaves no stale lock to
clean up). The file itself stays behind, holding the last holder's description; its
presence means nothing. On platforms without ``fcntl`` the lock is not taken.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saes.errors import SAEError, WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class DirectoryLockedError(SAEError):
    """Another process is writing the same output directory."""

    readme = "Nothing lost"


def _holder() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:500],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _describe(raw: bytes) -> str:
    try:
        h = json.loads(raw.decode("utf-8")[:2000])
        return f"pid {int(h['pid'])} on {str(h['host'])[:100]} since {str(h['started'])[:40]} ({str(h['command'])[:200]})"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def _hold(lock_path: Path, what: str, subject: Path, choose: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on ``lock_path``; refuse naming the holder."""
    if fcntl is None:  # pragma: no cover
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        yield
        return
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted at the lock file must not redirect our write elsewhere.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:  # a file in the way, a read-only directory: before any work starts
        raise WriteError(
            err.errno, f"cannot write the {what} {subject}: {err.strerror or err}; choose {choose} you can "
            "write (or make this one writable)"
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            raise DirectoryLockedError(
                f"{what} {subject} is being written by {holder}; wait for it to finish, stop it, or choose {choose}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def directory_lock(directory: str | os.PathLike, *, what: str = "output directory") -> Iterator[Path]:
    """Hold the exclusive write lock on ``directory`` (created if missing) for the block.

    Raises :class:`DirectoryLockedError` at once, without waiting, if another process
    holds it. Locks are per process: nesting the same directory in one process raises too.
    """
    directory = Path(directory)
    with _hold(directory / LOCK_NAME, what, directory, "another directory"):
        yield directory


@contextmanager
def file_lock(path: str | os.PathLike, *, what: str = "output file") -> Iterator[Path]:
    """Hold the exclusive write lock on the single file ``path`` for the block.

    The rules of :func:`directory_lock`, on ``.<name>.lock`` next to the file: a one-file
    output (a corpus) locks only itself, so two files in one directory can be written at once.
    """
    path = Path(path)
    with _hold(path.with_name(f".{path.name}.lock"), what, path, "another file"):
        yield path
