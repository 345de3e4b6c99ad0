"""Feature read-outs: W_out·z, unembedding projections, top examples from a store."""
from __future__ import annotations

import pytest
import torch

import interp
from interp.evaluation.features import describe_snmf, mlp_output_direction, top_examples, unembed_tokens
from interp.model.tiny import tiny_model
from saes import SNMF


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mlp_output_direction_is_the_output_projection(family):
    model = tiny_model(family)
    tokens = model.to_tokens("the cat sat on the mat")
    _, cache = model.run_with_cache(tokens, names=["blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"])
    post = cache["blocks.1.mlp.hook_post"][0]
    # The MLP output is W_out · post + bias; the direction map is the linear part.
    direction = mlp_output_direction(model, 1, post)
    bias = model.model.transformer.h[1].mlp.c_proj.bias if family == "gpt2" else 0.0  # Llama's has none
    bias_free = cache["blocks.1.hook_mlp_out"][0] - bias
    torch.testing.assert_close(direction, bias_free, rtol=1e-5, atol=1e-6)


def test_unembed_tokens_orders_by_logit():
    model = tiny_model("gpt2")
    target = model.tokenizer.convert_tokens_to_ids("bird")
    direction = model.model.get_output_embeddings().weight[target] * 10
    result = unembed_tokens(model, direction, k=3)
    assert result["promoted"][0][0] == "bird"
    assert result["promoted"][0][1] >= result["promoted"][1][1] >= result["promoted"][2][1]
    assert result["suppressed"][0][1] <= result["suppressed"][1][1]


def test_describe_snmf_on_a_store(tmp_path):
    model = tiny_model("gpt2")
    texts = ["the cat sat on the mat and the dog ran", "a big blue bird flew over the tree"] * 20
    store = interp.harvest(model, texts, hooks=["blocks.0.mlp.hook_post"], out=tmp_path / "s", progress=False)
    result = SNMF(rank=4, sparsity=0.1, max_iter=30).fit(store)
    report = describe_snmf(model, result, store, layer=0, k=3)
    assert len(report) == 4 and report[0]["neurons"] == 13
    top = report[0]["examples"][0]
    assert top["score"] == pytest.approx(float(result.coefficients[:, 0].max()))
    assert top["text"].endswith("]]") and len(report[0]["promoted"]) == 3
    with pytest.raises(ValueError, match="scores have 3 rows but the store has 400"):
        top_examples(store, torch.zeros(3), k=1)
