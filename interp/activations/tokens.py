"""Text sources to fixed-length token windows, streamed.

A harvest reads its data through this module, so every source kind ends up as the same
thing: a deterministic stream of context windows ``tokens [seq, pos]`` with an attention
mask and a flag saying whether position 0 holds a BOS token. Determinism matters: a resumed
harvest skips the windows it has already stored and must find the same windows after them.

Packing rule for text (the same for every text source):

* each non-empty document is tokenised without special tokens and followed by EOS (when the
  tokenizer has one), so documents are separated by EOS and never merged silently;
* the token stream is cut into windows of ``context_length``; when ``prepend_bos`` is on,
  each window is ``[BOS] + (context_length - 1)`` stream tokens, so every window starts the
  way the model saw text in training;
* the last, partial window is right-padded and its padding is marked in the attention
  mask (not by token id: GPT-2 pads with the EOS id, which also occurs as real text).

A 1-D token tensor is treated as an already separated token stream and packed the same way;
a 2-D token tensor ``[seq, pos]`` is taken as ready-made windows, unchanged.

Nothing here holds more than one chunk of documents and one batch of windows at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError, ShapeError

# Documents are tokenised this many at a time: the fast tokenizer is much quicker on a
# list than on single strings, and the chunk stays small whatever the dataset size.
_TOKENIZE_CHUNK = 256


@dataclass(frozen=True)
class PackingConfig:
    """How documents become windows.

    Attributes:
        context_length: tokens per window (``pos``).
        prepend_bos: put ``bos_token_id`` at position 0 of every packed window.
        bos_token_id: required when ``prepend_bos``.
        eos_token_id: separator appended after each document; None appends nothing.
        pad_token_id: id written into padding positions (they are masked out anyway).
    """

    context_length: int
    prepend_bos: bool
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.context_length < (2 if self.prepend_bos else 1):
            raise ShapeError(
                f"context_length={self.context_length} leaves no room for text"
                + (" after the BOS token" if self.prepend_bos else "")
            )
        if self.prepend_bos and self.bos_token_id is None:
            raise InterpError("prepend_bos=True but the model has no BOS token id; pass prepend_bos=False")


@dataclass
class TokenBatch:
    """A batch of consecutive windows.

    Attributes:
        tokens: ``[batch, pos]`` int64 token ids.
        attention_mask: ``[batch, pos]`` int64, 1 for real tokens, 0 for padding.
        bos_at_start: ``[batch]`` bool, True where position 0 is a BOS token.
        first_seq: global index of the first window in this batch.
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    bos_at_start: torch.Tensor
    first_seq: int

    def __len__(self) -> int:
        return self.tokens.shape[0]


# --------------------------------------------------------------------------- sources


def _is_hf_dataset(data: Any) -> bool:
    # Checked by module name so `datasets` (slow to import) is only needed when used.
    return type(data).__module__.startswith("datasets.") and hasattr(data, "iter")


