"""Activation, head, attribution and subspace patching; the illusion check on the 3-D toy."""
from __future__ import annotations

import pytest
import torch

from interp.interventions.patching import (activation_patching, attribution_patching, head_patching, heatmap, illusion_check,
                             logit_diff, patch_subspace)
from interp.model.tiny import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("gpt2", n_layers=3, d_model=32)
    clean = model.to_tokens("the cat sat on the mat")
    corrupted = model.to_tokens("the dog sat on the mat")
    logits = model(clean)[0, -1]
    correct, wrong = int(logits.argmax()), int(logits.argmin())
    return model, clean, corrupted, logit_diff(correct, wrong)


def test_patching_extremes_are_exact(setup):
    model, clean, corrupted, metric = setup
    result = activation_patching(model, clean, corrupted, metric, hook_template="blocks.{layer}.hook_resid_post")
    assert result.scores.shape == (3, clean.shape[1])
    # The last block's output at the last position decides the metric alone: fully restored.
    assert result.scores[-1, -1] == pytest.approx(1.0, abs=1e-5)
    # Positions before the changed token carry identical activations in both runs: nothing moves.
    torch.testing.assert_close(result.scores[:, :2], torch.zeros(3, 2), atol=1e-5, rtol=0)
    pre = activation_patching(model, clean, corrupted, metric)  # resid_pre
    # Layer 0's input at the changed position restores everything: it is the only difference.
    assert pre.scores[0, 2] == pytest.approx(1.0, abs=1e-5)
    fig = heatmap(result, tokens=model.tokenizer.convert_ids_to_tokens(clean[0].tolist()))
    assert fig.data[0].z is not None


def test_whole_hook_and_head_patching(setup):
    model, clean, corrupted, metric = setup
    whole = activation_patching(model, clean, corrupted, metric, per_position=False)
    torch.testing.assert_close(whole.scores[:, 0], torch.ones(3), atol=1e-5, rtol=0)
    heads = head_patching(model, clean, corrupted, metric)
    assert heads.scores.shape == (3, 4) and heads.col_labels == ["H0", "H1", "H2", "H3"]
    # All heads' z at once is the attention output: patching either gives the same metric.
    all_z = activation_patching(model, clean, corrupted, metric, hook_template="blocks.{layer}.attn.hook_z",
                                per_position=False)
    attn_out = activation_patching(model, clean, corrupted, metric, hook_template="blocks.{layer}.hook_attn_out",
                                   per_position=False)
    torch.testing.assert_close(all_z.raw, attn_out.raw, atol=1e-5, rtol=1e-5)
    # Every layer has some head whose patch moves the metric.
    assert heads.raw.sub(heads.corrupted).abs().sum(1).min() > 0


def test_attribution_patching_tracks_real_patching(setup):
    model, clean, corrupted, metric = setup
    real = activation_patching(model, clean, corrupted, metric)
    approx = attribution_patching(model, clean, corrupted, metric)
    assert approx.scores.shape == real.scores.shape
    r, a = real.scores.flatten(), approx.scores.flatten()
    corr = torch.corrcoef(torch.stack([r, a]))[0, 1]
    assert corr > 0.9, (real.scores, approx.scores)
    # Exact where the clean and corrupted activations are equal: zero.
    torch.testing.assert_close(approx.scores[:, :2], torch.zeros(3, 2), atol=1e-6, rtol=0)


def test_subspace_patch_of_full_basis_equals_full_patch(setup):
    model, clean, corrupted, metric = setup
    hook = "blocks.1.hook_resid_post"
    full = patch_subspace(model, corrupted, clean, hook, torch.eye(model.d_model), metric, position=None)
    none = patch_subspace(model, corrupted, clean, hook, torch.zeros(model.d_model, 1) + 1e-9, metric, position=None)
    reference = activation_patching(model, clean, corrupted, metric, hook_template="blocks.{layer}.hook_resid_post",
                                    per_position=False)
    assert full == pytest.approx(float(reference.raw[1, 0]), abs=1e-4)
    assert none == pytest.approx(reference.corrupted, abs=1e-3)


