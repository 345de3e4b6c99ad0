"""HookedModel: hook names on every family, exact HF numerics, TransformerLens parity, hook hygiene."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import interp
from interp.errors import HookNameError, LayerRangeError, ModelLoadError
from interp.model.hooks import count_hooks
from interp.model.tiny import FAMILIES, tiny_model

TEXTS = ["the cat sat on the mat and then it ran", "a big blue bird flew over the tree"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return tiny_model(request.param)


def tokens_for(model):
    return model.to_tokens(TEXTS, return_attention_mask=True)


# -- exact HF numerics --------------------------------------------------------------
def test_resid_post_equals_hf_hidden_states(family_model):
    model = family_model
    tokens, mask = tokens_for(model)
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)] + ["blocks.0.hook_resid_pre"]
    logits, cache = model.run_with_cache(tokens, names=names, attention_mask=mask)
    out = model.model(input_ids=tokens, attention_mask=mask, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    assert len(hidden) == model.n_layers + 1
    real = mask.bool()  # padding positions get mask-derived position ids here, arange in HF
    assert torch.equal(logits[real], out.logits[real])
    # HF applies the final norm to its last hidden state; every earlier one is a raw block output.
    for layer in range(model.n_layers - 1):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_post"][real], hidden[layer + 1][real]), layer
    assert torch.equal(cache["blocks.0.hook_resid_pre"][real], hidden[0][real])


def _mlp_hidden(model, block, x):
    """The MLP's hidden activation computed by hand from its normalised input."""
    kind = model.model.config.model_type
    if kind == "gpt2":
        return block.mlp.act(block.mlp.c_fc(x))
    if kind == "gpt_neox":
        return block.mlp.act(block.mlp.dense_h_to_4h(x))
    return block.mlp.act_fn(block.mlp.gate_proj(x)) * block.mlp.up_proj(x)


def _blocks(model):
    cfg = model.model.config
    return {"gpt2": lambda m: m.transformer.h, "gpt_neox": lambda m: m.gpt_neox.layers}.get(
        cfg.model_type, lambda m: m.model.layers)(model.model)


def test_mlp_post_and_attn_z_match_direct_computation(family_model):
    model = family_model
    tokens, mask = tokens_for(model)
    kind = model.model.config.model_type
    layer = model.n_layers - 1
    names = [f"blocks.{layer}.{s}" for s in ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "mlp.hook_post", "hook_mlp_out")]
    _, cache = model.run_with_cache(tokens, names=names, attention_mask=mask)
    block = _blocks(model)[layer]
    pre, z, attn_out, post, mlp_out = (cache[n] for n in names)

    # mlp.hook_post: the nonlinearity applied to the MLP input, computed independently.
    if kind == "gpt2":
        mlp_in = block.ln_2(pre + attn_out)
    elif kind == "gpt_neox":
        parallel = model.model.config.use_parallel_residual
        mlp_in = block.post_attention_layernorm(pre if parallel else pre + attn_out)
    elif kind == "gemma2":
        mlp_in = block.pre_feedforward_layernorm(pre + attn_out)
    else:
        mlp_in = block.post_attention_layernorm(pre + attn_out)
    torch.testing.assert_close(post, _mlp_hidden(model, block, mlp_in), rtol=1e-5, atol=1e-6)

    # attn.hook_z is [batch, pos, n_heads, d_head] and the output projection maps it to attn_out.
    n_heads = model.model.config.num_attention_heads if kind != "gpt2" else model.model.config.n_head
    assert z.shape[:3] == (*tokens.shape, n_heads)
    o_proj = {"gpt2": lambda b: b.attn.c_proj, "gpt_neox": lambda b: b.attention.dense}.get(kind, lambda b: b.self_attn.o_proj)(block)
    projected = o_proj(z.flatten(-2))
    if kind == "gemma2":
        projected = block.post_attention_layernorm(projected)
    torch.testing.assert_close(projected, attn_out, rtol=1e-5, atol=1e-6)


