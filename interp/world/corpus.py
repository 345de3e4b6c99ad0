"""JSONL corpus writer: one labelled document per line."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saes import locks
from saes.formats.durable import atomic_write

from interp.world.generator import Doc, World
from interp.world.labels import CONTEXT_LABELS


def doc_record(doc: Doc, doc_id: int) -> dict:
    """A JSON-ready record: text, tokens, one list per contextual label, segment metadata."""
    columns = {spec.name: [lab.get(spec.name) for lab in doc.labels] for spec in CONTEXT_LABELS}
    segments = [{"latent": list(s["u"]) if isinstance(s["u"], tuple) else s["u"], "start": s["start"],
                 "end": s["end"], **s["labels"], **s["meta"]} for s in doc.segments]
    return {"id": doc_id, "kind": doc.z[0], "topic": doc.z[1], "text": doc.text, "tokens": doc.tokens,
            "labels": columns, "segments": segments}


@contextmanager
def file_lock(path: Path, what: str = "world corpus") -> Iterator[Path]:
    """Hold the exclusive write lock on the file ``path`` for the block.

    The same rules as :func:`saes.locks.directory_lock` (an advisory ``flock``, released
    however the holder exits; a second writer gets :class:`saes.locks.DirectoryLockedError`
    at once, naming the holder), but on ``.<name>.lock`` next to the file: a corpus is one
    file, and two corpora in one directory may well be written at the same time.
    """
    if locks.fcntl is None:  # pragma: no cover - no flock on this platform
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            locks.fcntl.flock(fd, locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
        except BlockingIOError:
            holder = locks._describe(os.pread(fd, 4096, 0))
            raise locks.DirectoryLockedError(
                f"{what} {path} is being written by {holder}; wait for it to finish, stop it, or choose another file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(locks._holder()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def write_corpus(path: str | Path, n: int, seed: int = 0, world: World | None = None) -> Path:
    """Write ``n`` documents (sampling seed ``seed``) to ``path`` as JSONL, atomically.

    One writer per file: a second ``write_corpus`` to the same path while this one runs
    raises :class:`saes.locks.DirectoryLockedError` naming this process, instead of both
    reporting success while the file holds only one of them.
    """
    world = world or World()
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, doc in enumerate(world.iter_docs(n, seed=seed)):
                f.write(json.dumps(doc_record(doc, i)) + "\n")

    with file_lock(path):
        atomic_write(path, write)
    return path