def toy(n: int = 200, seed: int = 0):
    """Makelov et al.'s 3-D toy: h = (f, f, c) for a binary feature f and a constant c.

    Downstream reads h₁ and h₃ (readout rows e₁, e₃); h₂ is dormant (varies with f, read by
    nothing) and h₃ is disconnected (read, but constant in the data).
    """
    g = torch.Generator().manual_seed(seed)
    f_base = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    f_src = -f_base  # every pair differs in the feature
    c = 0.5
    h_base = torch.stack([f_base, f_base, torch.full((n,), c)], dim=1)
    h_src = torch.stack([f_src, f_src, torch.full((n,), c)], dim=1)
    readout = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    weights = torch.tensor([1.0, 1.0])

    def run(h: torch.Tensor) -> torch.Tensor:  # metric: mean output agreement with the source feature
        return ((h @ readout.T) @ weights * f_src).mean()

    return run, h_base, h_src, readout


def test_illusion_check_passes_faithful_and_flags_illusory_direction():
    run, h_base, h_src, readout = toy()
    faithful = illusion_check(run, h_base, h_src, torch.tensor([1.0, 0.0, 0.0]), readout)
    assert faithful.verdict == "faithful", faithful
    assert faithful.effect_rowspace == pytest.approx(faithful.effect_direction)
    illusory_v = torch.tensor([0.0, 1.0, 1.0]) / 2 ** 0.5
    illusory = illusion_check(run, h_base, h_src, illusory_v, readout)
    # Patching along v really moves the output...
    assert illusory.effect_direction > 0.5
    # ...but only through the dormant part: its rowspace part alone does nothing.
    assert illusory.verdict == "illusory", illusory
    assert illusory.effect_rowspace == pytest.approx(0.0, abs=1e-6)
    assert illusory.rowspace_coordinate_gap == pytest.approx(0.0, abs=1e-6)
    assert illusory.rowspace_fraction == pytest.approx(2 ** -0.5)
    assert any("rowspace" in r for r in illusory.reasons)


def test_illusion_check_flags_rowspace_part_that_does_far_more_than_the_direction():
    """Issue #15's toy: the read-out's rowspace also carries the real feature.

    h = x e₁ + c e₂ + x e₃ with one read-out row w = e₁ + e₂ and v = (e₂ + e₃)/√2: e₂ is read
    but constant, e₃ varies but is unread. v's rowspace part lies along e₁ + e₂ and so picks up
    the real feature e₁: patched alone it moves the metric by 2.0, the direction by only 1.0.
    The rowspace part does not reproduce the direction's effect, so the direction is illusory.
    """
    n, c = 200, 0.5
    g = torch.Generator().manual_seed(0)
    x_base = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x_src = -x_base

    def h(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, torch.full((n,), c), x], dim=1)

    readout = torch.tensor([[1.0, 1.0, 0.0]])

    def run(act: torch.Tensor) -> torch.Tensor:
        return ((act @ readout.T).squeeze(1) * x_src).mean()

    v = torch.tensor([0.0, 1.0, 1.0]) / 2 ** 0.5
    report = illusion_check(run, h(x_base), h(x_src), v, readout)
    assert report.effect_direction == pytest.approx(1.0, abs=1e-5)
    assert report.effect_rowspace == pytest.approx(2.0, abs=1e-5)
    assert report.effect_nullspace == pytest.approx(0.0, abs=1e-5)
    assert report.rowspace_fraction == pytest.approx(0.5, abs=1e-6)
    assert report.rowspace_effect_ratio == pytest.approx(2.0, abs=1e-5)
    assert report.verdict == "illusory", report
    assert any("rowspace" in r for r in report.reasons)
    # The real feature's own direction e₁, half in the nullspace (e₁ − e₂)/2, stays faithful:
    # its rowspace part reproduces its effect (2.0 both).
    faithful = illusion_check(run, h(x_base), h(x_src), torch.tensor([1.0, 0.0, 0.0]), readout)
    assert faithful.verdict == "faithful", faithful
    assert faithful.effect_rowspace == pytest.approx(faithful.effect_direction, abs=1e-5)
