"""JSONL corpus writer: one labelled document per line."""
from __future__ import annotations

import json
from pathlib import Path

from interp.world.generator import Doc, World
from interp.world.labels import CONTEXT_LABELS
from saes import locks
from saes.formats.durable import atomic_write


def doc_record(doc: Doc, doc_id: int) -> dict:
    """A JSON-ready record: text, tokens, one list per contextual label, segment metadata."""
    columns = {spec.name: [lab.get(spec.name) for lab in doc.labels] for spec in CONTEXT_LABELS}
    segments = [{"latent": list(s["u"]) if isinstance(s["u"], tuple) else s["u"], "start": s["start"],
                 "end": s["end"], **s["labels"], **s["meta"]} for s in doc.segments]
    return {"id": doc_id, "kind": doc.z[0], "topic": doc.z[1], "text": doc.text, "tokens": doc.tokens,
            "labels": columns, "segments": segments}


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

    with locks.file_lock(path, what="world corpus"):
        atomic_write(path, write)
    return path