def _file_fingerprint(path: Path) -> str:
    # Size plus a hash of the first and last MiB: catches an edited or replaced file
    # without reading a multi-gigabyte corpus in full before the harvest can start.
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def describe_source(data: Any, text_field: str = "text") -> dict[str, Any]:
    """A JSON-able description of ``data`` for the manifest.

    ``fingerprint`` is compared on resume so a harvest never continues over different data;
    it is None for sources that cannot be fingerprinted without consuming them (generators,
    iterable datasets).
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise InterpError(f"data file {str(path)!r} does not exist")
        kind = "jsonl_file" if path.suffix in (".jsonl", ".json") else "text_file"
        desc: dict[str, Any] = {"kind": kind, "path": str(path.resolve()), "bytes": path.stat().st_size}
        if kind == "jsonl_file":
            desc["text_field"] = text_field
            first = _iter_jsonl(path, text_field)
            next(first, None)  # a wrong field name fails now, not in the middle of a harvest
            first.close()
        desc["fingerprint"] = _file_fingerprint(path)
        return desc
    if isinstance(data, torch.Tensor):
        t = data.detach().to("cpu", torch.int64).contiguous()
        digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]
        return {"kind": "token_tensor", "shape": list(t.shape), "fingerprint": digest}
    if _is_hf_dataset(data):
        kind = type(data).__name__  # Dataset or IterableDataset
        desc = {"kind": f"hf_{kind}", "text_field": text_field}
        info = getattr(data, "info", None)
        if info is not None and getattr(info, "dataset_name", None):
            desc["name"] = info.dataset_name
        if getattr(data, "split", None) is not None:
            desc["split"] = str(data.split)
        fp = getattr(data, "_fingerprint", None)  # Arrow datasets carry a content fingerprint
        desc["fingerprint"] = fp if isinstance(fp, str) else None
        if kind == "Dataset":
            desc["rows"] = len(data)
        columns = getattr(data, "column_names", None)
        if columns is not None and text_field not in columns:
            raise InterpError(f"dataset has no {text_field!r} column (columns: {columns}); pass text_field=...")
        return desc
    if isinstance(data, (list, tuple)):
        h = hashlib.sha256()
        for doc in data:
            if not isinstance(doc, str):
                raise InterpError(f"a list of data must hold strings, found {type(doc).__name__}")
            h.update(hashlib.sha256(doc.encode()).digest())
        return {"kind": "text_list", "documents": len(data), "fingerprint": h.hexdigest()[:16]}
    if isinstance(data, Iterable):
        return {"kind": "text_iterable", "type": type(data).__name__, "fingerprint": None}
    raise InterpError(
        f"cannot read data of type {type(data).__name__}; give a .txt or .jsonl path, a list of "
        "strings, a token tensor or a datasets Dataset/IterableDataset"
    )


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InterpError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise InterpError(
                    f"{path}:{lineno}: no {text_field!r} field (found {keys}); pass text_field=... "
                    "to name the field that holds the text"
                )
            yield record[text_field]


def _iter_hf(data: Any, text_field: str) -> Iterator[str]:
    columns = getattr(data, "column_names", None)
    if columns is not None and text_field not in columns:
        raise InterpError(
            f"dataset has no {text_field!r} column (columns: {columns}); pass text_field=..."
        )
    if columns is not None and len(columns) > 1:
        data = data.select_columns([text_field])  # skip decoding columns we never read
    for batch in data.iter(batch_size=_TOKENIZE_CHUNK):
        if text_field not in batch:
            raise InterpError(f"dataset rows have no {text_field!r} field (found {sorted(batch)})")
        yield from batch[text_field]


def iter_documents(data: Any, text_field: str = "text") -> Iterator[str]:
    """Documents of a text source, one string at a time, never all in memory."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix in (".jsonl", ".json"):
            yield from _iter_jsonl(path, text_field)
        else:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\r\n")
        return
    if _is_hf_dataset(data):
        yield from _iter_hf(data, text_field)
        return
    for doc in data:
        if not isinstance(doc, str):
            raise InterpError(f"expected text documents, found {type(doc).__name__}")
        yield doc


# --------------------------------------------------------------------------- packing


def _token_stream(docs: Iterator[str], tokenizer: Any, eos_token_id: int | None) -> Iterator[list[int]]:
    """Token ids per document (EOS appended), tokenised a chunk at a time."""
    chunk: list[str] = []

    def flush() -> Iterator[list[int]]:
        # verbose=False: long documents are fine here, they are cut into windows later.
        ids = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for doc_ids in ids:
            yield list(doc_ids) + ([eos_token_id] if eos_token_id is not None else [])
        chunk.clear()

    for doc in docs:
        if doc.strip():  # blank lines are not documents
            chunk.append(doc)
            if len(chunk) >= _TOKENIZE_CHUNK:
                yield from flush()
    if chunk:
        yield from flush()


