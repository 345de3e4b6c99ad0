"""What a dictionary feature reads and writes: top examples, output direction, logit effects.

Shared by SNMF features and SAE latents (dashboards build on the same pieces):

* :func:`top_examples` — the stored rows where a feature is most active, with context;
* :func:`mlp_output_direction` — an MLP-neuron-space vector pushed through the MLP's output
  projection (``W_out · z``) into the residual stream;
* :func:`unembed_tokens` — a residual direction projected on the unembedding: the tokens it
  promotes and suppresses.
"""
from __future__ import annotations

from typing import Any

import torch


def unembed_tokens(model: Any, direction: torch.Tensor, k: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Top-``k`` promoted and suppressed tokens of a residual direction [d_model] (``W_U · v``).

    The final norm is left out, as in the usual logit-lens reading of a direction.
    """
    W_U = unembedding(model)  # [vocab, d_model]
    logits = W_U @ direction.to(W_U.device, W_U.dtype)
    top, bottom = logits.topk(k), (-logits).topk(k)
    name = model.tokenizer.convert_ids_to_tokens
    return {"promoted": list(zip(name(top.indices.tolist()), top.values.tolist())),
            "suppressed": list(zip(name(bottom.indices.tolist()), (-bottom.values).tolist()))}


def unembedding(model: Any) -> torch.Tensor:
    """``W_U`` as ``[vocab, d_model]`` whatever the backend (TransformerLens keeps it transposed)."""
    if model.backend == "transformer_lens":
        return model.model.W_U.T.detach()
    return model.model.get_output_embeddings().weight.detach()


@torch.no_grad()
def mlp_output_direction(model: Any, layer: int, z: torch.Tensor) -> torch.Tensor:
    """``W_out · z``: neuron-space vectors ``z`` [..., d_mlp] as residual directions [..., d_model].

    Applies the module that reads ``blocks.{layer}.mlp.hook_post`` without its bias, so it
    works for every family's output projection (Linear or GPT-2's Conv1D).
    """
    point = model.points[f"blocks.{layer}.mlp.hook_post"]
    if model.backend == "transformer_lens":
        return z.to(model.model.blocks[layer].mlp.W_out.dtype) @ model.model.blocks[layer].mlp.W_out
    proj = point.module
    z = z.to(next(proj.parameters()).dtype)
    return proj(z) - proj(torch.zeros_like(z))


def top_examples(store: Any, scores: torch.Tensor, k: int = 10, context: int = 8,
                 tokenizer: Any = None) -> list[dict]:
    """The ``k`` store rows with the highest ``scores`` [len(store)], with their context.

    Each example has the row, its score, the token ids of the context ending at the row, and
    (with a tokenizer) the context as text with the active token marked ``[[...]]``.
    """
    if scores.shape[0] != len(store):
        raise ValueError(f"scores have {scores.shape[0]} rows but the store has {len(store)}")
    values, rows = scores.float().topk(min(k, len(scores)))
    out = []
    for value, row in zip(values.tolist(), rows.tolist()):
        ctx = store.tokens_for(row)
        prefix = ctx.prefix[-(context + 1):].tolist()
        example = {"row": row, "score": value, "tokens": prefix}
        if tokenizer is not None:
            words = tokenizer.convert_ids_to_tokens(prefix)
            example["text"] = " ".join(words[:-1] + [f"[[{words[-1]}]]"])
        out.append(example)
    return out


def describe_snmf(model: Any, result: Any, store: Any, layer: int, k: int = 10,
                  features: list[int] | None = None) -> list[dict]:
    """Per SNMF feature: top-coefficient examples, its residual direction's logit effects.

    ``result.coefficients`` must be row-aligned with ``store`` (fit on the same rows).
    """
    if result.coefficients.shape[0] != len(store):
        raise ValueError(f"the SNMF was fit on {result.coefficients.shape[0]} rows but the store has {len(store)}; "
                         "describe it with the store it was fit on")
    chosen = range(result.features.shape[0]) if features is None else features
    out = []
    for i in chosen:
        direction = mlp_output_direction(model, layer, result.features[i])
        out.append({
            "feature": i,
            "neurons": int((result.features[i] != 0).sum()),
            "examples": top_examples(store, result.coefficients[:, i], k, tokenizer=model.tokenizer),
            "residual_direction_norm": float(direction.norm()),
            **unembed_tokens(model, direction, k),
        })
    return out
