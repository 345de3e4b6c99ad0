"""The new dictionary families and transcoders go through the same downstream tools as the
TopK SAEs: dashboards (codes streamed from a store equal the brute-force encode), steering
along a decoder row (at a transcoder's output hook) and clamping (the one-row edit; refused
for a transcoder, whose codes and decoder live at two hooks)."""
from __future__ import annotations

import pytest
import torch

import interp
import saes
from interp.dashboards import build_dashboard
from interp.errors import InterpError
from interp.interventions.steering import Clamp, Steering
from interp.model.tiny import tiny_model

HOOK, OUT = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"
WORDS = ["the", "cat", "sat", "on", "the", "mat", "and", "a", "dog", "ran", "under", "the", "big", "tree"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_model("gpt2")
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    store = interp.harvest(model, texts, hooks=[HOOK], out=tmp_path_factory.mktemp("fam") / "store",
                           context_length=16, progress=False)
    return model, store


def _families(d: int) -> dict[str, saes.SAE]:
    torch.manual_seed(0)
    made = {"l1": saes.ReLUSAE(d, 48, l1_coefficient=1.0), "jumprelu": saes.JumpReLUSAE(d, 48, l0_coefficient=0.1),
            "gated": saes.GatedSAE(d, 48, l1_coefficient=1.0), "transcoder": saes.TopKSAE(d, 48, k=4, d_out=d)}
    for sae in made.values():
        with torch.no_grad():  # non-zero biases, so every family fires on some tokens
            for name, p in sae.named_parameters():
                if name in ("b_enc", "b_gate", "b_mag"):
                    p.fill_(0.05)
        sae.metadata.update(hook_name=HOOK, model_name="tiny")
    made["transcoder"].metadata["hook_name_out"] = OUT
    return made


@pytest.mark.parametrize("family", ["l1", "jumprelu", "gated", "transcoder"])
def test_dashboards_and_steering_take_every_family(tiny, family):
    model, store = tiny
    sae = _families(store.d)[family]
    codes = sae.encode(store[:]).detach()
    live = [int(i) for i in (codes != 0).sum(0).argsort(descending=True)[:2]]
    assert (codes[:, live] != 0).any(0).all(), "the chosen latents never fire"
    d = build_dashboard(model, sae, store, live, n_examples=3, n_quantile_examples=2, progress=False)
    for card, latent in zip(d.cards, live):
        assert card.latent == latent and card.n_fire == int((codes[:, latent] != 0).sum())
        assert card.max_value == pytest.approx(float(codes[:, latent].max()), rel=1e-5)
    steer = Steering.from_sae(sae, live[0], scale=3.0)
    assert steer.hook == (OUT if family == "transcoder" else HOOK)  # where the decoder rows live
    row = sae.W_dec[live[0]].detach()
    assert torch.allclose(steer.vector, row / row.norm())
    if family == "transcoder":
        with pytest.raises(InterpError, match="a transcoder cannot be clamped at one hook"):
            Clamp(sae, live[0], 1.0)
        return
    x = store[:8].unsqueeze(0)
    z = sae.encode(x[0]).detach()
    edit = Clamp(sae, live[0], 5.0).apply(x, None)[0] - x[0]  # only the latent's own contribution changes
    assert torch.allclose(edit, (5.0 - z[:, live[0]])[:, None] * row[None], atol=1e-5)
