"""Write an activation store straight from tensors (no model), for the reliability tests."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from interp.activations.store import MANIFEST, HookInfo, Manifest, ShardInfo, act_key, atomic_write_text, write_shard

HOOK = "blocks.0.hook_resid_post"


def write_store_chunks(
    directory: Path, chunks: Iterator[torch.Tensor] | list[torch.Tensor], d: int, hook: str = HOOK,
    ctx: int = 8, model: str = "synthetic", more_hooks: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Path:
    """One shard per chunk ``[rows, d]``; windows of ``ctx`` rows, token ids = row numbers.

    ``more_hooks`` adds hooks whose rows are a function of the first hook's (same width).
    """
    directory.mkdir(parents=True, exist_ok=True)
    more = more_hooks or {}
    m = Manifest(model=model, hooks=[HookInfo(h, (d,)) for h in [hook, *more]], dtype="float32", context_length=ctx,
                 prepend_bos=False, exclude_bos=False, source={"kind": "synthetic"}, max_tokens=None,
                 shard_tokens=0, complete=True)
    row = seq = 0
    for k, x in enumerate(chunks):
        rows = x.shape[0]
        n_seq = -(-rows // ctx)
        local = torch.arange(rows)
        tokens = torch.arange(row, row + n_seq * ctx).reshape(n_seq, ctx).to(torch.int32)
        tensors = {act_key(hook): x.float().contiguous(), "tokens": tokens, "seq": seq + local // ctx,
                   "pos": (local % ctx).to(torch.int32)}
        for h, fn in more.items():
            tensors[act_key(h)] = fn(x).float().contiguous()
        name, size, digest = write_shard(directory, k, tensors)
        m.shards.append(ShardInfo(name, rows, seq, seq + n_seq, size, digest))
        m.shard_tokens = max(m.shard_tokens, rows)
        row += rows
        seq += n_seq
    m.n_tokens, m.n_sequences = row, seq
    atomic_write_text(directory / MANIFEST, m.to_json())
    return directory


def write_store(directory: Path, x: torch.Tensor, shard_rows: int, hook: str = HOOK) -> Path:
    return write_store_chunks(directory, list(x.split(shard_rows)), x.shape[1], hook)


def generated(n_shards: int, rows: int, d: int, make: Callable[[int], torch.Tensor]) -> Iterator[torch.Tensor]:
    for k in range(n_shards):
        yield make(k)
