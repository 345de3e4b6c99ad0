"""Steering: KV-cache invariance, batch = one by one, prompt vs generated positions, hygiene."""
from __future__ import annotations

import pytest
import torch

import saes
from interp.model.hooks import count_hooks
from interp.interventions.steering import Clamp, Positions, Steering, calibrate_scale, next_token_kl
from interp.model.tiny import tiny_model

PROMPTS = ["the cat sat on the mat", "a dog ran", "the big blue bird flew over the tree"]
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param, n_layers=2, d_model=32)


def spec_for(model, positions, scale=6.0):
    g = torch.Generator().manual_seed(1)
    return Steering.from_direction(torch.randn(model.d_model, generator=g), HOOK, scale, positions)


POSITION_SPECS = ["all", "prompt", "generated", "last_prompt", {"prompt": [0, -2], "generated": [2, 5]}]


@pytest.mark.parametrize("positions", POSITION_SPECS, ids=str)
def test_kv_cache_does_not_change_steered_greedy_tokens(model, positions):
    spec = spec_for(model, positions)
    cached = model.generate(PROMPTS, max_new_tokens=8, steering=[spec], use_cache=True)
    uncached = model.generate(PROMPTS, max_new_tokens=8, steering=[spec], use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    plain = model.generate(PROMPTS, max_new_tokens=8)
    assert not torch.equal(cached.tokens, plain.tokens)  # the steer does something


@pytest.mark.parametrize("positions", ["all", "last_prompt", {"prompt": [0, -2], "generated": [2, 5]}], ids=str)
def test_batch_equals_prompts_one_by_one(model, positions):
    spec = spec_for(model, positions)
    batch = model.generate(PROMPTS, max_new_tokens=8, steering=[spec])
    for row, prompt in enumerate(PROMPTS):
        single = model.generate(prompt, max_new_tokens=8, steering=[spec])
        assert batch.new_tokens[row].tolist() == single.new_tokens[0].tolist(), prompt


def _activations_around_steer(model, spec):
    """Activations at the steered hook before the steer, and right after it (next block's input)."""
    before, after = [], []
    hooks = [(HOOK, lambda x, hook: before.append(x.clone())),
             ("blocks.1.hook_resid_pre", lambda x, hook: after.append(x.clone()))]
    out = model.generate(PROMPTS[:2], max_new_tokens=5, steering=[spec], hooks=hooks, return_steered=True)
    return out, before, after


def test_prompt_only_steering_leaves_generated_steps_unsteered_and_the_reverse(model):
    prompt_only = spec_for(model, "prompt")
    out, before, after = _activations_around_steer(model, prompt_only)
    P = out.prompt_length
    pad = (out.attention_mask[:, :P] == 0).sum(1)
    delta0 = after[0] - before[0]  # the prompt pass: every real prompt position moved by the steer
    expected = prompt_only.scale * prompt_only.vector
    for row in range(2):
        torch.testing.assert_close(delta0[row, pad[row]:], expected.expand(P - pad[row], -1))
        assert not delta0[row, : pad[row]].any()  # padding is not the prompt
    for b, a in zip(before[1:], after[1:]):  # cached decode steps: untouched
        assert torch.equal(a, b)
    steered = next(iter(out.steered.values()))
    assert not steered[:, P:].any() and steered[:, :P].sum() == out.attention_mask[:, :P].sum()

    generated_only = spec_for(model, "generated")
    out, before, after = _activations_around_steer(model, generated_only)
    assert torch.equal(after[0], before[0])  # the prompt pass is untouched
    for b, a in zip(before[1:], after[1:]):
        torch.testing.assert_close(a - b, (generated_only.scale * generated_only.vector).expand_as(a))


def test_generated_window_counts_steps_not_forward_calls(model):
    spec = spec_for(model, {"prompt": None, "generated": [1, 3]})
    out = model.generate(PROMPTS, max_new_tokens=6, steering=[spec], return_steered=True)
    steered = next(iter(out.steered.values()))
    P = out.prompt_length
    # Generated step j is the position P + j; the window [1, 3) covers P+1 and P+2 only.
    assert steered[:, P + 1: P + 3].all() and steered.sum() == 2 * len(PROMPTS)


def test_hooks_removed_when_generation_raises(model):
    base = count_hooks(model.model)
    calls = []

    def explode(x, hook):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("user hook failed mid-generation")

    with pytest.raises(RuntimeError, match="mid-generation"):
        model.generate(PROMPTS, max_new_tokens=6, steering=[spec_for(model, "all")], hooks=[(HOOK, explode)])
    assert count_hooks(model.model) == base


def test_clamp_keeps_the_error_term(model):
    torch.manual_seed(0)
    sae = saes.TopKSAE(model.d_model, 64, k=4)
    tokens = model.to_tokens(PROMPTS[0])
    _, cache = model.run_with_cache(tokens, names=[HOOK])
    x = cache[HOOK][0]
    with torch.no_grad():
        z = sae.encode(x)
    latent = int(z[-1].argmax())
    everywhere = torch.ones(1, x.shape[0], dtype=torch.bool)
    # Clamping to the value it already has changes nothing, error term included.
    same = Clamp(sae, latent, z[-1, latent].item(), hook=HOOK).apply(x[-1:][None], everywhere[:, :1])
    torch.testing.assert_close(same[0, 0], x[-1])
    clamped = Clamp(sae, latent, 10.0, hook=HOOK).apply(x[None], everywhere)[0]
    expected = x + (10.0 - z[:, latent])[:, None] * sae.W_dec[latent]
    torch.testing.assert_close(clamped, expected)
    out = model.generate(PROMPTS[0], max_new_tokens=4, steering=[Clamp(sae, latent, 50.0, hook=HOOK)])
    assert out.tokens.shape == (1, tokens.shape[1] + 4)


def test_spec_round_trip_and_sources(tmp_path, model):
    spec = spec_for(model, {"prompt": [-1], "generated": [0, 4]})
    spec.save(tmp_path / "steer")
    back = Steering.load(tmp_path / "steer.safetensors")
    assert back.to_dict() == spec.to_dict() and torch.equal(back.vector, spec.vector)
    sae = saes.TopKSAE(model.d_model, 16, k=2)
    from_sae = Steering.from_sae(sae, 3, scale=2.0, hook=HOOK)
    torch.testing.assert_close(from_sae.vector, sae.W_dec[3].detach() / sae.W_dec[3].detach().norm())
    with pytest.raises(ValueError, match="unknown positions"):
        Positions.parse("everywhere")
    with pytest.raises(ValueError, match=r"shape \(5,\).*\(32,\)"):
        model.generate("the cat", max_new_tokens=2, steering=[Steering(HOOK, torch.ones(5))])


def test_kl_calibration_hits_the_target(model):
    spec = spec_for(model, "all", scale=1.0)
    kls = [next_token_kl(model, [spec.with_scale(s)], PROMPTS) for s in (0.0, 1.0, 4.0, 16.0)]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)
    assert kls[1] < kls[2] < kls[3]
    # A random tiny model's KL saturates low, so the targets are fractions of what it reaches.
    for target in (0.2 * kls[3], 0.7 * kls[3]):
        tuned, kl = calibrate_scale(model, spec, PROMPTS, target)
        assert kl == pytest.approx(target, rel=0.05)
        assert next_token_kl(model, [tuned], PROMPTS) == pytest.approx(kl)


