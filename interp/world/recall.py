"""Greedy fact recall by hop count: the first thing to ask of a model trained on the world.

Shared by the evaluation (:mod:`.evaluate`) and the mean-ablation table (:mod:`.ablation`),
which re-measures recall with each block ablated.
"""
from __future__ import annotations

from typing import Any

import torch

from interp.world.generator import BOS, World


def vocab_ids(world: World, words: list[str]) -> list[int]:
    index = vocab_index(world)
    return [index[w] for w in words]


def vocab_index(world: World) -> dict[str, int]:
    cached = getattr(world, "_vocab_index", None)
    if cached is None:
        cached = {w: i for i, w in enumerate(world.vocab)}
        world._vocab_index = cached
    return cached


@torch.no_grad()
def last_logits(model: Any, prompts: list[list[int]], batch_size: int) -> torch.Tensor:
    """Next-token logits after each prompt ``[n, vocab]``; prompts are right-padded."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, p in enumerate(chunk):
            tokens[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        # The mask changes no real position under right padding; it tells HF the zeros are padding.
        logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(p) - 1 for p in chunk], device=device)
        out.append(logits[torch.arange(len(chunk), device=device), last].float().cpu())
    return torch.cat(out)


def fact_recall(model: Any, world: World, hops: int = 1, batch_size: int = 64) -> dict:
    """Greedy answers to every question with ``hops`` look-ups (:func:`fact_prompts`).

    ``accuracy`` counts each question once; ``weighted`` weights it by how often the
    generator writes its land (the accuracy on the world's own text); ``rarest_quarter``
    is the accuracy on the quarter of lands written least.
    """
    chains = world.facts.chains(hops)
    prompts, values = [[BOS] + c.words() for c in chains], [c.value for c in chains]
    logits = last_logits(model, [vocab_ids(world, p) for p in prompts], batch_size)
    pred = logits.argmax(-1).tolist()
    correct = [p == t for p, t in zip(pred, vocab_ids(world, values))]
    weights = [world.facts.weight(c) for c in chains]
    rare = set(world.facts.entities[-len(world.facts.entities) // 4:])
    in_rare = [world.facts.anchor_land(c) in rare for c in chains]
    wrong = [" ".join(p[1:]) + " -> " + world.vocab[q] for p, q, c in zip(prompts, pred, correct) if not c]
    rare_hits = [c for c, r in zip(correct, in_rare) if r]
    return {"accuracy": sum(correct) / len(correct),
            "weighted": sum(w for w, c in zip(weights, correct) if c) / sum(weights),
            "rarest_quarter": sum(rare_hits) / len(rare_hits), "n": len(correct), "wrong": wrong[:10]}
