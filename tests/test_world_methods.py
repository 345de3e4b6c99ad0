"""Methods on the shipped world model: they must find what the world planted.

* probes find topic and sentiment where the model computes them, not in the embedding;
* the PK/CK subspace moves held-out answers to the source's far more than a random one;
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
    acts = probes.sweep.collect(model, batch.tokens, hooks, keep, attention_mask=batch.attention_mask)
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


# The subspace is trained after block 2 of the 4-layer model,
# where the instruction has been read and the answer can still be switched.
PKCK_LAYER = 2


@pytest.fixture(scope="module")
def pkck_data(world_model):
    items = pkck_items(200, seed=5)
    batch = pkck_batch(items)
    return answer_all(world_model, batch["tokens"], batch["last_pos"], batch["answers"],
                      [it.item_type for it in items])


@pytest.mark.slow
def test_full_interchange_moves_held_out_answers_far_beyond_a_random_subspace(world_model, pkck_data):
    """Accuracy counts only held-out rows whose source answer differs from the base's, so
    doing nothing scores 0; a random subspace of the same rank is the control."""
    from probes.pkck import interchange_sweep

    hook = f"blocks.{PKCK_LAYER}.hook_resid_post"
    sweep = interchange_sweep(world_model, pkck_data, [hook], ranks=(1, 2), seeds=(0, 1), steps=150)
    rank = sweep["hooks"][hook]
    assert rank[2]["accuracy"]["mean"] > rank[2]["random"]["mean"] + 0.3, rank
    # The full swap nests ranks: rank 2 can do whatever rank 1 does.
    assert rank[2]["accuracy"]["mean"] >= rank[1]["accuracy"]["mean"] - 0.05, rank


@pytest.mark.slow
def test_pkck_subspace_is_orthonormal_and_read_where_trained(world_model, pkck_data):
    from probes.pkck import compare_ranks

    comparison = compare_ranks(world_model, pkck_data, f"blocks.{PKCK_LAYER}.hook_resid_post", ranks=(1, 2),
                               steps=150, max_new_tokens=4)
    rank2 = comparison.spaces[2]
    assert rank2.hook == comparison.hook == comparison.readouts[2]["hook"]
    torch.testing.assert_close(rank2.U.T @ rank2.U, torch.eye(2), atol=1e-5, rtol=0)
    assert rank2.n_train >= 100
    # Rank 1's read-out is continuous between its anchors, so its separation is measured,
    # not fixed at 0 by construction.
    shares = comparison.readouts[1]["pk_share"]
    assert bool(((shares > 0.01) & (shares < 0.99)).any())


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
