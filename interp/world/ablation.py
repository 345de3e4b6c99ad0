"""Where does the default model do its work? Mean-ablate each attention and MLP block.

For every block output (``blocks.L.attn`` and ``blocks.L.mlp``, the GPT-2 modules
``transformer.h[L].attn`` / ``.mlp``) this replaces the block's output at every position
with its mean over the real tokens of held-out documents, then measures what is lost:

* the cross-entropy rise over all tokens of held-out documents, and over the fact-answer
  tokens among them (``is_fact_answer``: fact-sentence values and QA answers equal to the
  truth);
* greedy fact-answer accuracy for each hop count (:func:`.recall.fact_recall`).

Mean ablation (not zero) keeps the block's average contribution, so a drop means the block
carried information that varies with the input, not that the next layer lost a bias.
Works on a plain HF GPT-2 (``GPT2LMHeadModel``); hooks are removed even if a pass fails.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from interp.world.generator import World
from interp.world.labels import encode_docs
from interp.world.recall import fact_recall


def block_names(model: Any) -> list[str]:
    """``blocks.L.attn`` and ``blocks.L.mlp`` for every layer, in forward order."""
    return [f"blocks.{i}.{part}" for i in range(len(model.transformer.h)) for part in ("attn", "mlp")]


def _module(model: Any, name: str) -> torch.nn.Module:
    _, layer, part = name.split(".")
    return getattr(model.transformer.h[int(layer)], part)


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _with_output(out: Any, value: torch.Tensor) -> Any:
    return (value, *out[1:]) if isinstance(out, tuple) else value


@contextmanager
def replaced(model: Any, name: str, value: torch.Tensor) -> Iterator[None]:
    """Within the block, ``name``'s output is ``value`` (``[d_model]``) at every position."""
    def hook(_module, _inputs, out):
        return _with_output(out, value.to(_output(out).dtype).expand_as(_output(out)))

    handle = _module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _attention_mask(model: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """1 except on ``<pad>``: documents are right-padded with it and never contain it, so real
    positions are unchanged; HF is told which columns are padding instead of guessing."""
    pad = getattr(model.config, "pad_token_id", None)
    return None if pad is None else (tokens != pad).long()


@torch.no_grad()
def block_means(model: Any, tokens: torch.Tensor, mask: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean output ``[d_model]`` of every block over the real tokens (``mask``) of ``tokens``."""
    names = block_names(model)
    sums = {n: 0.0 for n in names}
    handles = []
    current: dict = {}     # the mask of the batch being run

    def recorder(name: str):
        def hook(_module, _inputs, out):
            sums[name] = sums[name] + _output(out)[current["mask"]].double().sum(0)
        return hook

    try:
        for n in names:
            handles.append(_module(model, n).register_forward_hook(recorder(n)))
        for start in range(0, len(tokens), batch_size):
            current["mask"] = mask[start:start + batch_size]
            t = tokens[start:start + batch_size]
            model(input_ids=t, attention_mask=_attention_mask(model, t))
    finally:
        for h in handles:
            h.remove()
    count = int(mask.sum())
    return {n: (s / count).float() for n, s in sums.items()}


@torch.no_grad()
def _losses(model: Any, tokens: torch.Tensor, mask: torch.Tensor, answer: torch.Tensor,
            batch_size: int) -> tuple[float, float]:
    """Mean next-token CE over real tokens, and over fact-answer tokens."""
    total = [0.0, 0, 0.0, 0]
    for start in range(0, len(tokens), batch_size):
        t = tokens[start:start + batch_size]
        logp = F.log_softmax(model(input_ids=t, attention_mask=_attention_mask(model, t)).logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, t[:, 1:, None])[..., 0]
        m, a = mask[start:start + batch_size, 1:], answer[start:start + batch_size, 1:]
        total[0] += float(nll[m].sum())
        total[1] += int(m.sum())
        total[2] += float(nll[a].sum())
        total[3] += int(a.sum())
    return total[0] / max(total[1], 1), total[2] / max(total[3], 1)


def ablation_table(model: Any, world: World, n_docs: int = 256, seed: int = 777, hops: tuple[int, ...] = (1, 2, 3),
                   batch_size: int = 64) -> dict:
    """CE and fact-answer accuracy by hop count, clean and with each block mean-ablated.

    Returns ``{"clean": row, "blocks": {name: row}}``; a row holds ``ce_all``,
    ``ce_fact_answers`` and ``accuracy`` ``{hops: value}``; ablated rows add ``ce_rise_all``,
    ``ce_rise_fact_answers`` and ``accuracy_drop``.
    """
    docs = world.sample_docs(n_docs, seed=seed)
    tokens, labels = encode_docs(world, docs)
    mask = labels["doc_kind"] >= 0
    answer = labels["is_fact_answer"]
    means = block_means(model, tokens, mask, batch_size)

    def row() -> dict:
        ce_all, ce_answers = _losses(model, tokens, mask, answer, batch_size)
        acc = {h: fact_recall(model, world, h, batch_size)["accuracy"] for h in hops}
        return {"ce_all": ce_all, "ce_fact_answers": ce_answers, "accuracy": acc}

    clean = row()
    blocks = {}
    for name in block_names(model):
        with replaced(model, name, means[name]):
            r = row()
        r["ce_rise_all"] = r["ce_all"] - clean["ce_all"]
        r["ce_rise_fact_answers"] = r["ce_fact_answers"] - clean["ce_fact_answers"]
        r["accuracy_drop"] = {h: clean["accuracy"][h] - r["accuracy"][h] for h in hops}
        blocks[name] = r
    return {"clean": clean, "blocks": blocks, "n_docs": n_docs, "n_answer_tokens": int(answer.sum())}


def depth_checks(table: dict, n_layers: int, drop: float = 0.2) -> dict:
    """The "no single block does it all" bars from an :func:`ablation_table`.

    ``middle_mlps``: every MLP but the first and the last drops fact-answer accuracy for
    some hop count by at least ``drop`` when mean-ablated. ``two_hop_blocks``: the blocks
    (attention or MLP) whose ablation drops two-hop accuracy by at least ``drop``; at least
    two are required.
    """
    blocks = table["blocks"]
    middle = {f"blocks.{i}.mlp": max(blocks[f"blocks.{i}.mlp"]["accuracy_drop"].values())
              for i in range(1, n_layers - 1)}
    two_hop = [n for n, r in blocks.items() if r["accuracy_drop"].get(2, 0.0) >= drop]
    return {"middle_mlps": middle, "middle_mlps_pass": bool(middle) and all(v >= drop for v in middle.values()),
            "two_hop_blocks": two_hop, "two_hop_blocks_pass": len(two_hop) >= 2, "drop": drop}