def _pack(streams: Iterator[list[int]], cfg: PackingConfig) -> Iterator[tuple[list[int], int]]:
    """Windows as (token ids, number of real tokens), from a stream of token pieces."""
    body = cfg.context_length - (1 if cfg.prepend_bos else 0)
    head = [cfg.bos_token_id] if cfg.prepend_bos else []
    pending: list[int] = []
    for piece in streams:
        pending.extend(piece)
        start = 0
        while len(pending) - start >= body:
            yield head + pending[start : start + body], cfg.context_length
            start += body
        del pending[:start]  # keep only the remainder, so memory stays one window + one piece
    if pending:
        n_real = len(head) + len(pending)
        yield head + pending + [cfg.pad_token_id] * (cfg.context_length - n_real), n_real


def iter_windows(
    data: Any, tokenizer: Any, cfg: PackingConfig, text_field: str = "text"
) -> Iterator[tuple[list[int], int, bool]]:
    """All windows of ``data`` as (token ids [pos], real-token count, bos at position 0)."""
    if isinstance(data, torch.Tensor):
        t = data.detach().to("cpu", torch.int64)
        if t.ndim == 2:
            if t.shape[1] != cfg.context_length:
                raise ShapeError(
                    f"token tensor has windows of {t.shape[1]} tokens but context_length="
                    f"{cfg.context_length}; pass context_length={t.shape[1]} or re-cut the tensor"
                )
            for row in t:
                ids = row.tolist()
                yield ids, cfg.context_length, cfg.bos_token_id is not None and ids[0] == cfg.bos_token_id
            return
        if t.ndim == 1:
            # Pieces of one window each keep the `_pack` buffer small for huge streams.
            pieces = (t[i : i + cfg.context_length].tolist() for i in range(0, t.numel(), cfg.context_length))
            for ids, n in _pack(pieces, cfg):
                yield ids, n, cfg.prepend_bos
            return
        raise ShapeError(f"token tensor must be [seq, pos] or 1-D, got shape {tuple(t.shape)}")
    if tokenizer is None:
        raise InterpError("text data needs a tokenizer; the model has none (pass token ids instead)")
    docs = iter_documents(data, text_field)
    for ids, n in _pack(_token_stream(docs, tokenizer, cfg.eos_token_id), cfg):
        yield ids, n, cfg.prepend_bos


def iter_batches(
    data: Any,
    tokenizer: Any,
    cfg: PackingConfig,
    batch_size: int,
    *,
    text_field: str = "text",
    start_seq: int = 0,
    max_seqs: int | None = None,
) -> Iterator[TokenBatch]:
    """Consecutive windows in batches of ``batch_size``, starting at window ``start_seq``.

    Batches are aligned to multiples of ``batch_size`` counted from window 0 when
    ``start_seq`` is such a multiple; the harvest relies on that so a resumed run feeds the
    model exactly the batches an uninterrupted run would, and gets bit-identical numbers.
    """
    if batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {batch_size}")
    rows: list[list[int]] = []
    n_real: list[int] = []
    bos: list[bool] = []
    first = start_seq

    def make() -> TokenBatch:
        tokens = torch.tensor(rows, dtype=torch.int64)
        lengths = torch.tensor(n_real, dtype=torch.int64)
        mask = (torch.arange(cfg.context_length)[None, :] < lengths[:, None]).to(torch.int64)
        return TokenBatch(tokens, mask, torch.tensor(bos, dtype=torch.bool), first)

    for seq, (ids, n, b) in enumerate(iter_windows(data, tokenizer, cfg, text_field)):
        if max_seqs is not None and seq >= max_seqs:
            break
        if seq < start_seq:
            continue
        rows.append(ids)
        n_real.append(n)
        bos.append(b)
        if len(rows) == batch_size:
            yield make()
            first += len(rows)
            rows.clear()
            n_real.clear()
            bos.clear()
    if rows:
        yield make()
