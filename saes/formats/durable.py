"""Durable files: every file the toolkit writes lands complete or not at all.

One way to write, used by SAEs, checkpoints, stores, corpora, dashboards and models: the
bytes go to a temporary file in the target's directory (the same file system, so the
rename is atomic), are fsync'd, the file is moved into place with ``os.replace`` and the
directory is fsync'd so the rename survives a power cut. A write that fails (disk full,
read-only directory) raises :class:`WriteError` and leaves the previous file as it was,
with no temporary file behind.

The temporary is ``.<name>.<8 random characters>.tmp``: the file itself or, for safetensors
(which writes through a temporary of its own beside its target), a directory holding it;
its writer holds a ``flock`` on it while it lives. A writer killed mid-write leaves it
behind; :func:`remove_stale_temporaries` removes those no live writer holds. Only regular
files are replaced: an output path naming a symlink, FIFO, device, socket or directory is a
:class:`WriteError`, and what is there is left alone.

Every safetensors file written by :func:`atomic_save_tensors` carries the sha256 of its
tensors in its header metadata, checked by :func:`read_tensors`, so a truncated or
corrupted file is named as such instead of being read as garbage. Nothing here unpickles.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saes.errors import FormatError, WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

CHECKSUM_KEY = "saes_sha256"
# Files the toolkit ships should read like any other (temporaries are created 0600).
FILE_MODE = 0o644
# Where no lock tells a live writer's temporary from a dead one's (no flock on this
# platform or file system), a temporary this old is taken as abandoned.
STALE_AFTER_S = 3600.0


# ------------------------------------------------------------------ the primitive


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _what_is(mode: int) -> str:
    kinds = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_replaceable(final: Path) -> None:
    """Raise :class:`WriteError` unless ``final`` is absent or a regular file.

    Writing replaces the file at the path by a rename, which would put a regular file in
    place of a device node (``--out /dev/null`` run as root), a FIFO, a socket or a
    symlink (replacing the link, not what it points to): those are refused, untouched.
    """
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    except OSError:  # e.g. a parent that is not a directory: the write itself says so
        return
    if stat.S_ISREG(st.st_mode):
        return
    what = _what_is(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            what += f" (to {os.readlink(final)})"
        except OSError:
            pass
    raise WriteError(
        errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EEXIST,
        f"could not write {final}: it is {what}, not a regular file, and the toolkit only replaces regular "
        "files; it was left as it is. Choose an output path that names a regular file (or a new one)",
    )


def ensure_directory(directory: Path) -> None:
    """Create ``directory`` (and its parents) if missing; a :class:`WriteError` naming what is
    there when that is not a directory (``--out /dev/null``), or when it cannot be created."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        st = os.stat(directory)  # follows links: a link to a directory is a directory
        raise WriteError(
            errno.ENOTDIR,
            f"could not write into {directory}: it is {_what_is(st.st_mode)}, not a directory; it was left as it "
            "is. Choose an output path that names a directory (or a new one)",
        ) from None
    except OSError as err:
        raise write_error(directory, err) from err


def publish(
    tmp: str | os.PathLike, final: Path, *, mode: int | None = FILE_MODE,
    inspect: Callable[[Path], T] | None = None,
) -> T | None:
    """Move the finished temporary file ``tmp`` onto ``final``, durably.

    fsync, then ``inspect(tmp)`` (e.g. hash what is on disk) whose result is returned,
    ``chmod`` to ``mode`` (None keeps the file's), ``os.replace``, fsync the directory. On
    any failure ``tmp`` is removed and the error is raised as it is (callers say what it
    means for them); ``final`` is then untouched.
    """
    tmp = Path(tmp)
    try:
        fsync_file(tmp)
        seen = inspect(tmp) if inspect is not None else None
        if mode is not None:
            os.chmod(tmp, mode)
        check_replaceable(final)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return seen


# ------------------------------------------------------------------ temporaries


