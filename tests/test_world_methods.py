"""Methods on the shipped world model: they must find what the world planted.

* probes find topic and sentiment where the model computes them, not in the embedding;
* the rank-2 PK/CK subspace separates supportive from conflicting items where a rank-1
  sign read-out cannot;
* steering towards a topic with a difference-in-means vector raises the topic's share.
"""
from __future__ import annotations

import pytest
import torch

import interp
import probes
from interp.world import World, labelled_batch, pkck_batch, pkck_items
from interp.world import default_model_path
from probes.pkck import answer_all

pytestmark = pytest.mark.skipif(not (default_model_path() / "model.safetensors").exists(),
                                reason="the default world model is not built: run `interp world train`")


@pytest.fixture(scope="module")
def world_model():
    torch.set_num_threads(2)
    return interp.load("world", device="cpu")


def _sweep(model, batch, labels, keep):
    hooks = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    acts = probes.sweep.collect(model, batch.tokens, hooks, keep)
    groups = torch.arange(len(batch.tokens))[:, None].expand_as(keep)[keep]
    return probes.probe_hooks(acts, labels[keep], groups)


def test_probes_find_topic_in_the_residual_stream_not_the_embedding(world_model):
    batch = labelled_batch(120, seed=3, kind="topical")
    results = _sweep(world_model, batch, batch.labels["topic"], batch.labels["topic"] >= 0)
    best = max(r.accuracy for h, r in results.items() if h != "hook_embed")
    # The embedding sees one word: function words carry no topic. The blocks gather context.
    assert results["hook_embed"].accuracy < 0.6
    assert best > 0.85


def test_probes_find_sentence_sentiment_at_the_full_stop(world_model):
    batch = labelled_batch(300, seed=3, kind="topical")
    dot = World().vocab.index(".")
    keep = (batch.labels["sentiment"] >= 0) & (batch.tokens == dot)
    results = _sweep(world_model, batch, batch.labels["sentiment"], keep)
    # "." itself is the same token in every sentence: any signal comes from the context.
    assert results["hook_embed"].auroc == pytest.approx(0.5, abs=0.05)
    assert max(r.auroc for r in results.values()) > 0.7


# The subspace is trained where the source can still be switched: after block 1 of 4 the
# model has read the instruction but not yet looked up the answer (at the last block the
# answer itself is formed and a 2-D swap cannot carry it; interchange accuracy 0.53 there).
PKCK_LAYER = 1


@pytest.fixture(scope="module")
def pkck(world_model):
    from probes.pkck import compare_ranks

    items = pkck_items(200, seed=5)
    batch = pkck_batch(items)
    data = answer_all(world_model, batch["tokens"], batch["last_pos"], batch["answers"],
                      [it.item_type for it in items])
    return data, compare_ranks(world_model, data, f"blocks.{PKCK_LAYER}.hook_resid_post", ranks=(1, 2),
                               steps=200, max_new_tokens=4)


@pytest.mark.slow
def test_pkck_subspace_is_orthonormal_trained_at_an_explicit_layer(pkck):
    data, comparison = pkck
    rank2 = comparison.spaces[2]
    assert rank2.hook == comparison.hook == f"blocks.{PKCK_LAYER}.hook_resid_post"
    assert comparison.readouts[2]["hook"] == rank2.hook  # read where it was trained
    torch.testing.assert_close(rank2.U.T @ rank2.U, torch.eye(2), atol=1e-5, rtol=0)
    assert rank2.n_train >= 100
    assert rank2.fit.accuracy > 0.65  # the interchange moves the answer to the source's


@pytest.mark.slow
def test_rank2_separates_supportive_from_conflicting(pkck):
    data, comparison = pkck
    types = data.interaction()
    assert types.count("supportive") >= 10 and types.count("conflicting") >= 40
    # A rank-1 sign read-out gives every token a share of 0 or 1: its balance carries nothing
    # about whether both sources are active, at any step.
    assert comparison.strength(1) == pytest.approx(0.0, abs=1e-6)
    # Rank 2 reads two coordinates: supportive and conflicting items differ in their balance.
    assert comparison.strength(2) > 0.2, comparison.separation[2]


def test_difference_in_means_steering_raises_the_topic_share(world_model):
    from interp.interventions.steering_lexical import evaluate_steering, topic_prompts, topic_specs
    from interp.world.labels import lexical_tables
    from interp.world.lexicon import TOPICS

    topic = list(TOPICS)[0]
    specs, _ = topic_specs(world_model, 0, layer=world_model.n_layers // 2, n_docs=120)
    rows = evaluate_steering(world_model, {"diff-in-means": specs["diff-in-means"]}, 0, topic_prompts(topic, n=8),
                             lexical_tables(World())["word_topics"], kl_targets=(0.5,), new_tokens=10)
    unsteered, steered = rows[0], rows[1]
    assert steered.kl == pytest.approx(0.5, rel=0.05)
    assert steered.success > unsteered.success + 0.3, rows
