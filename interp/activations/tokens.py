"""Text sources to fixed-length token windows, streamed.

A harvest reads its data through this module, so every source kind ends up as the same
thing: a deterministic stream of context windows ``tokens [seq, pos]`` with an attention
mask and a flag saying whether position 0 holds a BOS token. Determinism matters: a resumed
harvest skips the windows it has already stored and must find the same windows after them.

Packing rule for text (the same for every text source):

* each non-empty document is tokenised without special tokens and followed by EOS (when the
  tokenizer has one), so documents are separated by EOS and never merged silently; a BOS or
  EOS the text spells out at its start or end is dropped first (the packer adds its own);
* text that is mostly the tokenizer's unknown token (over 5%) is packed all the same, with
  one :class:`~interp.errors.UnknownTokensWarning`: it is in another language than the
  model's;
* the token stream is cut into windows of ``context_length``; when ``prepend_bos`` is on,
  each window is ``[BOS] + (context_length - 1)`` stream tokens, so every window starts the
  way the model saw text in training;
* the last, partial window is right-padded and its padding is marked in the attention
  mask (not by token id: GPT-2 pads with the EOS id, which also occurs as real text).

A 1-D token tensor is treated as an already separated token stream and packed the same way;
a 2-D token tensor ``[seq, pos]`` is taken as ready-made windows, unchanged.

Nothing here holds more than one chunk of documents and one batch of windows at a time.

:class:`TokenSource` binds a data source to these options once (text field, context length,
BOS and EOS handling); the harvest, live training and SAE evaluation all read through it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from saes.formats import schema

from interp.errors import InterpError, ShapeError, UnknownTokensWarning

# Tokens per window when neither the caller nor a 2-D token tensor says otherwise.
DEFAULT_CONTEXT_LENGTH = 128
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


# Bytes that are not UTF-8 decode (with errors="surrogateescape") to lone surrogates, which
# valid UTF-8 never produces: finding one names the line without a second pass over the file.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# A .jsonl record with at most this many brackets cannot nest deeper, so it is parsed
# directly; one with more goes through schema.parse_json, which bounds the nesting before
# parsing. (parse_json on every record would walk each parsed record again: a world-corpus
# record holds thousands of values, and a harvest reads one per document.)
_RECORD_DEPTH = 100


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, lines split as Python's text mode splits
    them; a line that is not valid UTF-8 is an InterpError naming the file and line."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.isascii() and (bad := _UNDECODABLE.search(line)):
                byte = len(line[: bad.start()].encode("utf-8", "surrogateescape"))
                raise InterpError(
                    f"{path}, line {lineno}: not valid UTF-8 (byte {byte} of the line); the data must be UTF-8 "
                    "text: convert the file (e.g. `iconv -f latin1 -t utf-8`) or remove the line"
                )
            yield lineno, line


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _parse_record(line: str, where: str) -> Any:
    """One .jsonl record; invalid JSON, NaN literals or deep nesting are an InterpError naming ``where``."""
    if line.count("[") + line.count("{") <= _RECORD_DEPTH:
        try:
            return json.loads(line, parse_constant=_refuse_constant)
        except ValueError:
            pass  # parse_json says what is wrong, in the same words as for every JSON file
    return schema.parse_json(line, where, InterpError, max_depth=_RECORD_DEPTH)


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        record = _parse_record(line, where)
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise InterpError(
                f"{where}: no {text_field!r} field (found {keys}); pass text_field=... "
                "to name the field that holds the text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise InterpError(f"{where}: {text_field!r} is {type(text).__name__}, not text")
        yield text


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
            for _, line in _text_lines(path):
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


def _token_stream(docs: Iterator[str], tokenizer: Any, eos_token_id: int | None,
                  bos_token_id: int | None = None) -> Iterator[list[int]]:
    """Token ids per document (EOS appended), tokenised a chunk at a time.

    A document that spells out the model's BOS or EOS token at its edges (the world corpus's
    ``"<bos> ... <eos>"``, a GPT-2 text ending in ``<|endoftext|>``) has them dropped: the
    packer adds both itself, and would otherwise double them.
    """
    chunk: list[str] = []
    unknown = _UnknownCount(tokenizer, {bos_token_id, eos_token_id})

    def flush() -> Iterator[list[int]]:
        # verbose=False: long documents are fine here, they are cut into windows later.
        ids = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for doc_ids in ids:
            doc_ids = list(doc_ids)
            if bos_token_id is not None and doc_ids[:1] == [bos_token_id]:
                del doc_ids[0]
            if eos_token_id is not None and doc_ids[-1:] == [eos_token_id]:
                del doc_ids[-1]
            if doc_ids:
                unknown.add(doc_ids)
                yield doc_ids + ([eos_token_id] if eos_token_id is not None else [])
        unknown.check()
        chunk.clear()

    for doc in docs:
        if doc.strip():  # blank lines are not documents
            chunk.append(doc)
            if len(chunk) >= _TOKENIZE_CHUNK:
                yield from flush()
    if chunk:
        yield from flush()


# Above this share of unknown-token ids, the data is mostly outside the tokenizer's vocabulary
# (English text through the world model's word-level tokenizer): its activations describe
# the unknown token, not the text. A few percent is normal for rare words.
UNKNOWN_TOKEN_WARNING = 0.05


class _UnknownCount:
    """Counts the tokenizer's unknown-token ids in a token stream and warns once, at the end
    of a chunk, when their share exceeds :data:`UNKNOWN_TOKEN_WARNING`."""

    def __init__(self, tokenizer: Any, special: set[int | None]) -> None:
        unk = getattr(tokenizer, "unk_token_id", None)
        # GPT-2's "unknown" token is its EOS: a byte-level BPE never produces it for text.
        self.unk = None if unk in special else unk
        self.name = getattr(tokenizer, "unk_token", None) or "unknown"
        self.total = self.found = 0
        self.warned = False

    def add(self, ids: list[int]) -> None:
        if self.unk is not None and not self.warned:
            self.total += len(ids)
            self.found += ids.count(self.unk)

    def check(self) -> None:
        if self.warned or not self.total or self.found / self.total <= UNKNOWN_TOKEN_WARNING:
            return
        self.warned = True
        warnings.warn(
            f"{self.found / self.total:.0%} of the first {self.total:,} tokens of the data are the tokenizer's "
            f"unknown token {self.name!r}: the text is mostly outside this model's vocabulary, so its activations "
            f"describe {self.name!r}, not the text. Use data in the model's language (the world model reads only "
            f"the synthetic world's text, e.g. from `interp world corpus`), or a model whose tokenizer covers this "
            f"text (a hub model such as gpt2)",
            UnknownTokensWarning, stacklevel=2)


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
    for ids, n in _pack(_token_stream(docs, tokenizer, cfg.eos_token_id, cfg.bos_token_id), cfg):
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


# --------------------------------------------------------------------------- the source


def _is_default(value: Any, default: Any) -> bool:
    if value is None or default is None or isinstance(value, torch.Tensor):
        return value is default
    return bool(value == default)


@dataclass(frozen=True, eq=False)
class TokenSource:
    """A data source bound to how it becomes windows: the data options, given once.

    Attributes:
        data: a ``.txt`` path (one document per line), a ``.jsonl`` path (``text_field`` per
            record), a list of strings, a token tensor ``[seq, pos]`` (used as windows) or
            1-D (packed), or a ``datasets`` Dataset/IterableDataset with a ``text_field`` column.
        text_field: field of .jsonl records / dataset rows holding the text.
        context_length: tokens per window; None = a 2-D token tensor's width, else 128
            (resolved on construction, so it is always an int afterwards).
        prepend_bos: BOS at the start of every packed window; None = when the model has one.
            Documents are always separated by the model's EOS token (when it has one).
        exclude_bos: the keep mask leaves out position 0 of windows that start with BOS
            (its activation is an outlier no SAE models). Padding is never kept.
        attention_mask: ``[seq, pos]`` for a padded 2-D token tensor: its windows are then
            used as they are, with this mask (the packing options do not apply).
    """

    # metadata: the help and flags of the command line's data options (interp/cli/options.py).
    data: Any = field(metadata={"help": ".txt file (one document per line) or .jsonl file", "metavar": "FILE"})
    text_field: str = field(default="text", metadata={"help": "field of a .jsonl record holding the text"})
    context_length: int | None = field(default=None, metadata={
        "help": "tokens per window", "cli_default": DEFAULT_CONTEXT_LENGTH})
    prepend_bos: bool | None = None
    exclude_bos: bool = field(default=True, metadata={
        "help": "leave out position 0 (BOS) of every window", "flag": "--keep-bos",
        "off_help": "also use position 0 (BOS) of every window"})
    attention_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.context_length is None:
            windows = isinstance(self.data, torch.Tensor) and self.data.ndim == 2
            object.__setattr__(self, "context_length", int(self.data.shape[1]) if windows else DEFAULT_CONTEXT_LENGTH)

    @classmethod
    def of(cls, data: Any, **options: Any) -> TokenSource:
        """``data`` as a TokenSource: the one place plain data and keyword options meet.

        ``data`` may already be a TokenSource; options must then be left at their defaults
        (the source has bound them already).
        """
        if not isinstance(data, TokenSource):
            return cls(data, **options)
        defaults = {f.name: f.default for f in fields(cls)}
        given = sorted(k for k, v in options.items() if not _is_default(v, defaults[k]))
        if given:
            raise InterpError(
                f"the data is a TokenSource, which already sets {', '.join(given)}; set "
                f"{'them' if len(given) > 1 else 'it'} in the TokenSource, not as an argument too"
            )
        return data

    def packing(self, model: Any) -> PackingConfig:
        """How text becomes windows for ``model``: its BOS first (unless switched off), its
        EOS between documents, padding with its pad id (else EOS, else 0)."""
        bos = getattr(model, "bos_token_id", None)
        eos = getattr(model, "eos_token_id", None)
        pad = getattr(model, "pad_token_id", None)
        prepend = (bos is not None) if self.prepend_bos is None else self.prepend_bos
        assert self.context_length is not None  # resolved in __post_init__
        limit = getattr(model, "max_positions", None)
        if isinstance(limit, int) and self.context_length > limit:  # else an IndexError deep in the model
            raise InterpError(f"context_length={self.context_length} is longer than "
                              f"{getattr(model, 'name', 'the model')} can embed ({limit} positions); "
                              f"use context_length <= {limit}")
        return PackingConfig(self.context_length, prepend, bos, eos, pad if pad is not None else (eos if eos is not None else 0))

    def describe(self) -> dict[str, Any]:
        """The manifest's description of the data (see :func:`describe_source`)."""
        desc = describe_source(self.data, self.text_field)
        if self.attention_mask is not None:
            mask = self.attention_mask.detach().to("cpu", torch.int64).contiguous()
            desc["attention_mask"] = hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16]
        return desc

    def batches(
        self, model: Any, batch_size: int, *, start_seq: int = 0, max_seqs: int | None = None
    ) -> Iterator[TokenBatch]:
        """Consecutive windows for ``model`` in batches of ``batch_size`` (see :func:`iter_batches`)."""
        if self.attention_mask is not None and isinstance(self.data, torch.Tensor) and self.data.ndim == 2:
            yield from self._masked_batches(model, batch_size, start_seq, max_seqs)
            return
        if isinstance(self.data, (str, os.PathLike)):
            describe_source(self.data, self.text_field)  # a missing file or a wrong field fails here, clearly
        yield from iter_batches(self.data, getattr(model, "tokenizer", None), self.packing(model), batch_size,
                                text_field=self.text_field, start_seq=start_seq, max_seqs=max_seqs)

    def _masked_batches(self, model: Any, batch_size: int, start_seq: int, max_seqs: int | None) -> Iterator[TokenBatch]:
        # Ready-made padded windows: used as given, BOS detected by token id.
        assert self.attention_mask is not None
        if batch_size < 1:
            raise InterpError(f"batch_size must be at least 1, got {batch_size}")
        end = self.data.shape[0] if max_seqs is None else min(max_seqs, self.data.shape[0])
        bos = getattr(model, "bos_token_id", None)
        for a in range(start_seq, end, batch_size):
            tok = self.data[a : min(a + batch_size, end)].to(torch.int64)
            mask = self.attention_mask[a : min(a + batch_size, end)].to(torch.int64)
            at_start = (tok[:, 0] == bos) if bos is not None else torch.zeros(len(tok), dtype=torch.bool)
            yield TokenBatch(tok, mask, at_start, a)

    def keep_mask(self, batch: TokenBatch) -> torch.Tensor:
        """``[batch, pos]`` bool: the positions whose activations are read (real tokens,
        minus the BOS position with ``exclude_bos``). A new tensor: the batch is untouched."""
        keep = batch.attention_mask.bool().clone()
        if self.exclude_bos:
            keep[:, 0] &= ~batch.bos_at_start
        return keep