def temporary_name_pattern(name: str) -> re.Pattern[str]:
    """The names of the temporaries written for a file called ``name``: ``tempfile``'s
    ``.<name>.`` + 8 characters of ``[a-z0-9_]`` + ``.tmp`` (a file, or a directory holding it)."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def _lock_held(fd: int, path: Path) -> bool:
    """Take the flock on ``fd`` (the temporary ``path``, just created); False if a cleaner
    holds it or has removed ``path`` meanwhile (then the caller makes another)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: kept unlocked (cleaners then go by age)
        pass
    try:
        return os.fstat(fd).st_ino == os.lstat(path).st_ino
    except FileNotFoundError:
        return False


def _temporary(final: Path, *, directory: bool = False) -> tuple[Path, int | None]:
    """A new temporary for ``final`` in its directory, held (flock) by this process while it
    lives: a file, or with ``directory`` a directory to write ``final.name`` in (for writers
    such as safetensors that write through a temporary of their own beside their target)."""
    for _ in range(8):
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
            if fcntl is None:  # pragma: no cover - Windows
                return tmp, None
            try:
                fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
            except FileNotFoundError:  # removed by a cleaner before it was held
                continue
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            tmp = Path(name)
            if fcntl is None:  # pragma: no cover - Windows
                os.close(fd)
                return tmp, None
        if _lock_held(fd, tmp):
            return tmp, fd
        os.close(fd)
    raise OSError(errno.EAGAIN, "temporary files in this directory keep being removed by another process")


def _release(tmp: Path | None, fd: int | None) -> None:
    """Remove the temporary ``tmp`` (if still there), then let go of its lock."""
    if tmp is not None:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)


def _remove_if_abandoned(path: Path) -> bool:
    """Remove the temporary ``path`` if no live writer holds it; whether it was removed."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    is_dir = stat.S_ISDIR(st.st_mode)
    if not (is_dir or stat.S_ISREG(st.st_mode)):  # links, pipes...: never ours
        return False
    old = time.time() - st.st_mtime > STALE_AFTER_S
    if fcntl is None:  # pragma: no cover - Windows
        fd = None
    else:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
        except OSError:
            return False
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer is alive
            except OSError:  # no flock on this file system: only age tells
                if not old:
                    return False
            # Still the same file under that name (not renamed into place meanwhile)?
            if os.fstat(fd).st_ino != os.lstat(path).st_ino:
                return False
        elif not old:
            return False
        if is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Remove the temporaries that writers of the files ``names`` in ``directory`` left when
    they were killed mid-write; returns what was removed.

    Only names of this module's own pattern (:func:`temporary_name_pattern`) are looked at,
    and only those no live writer holds (its ``flock``; where there is no flock, those
    older than ``STALE_AFTER_S``): a concurrent writer's temporary is left alone.
    """
    patterns = [temporary_name_pattern(n) for n in names]
    try:
        entries = [e.name for e in os.scandir(directory)]
    except OSError:
        return []
    removed = []
    for name in entries:
        if any(p.fullmatch(name) for p in patterns):
            path = Path(directory) / name
            if _remove_if_abandoned(path):
                removed.append(path)
    return removed


