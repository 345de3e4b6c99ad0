"""Durable files: every file the toolkit writes lands complete or not at all.

One way to write, used by SAEs, checkpoints, stores, corpora, dashboards and models: the
bytes go to a temporary file in the target's directory (the same file system, so the
rename is atomic), are fsync'd, the file is moved into place with ``os.replace`` and the
directory is fsync'd so the rename survives a power cut. A write that fails (disk full,
read-only directory) raises :class:`WriteError` and leaves the previous file as it was,
with no temporary file behind.

Every safetensors file written by :func:`atomic_save_tensors` carries the sha256 of its
tensors in its header metadata, checked by :func:`read_tensors`, so a truncated or
corrupted file is named as such instead of being read as garbage. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saes.errors import FormatError, WriteError

T = TypeVar("T")

CHECKSUM_KEY = "saes_sha256"
# Files the toolkit ships should read like any other (mkstemp creates them 0600).
FILE_MODE = 0o644


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
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return seen


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file, then :func:`publish` it as ``path``.

    Any failure leaves ``path`` untouched and no temporary file behind; an ``OSError``
    (full disk, read-only directory, missing permission) becomes a :class:`WriteError`
    that says so.
    """
    final = Path(path)
    tmp: str | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        write(tmp)
        publish(tmp, final)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _as_write_error(final, err)
        raise


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
) -> None:
    """Write ``tensors`` as a safetensors file atomically, with their checksum in its header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**(metadata or {}), CHECKSUM_KEY: tensors_digest(tensors, metadata)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_tensors(
    path: str | os.PathLike, require_checksum: bool | Callable[[dict[str, str]], bool] = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its string metadata, checksum-verified.

    Files written by this package carry a sha256 of their tensors and metadata; a mismatch (a flipped
    byte, a truncation the header does not reveal) is a :class:`FormatError` naming the
    file. Files from other libraries have none and are read as they are; ``require_checksum``
    (a flag, or a test on the metadata) says when a missing checksum is itself damage.
    """
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
    return tensors, meta