def _causal_attention_z(q, k, v, scale):
    """softmax(q kᵀ · scale + causal mask) v, as [batch, pos, heads, d_head]; q/k/v are [b, h, p, d]."""
    scores = q @ k.transpose(-1, -2) * scale
    pos = q.shape[-2]
    scores = scores.masked_fill(torch.ones(pos, pos, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_gpt2_hook_z_from_first_principles():
    model = tiny_model("gpt2")
    tokens = model.to_tokens(TEXTS[0])
    _, cache = model.run_with_cache(tokens, names=["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"])
    block = model.model.transformer.h[1]
    qkv = block.attn.c_attn(block.ln_1(cache["blocks.1.hook_resid_pre"]))
    h, d = 4, model.d_model // 4
    q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in qkv.split(model.d_model, dim=-1))
    torch.testing.assert_close(cache["blocks.1.attn.hook_z"], _causal_attention_z(q, k, v, 1 / math.sqrt(d)),
                               rtol=1e-5, atol=1e-6)


def test_llama_hook_z_from_first_principles():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    model = tiny_model("llama")
    tokens = model.to_tokens(TEXTS[0])
    _, cache = model.run_with_cache(tokens, names=["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z"])
    attn = model.model.model.layers[0].self_attn
    x = model.model.model.layers[0].input_layernorm(cache["blocks.0.hook_resid_pre"])
    cfg = model.model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    q = attn.q_proj(x).unflatten(-1, (-1, d)).transpose(1, 2)
    k = attn.k_proj(x).unflatten(-1, (-1, d)).transpose(1, 2)
    v = attn.v_proj(x).unflatten(-1, (-1, d)).transpose(1, 2)
    cos, sin = model.model.model.rotary_emb(x, torch.arange(tokens.shape[1])[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    z = _causal_attention_z(q, repeat_kv(k, groups), repeat_kv(v, groups), 1 / math.sqrt(d))
    torch.testing.assert_close(cache["blocks.0.attn.hook_z"], z, rtol=1e-5, atol=1e-6)


# -- TransformerLens parity -------------------------------------------------------
def _tl_from_hf(model):
    """A HookedTransformer with the tiny GPT-2's weights (TransformerLens 3; 4 removed the class)."""
    pytest.importorskip("transformer_lens.HookedTransformer", reason="TransformerLens 4 has no HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = model.model.config
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layer, d_model=cfg.n_embd, n_heads=cfg.n_head, d_head=cfg.n_embd // cfg.n_head,
        d_mlp=4 * cfg.n_embd, d_vocab=cfg.vocab_size, n_ctx=cfg.n_positions, act_fn="gelu_new",
        normalization_type="LN", eps=cfg.layer_norm_epsilon, default_prepend_bos=False,
    )
    tl = HookedTransformer(tl_cfg)
    tl.load_state_dict(convert_gpt2_weights(model.model, tl_cfg), strict=False)  # no weight processing
    return tl.eval()


TL_TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # float32; the two implementations order sums differently


def test_gpt2_cache_matches_transformer_lens():
    model = tiny_model("gpt2")
    tl = _tl_from_hf(model)
    tokens = model.to_tokens(TEXTS[0])
    ours_logits, ours = model.run_with_cache(tokens)
    tl_logits, theirs = tl.run_with_cache(tokens)
    compared = 0
    for name, tensor in ours.items():
        if name in ("hook_pos_embed", "ln_final.hook_normalized"):
            continue
        torch.testing.assert_close(tensor, theirs[name], **TL_TOLERANCE, msg=name)
        compared += 1
    assert compared == 1 + 7 * model.n_layers
    # TransformerLens's hook_normalized sits before the norm's affine weights; apply them to compare.
    ln = tl.ln_final
    torch.testing.assert_close(ours["ln_final.hook_normalized"], theirs["ln_final.hook_normalized"] * ln.w + ln.b,
                               **TL_TOLERANCE)
    torch.testing.assert_close(ours_logits, tl_logits, **TL_TOLERANCE)


def test_transformer_lens_model_wraps_with_same_api():
    model = tiny_model("gpt2")
    tl = _tl_from_hf(model)
    wrapped = interp.load(tl, tokenizer=model.tokenizer)
    assert wrapped.backend == "transformer_lens"
    tokens = model.to_tokens(TEXTS[1])
    _, ours = model.run_with_cache(tokens, names=["blocks.1.hook_resid_mid", "blocks.0.mlp.hook_post"])
    _, via_tl = wrapped.run_with_cache(tokens, names=["blocks.1.hook_resid_mid", "blocks.0.mlp.hook_post"],
                                       return_logits=False)
    for name in ours:
        torch.testing.assert_close(ours[name], via_tl[name], **TL_TOLERANCE)
    # Every hook that fires is cached; hooks the config switches off are skipped, not errors.
    _, everything = wrapped.run_with_cache(tokens)
    assert "blocks.1.hook_resid_post" in everything and "blocks.0.attn.hook_result" not in everything
    assert wrapped.hook_shape("blocks.0.attn.hook_z") == (4, 8)
    with pytest.raises(HookNameError, match="does not fire"):
        wrapped.hook_shape("blocks.0.attn.hook_result")
    before = count_hooks(tl)
    with pytest.raises(RuntimeError, match="boom"):
        with wrapped.hooks([("blocks.0.hook_resid_post", lambda x, hook: x)]):
            raise RuntimeError("boom")
    assert count_hooks(tl) == before


def _bridge_from_hf(model):
    """A TransformerBridge (TransformerLens 3 and 4) around a copy of a tiny HF model, built offline."""
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf = copy.deepcopy(model.model)  # the bridge swaps its components into the model it wraps
    return build_bridge_from_module(hf, type(hf).__name__, hf_config=hf.config)


BRIDGE_FAMILIES = ["gpt2", "llama"]


@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_transformer_bridge_cache_matches_hf(family):
    model = tiny_model(family)
    wrapped = interp.load(_bridge_from_hf(model), tokenizer=model.tokenizer)
    assert wrapped.backend == "transformer_lens" and wrapped.n_layers == model.n_layers
    assert wrapped.hf_model is not model.model and type(wrapped.hf_model) is type(model.model)
    tokens, mask = model.to_tokens(TEXTS + ["the cat"], padding_side="left", return_attention_mask=True)
    ours_logits, ours = model.run_with_cache(tokens, attention_mask=mask)
    tl_logits, theirs = wrapped.run_with_cache(tokens, attention_mask=mask)
    real = mask.bool()  # left padding: the mask and position ids must reach the bridge's model
    torch.testing.assert_close(tl_logits[real], ours_logits[real], **TL_TOLERANCE)
    assert set(ours) <= set(theirs)
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name][real], tensor[real], **TL_TOLERANCE, msg=name)
    # The bridge fires attn.hook_z flat; hooks here see it per head, as on the HF backend.
    assert wrapped.hook_shape("blocks.0.attn.hook_z") == model.hook_shape("blocks.0.attn.hook_z") == (4, 8)


@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_transformer_bridge_hooks_generation_and_early_stop(family):
    model = tiny_model(family)
    bridge = _bridge_from_hf(model)
    wrapped = interp.load(bridge, tokenizer=model.tokenizer)
    tokens = model.to_tokens(TEXTS[0])

    def kill_head(z, hook):
        assert z.shape[-2:] == (4, 8)
        z = z.clone()
        z[:, :, 2] = 0
        return z

    edited = {}
    for m in (model, wrapped):
        with m.hooks([("blocks.0.attn.hook_z", kill_head)]):
            edited[m.backend] = m.run_with_cache(tokens, names=["blocks.0.hook_attn_out"])[1]["blocks.0.hook_attn_out"]
    clean = wrapped.run_with_cache(tokens, names=["blocks.0.hook_attn_out"])[1]["blocks.0.hook_attn_out"]
    assert not torch.allclose(edited["transformer_lens"], clean)
    torch.testing.assert_close(edited["transformer_lens"], edited["hf"], **TL_TOLERANCE)

    # Generation: left-padded prompts of different lengths, steered, greedy and sampled (a
    # sample follows the whole distribution, so a step that lost its context shows up).
    prompts = ["the cat sat", "a big blue bird flew over"]
    steer = [("blocks.1.hook_resid_post", lambda x, hook: x + 3.0)]
    base = count_hooks(bridge)
    with warnings.catch_warnings():
        # Bridges of some families leave the transformers KV cache empty; generation notices,
        # says so once, and decodes without it.
        warnings.simplefilter("ignore", RuntimeWarning)
        for options in ({}, {"do_sample": True, "seed": 3}, {"hooks": steer}):
            hf_out = model.generate(prompts, max_new_tokens=8, **options)
            tl_out = wrapped.generate(prompts, max_new_tokens=8, **options)
            assert torch.equal(tl_out.tokens, hf_out.tokens), options
            assert tl_out.texts == hf_out.texts
    assert count_hooks(bridge) == base

    reached = []
    handle = wrapped.points["blocks.1.hook_resid_pre"].module.register_forward_hook(lambda *a: reached.append(1))
    try:
        logits, cache = wrapped.run_with_cache(tokens, names=["blocks.0.hook_mlp_out"], return_logits=False)
    finally:
        handle.remove()
    assert logits is None and list(cache) == ["blocks.0.hook_mlp_out"] and reached == []
    assert count_hooks(bridge) == base


def test_transformer_bridge_feeds_feature_readouts():
    from interp.evaluation.features import mlp_output_direction, unembedding

    model = tiny_model("llama")
    wrapped = interp.load(_bridge_from_hf(model), tokenizer=model.tokenizer)
    torch.testing.assert_close(unembedding(wrapped), unembedding(model))
    z = torch.randn(3, model.hook_shape("blocks.1.mlp.hook_post")[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mlp_output_direction(wrapped, 1, z), mlp_output_direction(model, 1, z), **TL_TOLERANCE)


# -- hooks: replacement, scoping, hygiene ----------------------------------------------
def test_hook_replacement_changes_output_and_receives_hook_point():
    model = tiny_model("gpt2")
    tokens = model.to_tokens(TEXTS[0])
    clean = model(tokens)
    seen = []

    def zero(x, hook):
        seen.append((hook.name, hook.layer()))
        return torch.zeros_like(x)

    with model.hooks([("blocks.1.hook_resid_post", zero)]):
        ablated = model(tokens)
    assert seen == [("blocks.1.hook_resid_post", 1)]
    # With the last block's output zeroed, the final norm sees zeros: every position predicts alike.
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(ablated[0, 0], ablated[0, -1])
    torch.testing.assert_close(model(tokens), clean)  # gone after the block


def test_hook_z_edit_per_head_reaches_attn_out():
    model = tiny_model("llama")
    tokens = model.to_tokens(TEXTS[0])

    def kill_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    _, clean = model.run_with_cache(tokens, names=["blocks.0.hook_attn_out", "blocks.0.attn.hook_z"])
    with model.hooks([("blocks.0.attn.hook_z", kill_head)]):
        _, edited = model.run_with_cache(tokens, names=["blocks.0.hook_attn_out"])
    o_proj = model.model.model.layers[0].self_attn.o_proj
    z = clean["blocks.0.attn.hook_z"].clone()
    z[:, :, 2] = 0
    torch.testing.assert_close(edited["blocks.0.hook_attn_out"], o_proj(z.flatten(-2)))


def test_predicate_hooks_and_nested_contexts_remove_exactly_their_own():
    model = tiny_model("gpt2")
    base = count_hooks(model.model)
    calls = []
    with model.hooks([(lambda n: n.endswith("hook_resid_post"), lambda x, hook: calls.append(hook.name))]):
        outer = count_hooks(model.model)
        assert outer == base + model.n_layers
        with model.hooks([("hook_embed", lambda x, hook: None)]):
            assert count_hooks(model.model) == outer + 1
        assert count_hooks(model.model) == outer
        model(model.to_tokens("the cat"))
    assert calls == [f"blocks.{l}.hook_resid_post" for l in range(model.n_layers)]
    assert count_hooks(model.model) == base


def test_no_hook_left_after_exception_in_body_or_in_hook():
    model = tiny_model("gpt2")
    base = count_hooks(model.model)
    with pytest.raises(ValueError, match="user code"):
        with model.hooks([("blocks.0.hook_mlp_out", lambda x, hook: None)]):
            with model.hooks([("blocks.1.hook_mlp_out", lambda x, hook: None)]):
                raise ValueError("user code")
    assert count_hooks(model.model) == base

    def broken(x, hook):
        raise ZeroDivisionError("inside the hook")

    with pytest.raises(ZeroDivisionError):
        with model.hooks([("blocks.0.hook_resid_pre", broken)]):
            model(model.to_tokens("the cat"))
    assert count_hooks(model.model) == base


def test_bad_hook_return_shape_is_reported():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match=r"shape \(1, 3, 5\).*shape \(1, 3, 32\)"):
        with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: torch.zeros(1, 3, 5))]):
            model(model.to_tokens("the cat"))


