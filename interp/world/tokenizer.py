"""The word-level tokenizer: one id per word of the world, built (not trained) from the vocab.

Saved as a standard ``tokenizer.json`` so ``AutoTokenizer.from_pretrained(dir)`` returns a
``PreTrainedTokenizerFast`` with BOS/EOS/PAD/UNK set. Punctuation is split off words, so
``"velar?"`` and ``"velar ?"`` tokenize the same; decoding joins tokens with single spaces,
which round-trips the generator's text exactly.
"""
from __future__ import annotations

from typing import Any

from interp.world.generator import BOS, EOS, PAD, UNK


def build_tokenizer(vocab: list[str], model_max_length: int = 128) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``vocab`` (id = index). Adds ``<bos>`` in front of
    a text by default, as every training document starts with it; pass
    ``add_special_tokens=False`` for the bare words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    for special in (PAD, BOS, EOS, UNK):
        if special not in ids:
            raise ValueError(f"the vocabulary lacks the special token {special}")
    core = Tokenizer(models.WordLevel(vocab=ids, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, ids[BOS])])
    core.add_special_tokens([PAD, BOS, EOS, UNK])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False, padding_side="right",
    )


def encode_words(vocab_index: dict[str, int], words: list[str]) -> list[int]:
    """Ids of already-split words (the fast path used for generated documents)."""
    unk = vocab_index[UNK]
    return [vocab_index.get(w, unk) for w in words]
