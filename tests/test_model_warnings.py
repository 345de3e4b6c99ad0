"""The toolkit's own model calls use the current transformers API and mark their padding.

Two kinds of noise are checked for: deprecation warnings (``past_key_values`` renamed to
``cache``; they come through the ``warnings`` module) and HF's "We strongly recommend passing
in an `attention_mask`" note, which comes through transformers' logger with
``warning_once``, so it is caught from the logger, not from ``warnings``.
"""
from __future__ import annotations

import logging
import warnings

import pytest
import torch

import interp
from interp.model.tiny import tiny_model

TEXTS = ["the cat sat on the mat and then it ran", "a dog", "a big blue bird flew"]


@pytest.fixture
def strict(caplog):
    """Every warning is an error, and transformers' log records are collected.

    transformers' logger does not propagate to the root logger, so caplog's handler is
    attached to it directly; ``warning_once`` remembers what it already said in this process,
    so its memory is cleared first.
    """
    import transformers.utils.logging as hf_logging

    hf_logging.warning_once.cache_clear()
    logger = logging.getLogger("transformers")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="transformers")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _transformers_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("transformers") and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forward_generation_and_harvest_are_quiet(family, strict, tmp_path):
    model = tiny_model(family)
    assert model.pad_token_id in model.to_tokens(TEXTS)[:, -1]  # padding HF could spot
    logits = model(TEXTS)  # right-padded texts: the wrapper passes the mask it builds
    tokens, mask = model.to_tokens(TEXTS, padding_side="left", return_attention_mask=True)
    _, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_post"], attention_mask=mask)
    out = model.generate(TEXTS, max_new_tokens=4)  # left-padded, KV cache on
    store = interp.harvest(model, TEXTS * 4, hooks=["blocks.0.hook_resid_post"], out=tmp_path / "store",
                           max_tokens=40, progress=False)
    assert logits.shape[0] == 3 and cache["blocks.1.hook_resid_post"].shape[:2] == tokens.shape
    assert out.new_tokens.shape == (3, 4) and len(store) >= 40
    assert _transformers_records(strict) == []


def test_world_evaluations_are_quiet(strict):
    """The world's own evaluations call the HF model directly, with right-padded batches."""
    import probes
    from interp.interventions.steering_lexical import topic_specs
    from interp.world import labelled_batch, pkck_batch, pkck_items, world_of_model
    from interp.world.ablation import block_means
    from interp.world.evaluate import heldout_loss, topic_consistency
    from interp.world.generator import PAD
    from interp.world.labels import encode_docs
    from interp.world.recall import last_logits
    from probes.pkck import answer_all, states_at

    model = interp.load("world", device="cpu")
    world = world_of_model()
    hf = model.hf_model
    logits = last_logits(hf, [[1, 5, 6, 7], [1, 5]], batch_size=2)  # the short prompt is padded
    torch.testing.assert_close(logits[1], last_logits(hf, [[1, 5]], batch_size=1)[0], rtol=1e-4, atol=1e-5)
    heldout_loss(hf, world, n_docs=4, seed=0)
    topic_consistency(hf, world, n_prompts=1, k=2, max_new=3, seed=0)
    docs = world.sample_docs(4, seed=1)
    tokens, labels = encode_docs(world, docs)
    block_means(hf, tokens, labels["doc_kind"] >= 0)
    labelled = labelled_batch(6, seed=2, world=world, model=model, names=["blocks.1.hook_resid_post"])
    pad = world.vocab.index(PAD)
    assert torch.equal(labelled.attention_mask.bool(), labelled.tokens != pad) and (labelled.tokens == pad).any()
    probes.sweep.collect(model, labelled.tokens, ["blocks.0.hook_resid_post"], labelled.mask,
                         attention_mask=labelled.attention_mask)
    topic_specs(model, topic_index=0, layer=1, n_docs=12)
    batch = pkck_batch(pkck_items(4, seed=0, world=world), world=world)
    answer_all(model, batch["tokens"], batch["last_pos"], batch["answers"])
    states_at(model, batch["tokens"][:, 0], batch["last_pos"], "blocks.1.hook_resid_post")
    assert _transformers_records(strict) == []