def test_scale_means_the_same_strength_for_every_source(model):
    """A folded input scale leaves decoder rows at norm 1/s; the added vector's norm is still
    ``scale``, the same as for a plain direction, and the row's norm is on record."""
    sae = saes.TopKSAE(model.d_model, 16, k=2)
    with torch.no_grad():
        sae.W_dec[5].mul_(7.6)                      # a row of norm 7.6, as after folding s = 1/7.6
    spec = Steering.from_sae(sae, 5, scale=3.0, hook=HOOK)
    same = Steering.from_direction(sae.W_dec[5].detach(), HOOK, scale=3.0)
    x = torch.zeros(1, 2, model.d_model)
    added = spec.apply(x, None) - x
    torch.testing.assert_close(added.norm(dim=-1), torch.full((1, 2), 3.0))
    torch.testing.assert_close(added, same.apply(x, None) - x)
    assert spec.source["decoder_norm"] == pytest.approx(float(sae.W_dec[5].norm()))
    from interp.interventions.steering import typical_norm
    assert typical_norm(model, HOOK, PROMPTS[:2]) > 0


def test_the_placed_steer_follows_a_changed_scale_vector_and_dtype() -> None:
    """apply() moves scale * vector to the activations' device once and reuses it; a new
    scale, vector or dtype must never reuse a stale copy."""
    from interp.interventions.steering import Steering

    s = Steering.from_direction(torch.tensor([3.0, 4.0]), "blocks.0.hook_resid_post", scale=1.0)
    x = torch.zeros(1, 2, 2)
    assert torch.allclose(s.apply(x, None)[0, 0], torch.tensor([0.6, 0.8]))
    s.scale = 2.0
    assert torch.allclose(s.apply(x, None)[0, 0], torch.tensor([1.2, 1.6]))
    s.vector = torch.tensor([0.0, 1.0])
    assert torch.allclose(s.apply(x, None)[0, 0], torch.tensor([0.0, 2.0]))
    assert s.apply(x.double(), None).dtype == torch.float64
