"""Declarative hook tables: where each TransformerLens hook name lives in a HF model.

One small table per architecture family, no code branches. A table says where the blocks
are, and for every hook name which submodule carries it and whether the hook reads that
module's input (its first positional argument) or its output (the first element when the
module returns a tuple). The model's own modules are hooked in place, so HF numerics are
kept exactly: nothing is converted or re-implemented.

Within a block, hooks are listed in execution order; early stopping relies on that order.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

IO = Literal["input", "output"]


@dataclass(frozen=True)
class Site:
    """Where one hook reads: a module path (relative to its block for block hooks)."""

    path: str
    io: IO
    # Hooks that exist only under some configs (e.g. resid_mid without parallel residual).
    when: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class ArchTable:
    """How one HF architecture family maps onto TransformerLens hook names."""

    blocks: str  # path of the nn.ModuleList of decoder blocks
    embed: str  # token embedding module (hook_embed reads its output)
    final_norm: str  # final norm module (ln_final.hook_normalized reads its output)
    block_hooks: dict[str, Site]  # per block, in execution order
    extra_hooks: dict[str, Site] = field(default_factory=dict)  # model-level, besides embed/ln_final


def _block(attn: str, o_proj: str, mlp: str, down_proj: str, mid: str, **extra: Site) -> dict[str, Site]:
    """The block hooks shared by every pre-norm family, in execution order."""
    attn_out = extra.pop("attn_out", Site(attn, "output"))
    mlp_out = extra.pop("mlp_out", Site(mlp, "output"))
    mid_site = extra.pop("mid_site", Site(mid, "input"))
    return {
        "hook_resid_pre": Site("", "input"),
        "attn.hook_z": Site(f"{attn}.{o_proj}", "input"),
        "hook_attn_out": attn_out,
        "hook_resid_mid": mid_site,
        "mlp.hook_post": Site(f"{mlp}.{down_proj}", "input"),
        "hook_mlp_out": mlp_out,
        "hook_resid_post": Site("", "output"),
    }


GPT2 = ArchTable(
    blocks="transformer.h",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    block_hooks=_block("attn", "c_proj", "mlp", "c_proj", mid="ln_2"),
    extra_hooks={"hook_pos_embed": Site("transformer.wpe", "output")},
)

GPT_NEOX = ArchTable(
    blocks="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    block_hooks=_block(
        "attention", "dense", "mlp", "dense_4h_to_h", mid="post_attention_layernorm",
        # Pythia's parallel residual feeds attention and MLP the same input: no resid_mid.
        mid_site=Site("post_attention_layernorm", "input", when=lambda c: not c.use_parallel_residual),
    ),
)

LLAMA = ArchTable(
    blocks="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    block_hooks=_block("self_attn", "o_proj", "mlp", "down_proj", mid="post_attention_layernorm"),
)

# Gemma-2 normalises each sub-layer's output before adding it to the residual stream;
# like TransformerLens, attn_out/mlp_out are taken after those post-norms.
GEMMA2 = ArchTable(
    blocks="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    block_hooks=_block(
        "self_attn", "o_proj", "mlp", "down_proj", mid="pre_feedforward_layernorm",
        attn_out=Site("post_attention_layernorm", "output"),
        mlp_out=Site("post_feedforward_layernorm", "output"),
    ),
)

# Keyed by HF `config.model_type`.
TABLES: dict[str, ArchTable] = {
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma2": GEMMA2,
}
