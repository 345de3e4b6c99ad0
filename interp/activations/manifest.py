"""Checks on an activation-store manifest read from disk, before any of it is used.

A manifest is input like any other file: wrong types are a :class:`StoreError` naming the
key, unknown keys a warning (ignored), and shard file names must stay inside the store's
directory (no ``..``, no separators, nothing absolute). Sizes are not taken on trust: the
shard list is bounded (:data:`MAX_SHARDS`), a shard listed twice or two shards covering the
same windows are refused (their rows would be read twice), and the store checks each
shard's rows and shapes against the shard file's own header before reading (see
:func:`interp.activations.store.check_shard_headers`).
"""
from __future__ import annotations

import math
import re
from typing import Any

from saes.formats import schema

from interp.errors import StoreError

F = schema.Field
SHA256 = re.compile(r"[0-9a-f]{64}")

# The most shards a store may list. A harvest rewrites the manifest after every shard, and
# 200,000 shards are 50 TB at the default shard size (a 100,000-shard manifest is 22 MB); a
# crafted list of millions of entries would otherwise cost gigabytes just to check.
MAX_SHARDS = 200_000

MANIFEST_FIELDS: dict[str, schema.Field] = {
    "format": F("str"),
    "version": F("int"),
    "model": F("str"),
    "hooks": F("list"),
    "dtype": F("str", choices=("float32", "bfloat16", "float16")),
    "context_length": F("int", minimum=1),
    "prepend_bos": F("bool"),
    "exclude_bos": F("bool"),
    "source": F("dict"),
    "max_tokens": F("int", optional=True, minimum=0),
    "shard_tokens": F("int", minimum=0),
    "bos_token_id": F("int", optional=True),
    "eos_token_id": F("int", optional=True),
    "batch_size": F("int", optional=True, minimum=1),
    "n_tokens": F("int", minimum=0),
    "n_sequences": F("int", minimum=0),
    "complete": F("bool"),
    "shards": F("list"),
}
REQUIRED = ("model", "hooks", "dtype", "context_length", "prepend_bos", "exclude_bos", "source", "max_tokens",
            "shard_tokens", "shards")
HOOK_FIELDS = {"name": F("str"), "shape": F("int_list", minimum=1), "d": F("int", minimum=1)}
SHARD_FIELDS = {
    "file": F("str"), "rows": F("int", minimum=0), "seq_start": F("int", minimum=0), "seq_end": F("int", minimum=0),
    "bytes": F("int", minimum=0), "sha256": F("str"),
}


def checked_manifest(d: Any, where: str) -> dict[str, Any]:
    """The manifest's JSON object, checked; unknown keys dropped (with a warning)."""
    d = schema.check(d, MANIFEST_FIELDS, where, StoreError, required=REQUIRED)
    d["hooks"] = [
        schema.check(h, HOOK_FIELDS, f"{where} (hooks[{i}])", StoreError, required=("name", "shape"))
        for i, h in enumerate(d["hooks"])
    ]
    if not d["hooks"]:
        raise StoreError(f"{where} lists no hooks; the manifest is damaged")
    for h in d["hooks"]:
        if "d" in h and h["d"] != math.prod(h["shape"]):
            raise StoreError(f"{where}: hook {h['name']!r} has d={h['d']} but shape {h['shape']}; the manifest is damaged")
    if len(d["shards"]) > MAX_SHARDS:
        raise StoreError(
            f"{where} lists {len(d['shards']):,} shards, more than the {MAX_SHARDS:,} a store may hold; "
            "the manifest is damaged or crafted (a harvest with a larger shard_tokens writes fewer shards)"
        )
    shards = []
    seen: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, s in enumerate(d["shards"]):
        s = schema.check(s, SHARD_FIELDS, f"{where} (shards[{i}])", StoreError, required=tuple(SHARD_FIELDS))
        schema.plain_file_name(s["file"], f"{where} (shards[{i}])", StoreError)
        if not SHA256.fullmatch(s["sha256"]):
            raise StoreError(f"{where} (shards[{i}]): sha256 {s['sha256']!r:.80} is not a sha256 hex digest")
        if s["seq_end"] < s["seq_start"]:
            raise StoreError(f"{where} (shards[{i}]): seq_end {s['seq_end']} is before seq_start {s['seq_start']}")
        # The same file (or the same content under another name) listed twice would be read
        # twice: every one of its rows duplicated in training data.
        for key, index, what in ((s["file"], seen, "file"), (s["sha256"], digests, "content (sha256)")):
            if key in index:
                raise StoreError(
                    f"{where} (shards[{i}]): {s['file']!r} has the same {what} as shards[{index[key]}]; "
                    "a shard may be listed once (the manifest is damaged or was edited)"
                )
            index[key] = i
        if shards and s["seq_start"] < shards[-1]["seq_end"]:
            raise StoreError(
                f"{where} (shards[{i}]): {s['file']!r} covers windows {s['seq_start']}-{s['seq_end']}, overlapping "
                f"{shards[-1]['file']!r} before it (up to window {shards[-1]['seq_end']}); each window is stored "
                "once, in order (the manifest is damaged or was edited)"
            )
        shards.append(s)
    d["shards"] = shards
    # Fields the Manifest dataclass does not take (the hook's derived d) are dropped here.
    d["hooks"] = [{k: v for k, v in h.items() if k != "d"} for h in d["hooks"]]
    return d