def os_error_of(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``: itself, or the one safetensors reports as
    text ("I/O error: No space left on device (os error 28)")."""
    if isinstance(err, WriteError):
        return None
    if isinstance(err, OSError):
        return err
    m = re.search(r"\(os error (\d+)\)", str(err))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_error(final: Path, err: OSError) -> WriteError:
    previous = "the previous version is intact" if final.exists() else "nothing was written"
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(
        err.errno,
        f"could not write {final}: {reason}; {previous}. Free disk space or choose a writable "
        "directory, then run again (with --resume / resume=True to continue a training run)",
    )


def _as_write_error(final: Path, err: BaseException) -> None:
    """Raise ``err``'s operating-system error as a :class:`WriteError` about ``final``."""
    os_err = os_error_of(err)
    if os_err is not None:
        raise write_error(final, os_err) from err


# ------------------------------------------------------------------ writers


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, own_directory: bool = False) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file, then :func:`publish` it as ``path``.

    Any failure leaves ``path`` untouched and no temporary file behind; an ``OSError``
    (full disk, read-only directory, missing permission) becomes a :class:`WriteError`
    that says so, as does a ``path`` that is not a regular file (:func:`check_replaceable`).
    ``own_directory`` puts the temporary file in a temporary directory of its own, for a
    ``write`` that itself writes through a temporary beside the path it is given.
    """
    final = Path(path)
    check_replaceable(final)  # before anything is created next to it
    tmp: Path | None = None
    held: int | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp, held = _temporary(final, directory=own_directory)
        staged = tmp / final.name if own_directory else tmp
        write(str(staged))
        publish(staged, final)
    except BaseException as err:
        _as_write_error(final, err)
        raise
    finally:
        _release(tmp, held)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_files(directory: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)`` to create files in a temporary directory next to ``directory``,
    then :func:`publish` each of them into ``directory`` (in name order).

    Nothing reaches ``directory`` unless ``write`` succeeds for every file, and each file
    lands complete or not at all; the temporary directory is removed either way. For
    writers that only write into a directory (``save_pretrained``).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        write(tmp)
        for f in sorted(tmp.iterdir()):
            check_replaceable(out / f.name)
        for f in sorted(tmp.iterdir()):
            publish(f, out / f.name)
    except BaseException as err:
        _as_write_error(out, err)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ checksummed tensors


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """sha256 over the header metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    meta = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode() + b"|")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` as a safetensors file atomically, with their checksum in its header;
    returns that checksum (another file may record it to name this one)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    digest = tensors_digest(tensors, metadata)
    meta = {**(metadata or {}), CHECKSUM_KEY: digest}
    # safetensors writes through a temporary of its own next to the path it is given: in a
    # directory of ours, a write killed midway leaves nothing but that directory.
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), own_directory=True)
    return digest


def read_tensors(
    path: str | os.PathLike, require_checksum: bool | Callable[[dict[str, str]], bool] = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its string metadata, checksum-verified.

    Files written by this package carry a sha256 of their tensors and metadata; a mismatch (a flipped
    byte, a truncation the header does not reveal) is a :class:`FormatError` naming the
    file. Files from other libraries have none and are read as they are; ``require_checksum``
    (a flag, or a test on the metadata) says when a missing checksum is itself damage.
    """
    tensors, meta, _ = read_tensors_checked(path, require_checksum)
    return tensors, meta


def read_tensors_checked(
    path: str | os.PathLike, require_checksum: bool | Callable[[dict[str, str]], bool] = False
) -> tuple[dict[str, torch.Tensor], dict[str, str], str | None]:
    """:func:`read_tensors`, plus the verified checksum the file carries (None if it has none)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types
        raise FormatError(
            f"{path} is not a readable safetensors file: it is truncated, corrupted or of another format ({err}); "
            "restore it from a copy or re-create it"
        ) from err
    expected = meta.pop(CHECKSUM_KEY, None)
    if expected is None and (require_checksum(meta) if callable(require_checksum) else require_checksum):
        raise FormatError(
            f"{path} is damaged: it was written with a checksum, which is no longer in its header; "
            "restore it from a copy or re-create it"
        )
    if expected is not None and tensors_digest(tensors, meta) != expected:
        raise FormatError(
            f"{path} is corrupted: its tensors do not match the sha256 recorded when it was written; "
            "restore it from a copy or re-create it"
        )
    return tensors, meta, expected


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(name, "NaN" | "inf" | "-inf")`` of the first floating tensor (in name order) holding a
    value that is not finite, or None if every one is finite."""
    for name in sorted(tensors):
        t = tensors[name]
        if not (t.is_floating_point() or t.is_complex()) or not t.numel():
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            value = float(t[bad].flatten()[0].real if t.is_complex() else t[bad].flatten()[0])
            return name, "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def require_finite(tensors: dict[str, torch.Tensor], where: object, error: type[Exception], fix: str) -> None:
    """Raise ``error`` naming the tensor and ``where`` if any floating tensor holds NaN or inf.

    No trained weight is legitimately non-finite: such a file comes from a run that
    diverged or was damaged, and would give NaN outputs everywhere it is used.
    """
    bad = first_nonfinite(tensors)
    if bad is not None:
        n_bad = int((~torch.isfinite(tensors[bad[0]])).sum())
        raise error(f"{where}: tensor {bad[0]!r} holds {bad[1]} ({n_bad} value{'s' if n_bad > 1 else ''} not finite); {fix}")