# -- early stopping ---------------------------------------------------------------------
def test_run_with_cache_stops_after_last_needed_layer_and_cleans_up():
    model = tiny_model("gpt2", n_layers=4)
    base = count_hooks(model.model)
    reached = []
    for i, block in enumerate(model.model.transformer.h):
        block.register_forward_hook(lambda m, a, o, i=i: reached.append(i))
    base += model.n_layers
    tokens = model.to_tokens(TEXTS[0])
    logits, cache = model.run_with_cache(tokens, names=["blocks.1.hook_mlp_out"], return_logits=False)
    assert logits is None and list(cache) == ["blocks.1.hook_mlp_out"]
    assert reached == [0]  # block 1 was interrupted right after its MLP; blocks 2-3 never ran
    reached.clear()
    logits, cache = model.run_with_cache(tokens, names=["blocks.0.hook_resid_post"], stop_at_layer=2)
    assert logits is None and reached == [0]
    assert count_hooks(model.model) == base
    # The early-stopped cache equals the full pass.
    _, full = model.run_with_cache(tokens, names=["blocks.1.hook_mlp_out"])
    _, early = model.run_with_cache(tokens, names=["blocks.1.hook_mlp_out"], return_logits=False)
    assert torch.equal(full["blocks.1.hook_mlp_out"], early["blocks.1.hook_mlp_out"])
    with pytest.raises(LayerRangeError, match="stop_at_layer=1"):
        model.run_with_cache(tokens, names=["blocks.2.hook_resid_post"], stop_at_layer=1)


