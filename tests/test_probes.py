"""Probes: AUROC exactness, diff-in-means, and logistic probes on planted directions."""
from __future__ import annotations

import pytest
import torch

import probes


def test_binary_auroc_matches_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    positive = torch.rand(200, generator=g) < 0.4
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert probes.binary_auroc(scores, positive) == pytest.approx(float(pairwise), abs=1e-12)
    assert probes.binary_auroc(positive.float(), positive) == 1.0
    assert probes.binary_auroc(-positive.float(), positive) == 0.0


def planted(n=800, d=32, seed=0, classes=2, signal=2.0):
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=1)
    labels = torch.randint(0, classes, (n,), generator=g)
    acts = torch.randn(n, d, generator=g) + signal * directions[labels]
    return acts, labels, directions


def test_diff_in_means_recovers_the_planted_shift():
    acts, labels, dirs = planted(n=4000, signal=1.0)
    v = probes.diff_in_means(acts[labels == 1], acts[labels == 0])
    expected = dirs[1] - dirs[0]
    assert torch.nn.functional.cosine_similarity(v, expected, dim=0) > 0.97
    with pytest.raises(ValueError, match=r"\(3, 32\).*\(2, 31\)"):
        probes.diff_in_means(torch.zeros(3, 32), torch.zeros(2, 31))
    with pytest.raises(ValueError, match="no negative"):
        probes.diff_in_means(torch.zeros(3, 32), torch.zeros(0, 32))


def test_linear_probe_finds_signal_and_not_noise():
    acts, labels, dirs = planted(signal=3.0)  # Bayes accuracy ≈ Φ(3·√2/2) ≈ 0.98
    probe = probes.LinearProbe()
    result = probe.fit(acts, labels)
    assert result.accuracy > 0.93 and result.auroc > 0.97
    assert result.n_test == 200
    assert torch.nn.functional.cosine_similarity(probe.direction, dirs[1] - dirs[0], dim=0) > 0.9
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    chance = probes.LinearProbe().fit(acts, shuffled)
    assert chance.auroc < 0.65


def test_multiclass_probe_and_grouped_split():
    acts, labels, _ = planted(classes=5, signal=3.0)
    groups = torch.arange(len(acts)) // 10
    result = probes.LinearProbe().fit(acts, labels, groups=groups)
    assert result.accuracy > 0.85 and result.auroc > 0.95
    with pytest.raises(ValueError, match="single class"):
        probes.LinearProbe().fit(acts, torch.zeros(len(acts)))


def test_layer_sweep_finds_where_a_planted_variable_appears():
    """On a tiny model whose embedding writes a label into the residual stream at layer 1 only."""
    from interp.model.tiny import tiny_model

    model = tiny_model("gpt2", n_layers=3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 30, (64, 12), generator=g)
    labels = torch.randint(0, 2, (64, 12), generator=g)
    direction = torch.nn.functional.normalize(torch.randn(model.d_model, generator=g), dim=0) * 4
    state = {}

    def plant(x, hook):
        return x + direction * (state["labels"][..., None].float() * 2 - 1)

    original = model.run_with_cache

    def run_with_cache(tok, **kwargs):
        state["labels"] = labels[state["offset"]: state["offset"] + len(tok)]
        state["offset"] += len(tok)
        with model.hooks([("blocks.1.hook_resid_post", plant)]):
            return original(tok, **kwargs)

    state["offset"] = 0
    model.run_with_cache = run_with_cache
    sweep = probes.layer_sweep(model, tokens, labels, torch.ones_like(labels))
    acc = {h: r["accuracy"] for h, r in sweep["results"].items()}
    assert acc["blocks.0.hook_resid_post"] < 0.7  # before the plant: chance
    assert acc["blocks.1.hook_resid_post"] > 0.95
    assert len(sweep["figure"].data) == 2
