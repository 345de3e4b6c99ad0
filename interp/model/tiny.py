"""Tiny randomly initialised models of every supported family, built from configs offline.

Used by the tests and by examples that must run without any download.
"""
from __future__ import annotations

from typing import Any

import torch

from interp.model.hooked import HookedModel, wrap_hf

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree sky red blue big small happy sad "
    "and then it was is saw ate sang loud quiet . , ! ?"
).split()


def tiny_tokenizer(words: list[str] | None = None) -> Any:
    """A word-level fast tokenizer with explicit BOS/EOS/PAD/UNK (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(words or _WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_config(family: str, vocab_size: int = 64, n_layers: int = 2, d_model: int = 32, n_heads: int = 4) -> Any:
    """A small HF config of ``family`` (gpt2, gpt_neox, pythia, llama, mistral, qwen2, gemma2)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    llama_like = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_heads // 2, max_position_embeddings=128, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=128, **common)
    if family in ("gpt_neox", "pythia"):
        # Pythia uses the parallel residual (no resid_mid); plain GPT-NeoX does not.
        return tf.GPTNeoXConfig(hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                                num_attention_heads=n_heads, max_position_embeddings=128,
                                use_parallel_residual=family == "pythia", **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=d_model // n_heads, query_pre_attn_scalar=d_model // n_heads)
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


FAMILIES = ("gpt2", "gpt_neox", "pythia", "llama", "mistral", "qwen2", "gemma2")


def tiny_model(family: str = "gpt2", seed: int = 0, **config_kwargs: Any) -> HookedModel:
    """A randomly initialised tiny HookedModel of ``family`` with a word-level tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_config(family, vocab_size=len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return wrap_hf(model, tokenizer, name=f"tiny-{family}-seed{seed}")