# -- bad input ----------------------------------------------------------------------
def test_unknown_hook_lists_close_matches():
    model = tiny_model("gpt2")
    with pytest.raises(HookNameError, match="blocks.1.hook_resid_post") as err:
        model.run_with_cache("the cat", names=["blocks.1.hook_resid_pots"])
    assert "Did you mean" in str(err.value)


def test_layer_out_of_range_states_layer_count():
    model = tiny_model("gpt2")
    with pytest.raises(LayerRangeError, match="has 2 layers"):
        model.run_with_cache("the cat", names=["blocks.7.hook_resid_post"])


def test_missing_local_path_and_offline_hub_name(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no model directory"):
        interp.load(str(tmp_path / "nowhere" / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local directory"):
        interp.load("some-org/some-model-that-is-not-cached")


# -- loading from a local path ------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_from_pretrained_local_path_keeps_numerics(tmp_path, family):
    built = tiny_model(family)
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    loaded = interp.load(str(tmp_path), device="cpu")
    assert loaded.name == str(tmp_path)
    assert loaded.to_tokens(TEXTS[0]).tolist() == built.to_tokens(TEXTS[0]).tolist()
    # Weights arrive unconverted; outputs agree up to the attention kernel HF picks on load.
    ours, theirs = loaded.model.state_dict(), built.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    tokens = built.to_tokens(TEXTS[0])
    torch.testing.assert_close(loaded(tokens), built(tokens), rtol=1e-5, atol=1e-6)


# -- tokens -------------------------------------------------------------------------------
def test_to_tokens_bos_and_padding_are_explicit():
    model = tiny_model("gpt2")
    right, mask = model.to_tokens(["the cat", "the big red cat"], return_attention_mask=True)
    assert right[:, 0].tolist() == [model.bos_token_id] * 2
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert right[0, 3:].tolist() == [model.pad_token_id] * 2
    left, lmask = model.to_tokens(["the cat", "the big red cat"], padding_side="left", return_attention_mask=True)
    assert lmask[0].tolist() == [0, 0, 1, 1, 1] and left[0, -2:].tolist() == right[0, 1:3].tolist()
    no_bos = model.to_tokens("the cat", prepend_bos=False)
    assert no_bos.shape == (1, 2)
    assert model.to_string(no_bos[0]) == "the cat"


# -- generation ----------------------------------------------------------------------------
def test_generate_with_hooks_and_kv_cache():
    model = tiny_model("gpt2")
    prompt = model.to_tokens("the cat sat")
    cached = model.generate(prompt, max_new_tokens=6, use_cache=True).tokens
    uncached = model.generate(prompt, max_new_tokens=6, use_cache=False).tokens
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : prompt.shape[1]], prompt)
    # Our loop reproduces HF's own greedy generate.
    hf = model.model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=model.pad_token_id)
    assert torch.equal(cached, hf)
    steer = model.model.transformer.wte.weight[5] * 50

    def add(x, hook):
        return x + steer

    steered = model.generate(prompt, max_new_tokens=6, hooks=[("blocks.1.hook_resid_post", add)]).tokens
    assert not torch.equal(steered, cached)
    base = count_hooks(model.model)
    assert torch.equal(model.generate(prompt, max_new_tokens=6).tokens, cached)
    assert count_hooks(model.model) == base
