"""Matching-pursuit SAE: residual monotonicity, adaptive inference, exact Gram rewrite."""
from __future__ import annotations

import pytest
import torch

import saes
from saes import metrics, synthetic

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    """An MP-SAE and a TopK SAE of the same width and k, trained on the same stream."""
    data = synthetic.superposition(n_features=48, d=16, n_samples=8192, seed=0, mean_active=5)
    mp, topk = saes.MPSAE(16, 48, k=4), saes.TopKSAE(16, 48, k=4)
    saes.train([mp, topk], data.x, saes.TrainConfig(batch_size=256, total_tokens=51_200, lr=3e-3), progress=False)
    return data, mp, topk


def test_residual_norm_never_increases(trained):
    data, mp, _ = trained
    x = data.x[:1024]
    with torch.no_grad():
        for sae in (mp, saes.MPSAE(16, 48, k=4, signed=True), saes.MPSAE(16, 48, k=4, reselect=False)):
            r = sae.pursuit(x, k=24, record_norms=True)
            steps = r.norms[:, 1:] - r.norms[:, :-1]
            assert steps.max() <= 1e-5, type(sae).__name__
            # The exact identity behind it: ||r_t||^2 = ||r_{t-1}||^2 - c_t^2 for unit atoms.
            drop = r.norms[:, :-1].pow(2) - r.norms[:, 1:].pow(2)
            torch.testing.assert_close(drop, r.values.pow(2), rtol=1e-3, atol=1e-4)
            # ...and decoding the codes gives x minus the final residual.
            torch.testing.assert_close(sae.decode_sparse(r.values, r.indices), x - r.residual, rtol=1e-4, atol=1e-4)


def test_more_steps_than_training_lower_mse_unlike_topk_with_larger_k(trained):
    data, mp, topk = trained
    x = data.x[-2048:]
    with torch.no_grad():
        mp_fvu = {k: metrics.evaluate(mp, x, k=k)["fvu"] for k in (4, 8, 16)}
        topk_fvu = {k: metrics.evaluate(topk, x, k=k)["fvu"] for k in (4, 8, 16)}
    print("FVU by inference k, trained at k=4:  MP", {k: round(v, 4) for k, v in mp_fvu.items()},
          " TopK", {k: round(v, 4) for k, v in topk_fvu.items()})
    assert mp_fvu[8] < mp_fvu[4] and mp_fvu[16] < mp_fvu[8]
    assert mp_fvu[16] < 0.5 * mp_fvu[4]
    # A TopK SAE run with a larger k gains far less (its extra latents were never trained
    # to add up): MP's relative improvement is much larger.
    assert mp_fvu[16] / mp_fvu[4] < 0.5 * (topk_fvu[16] / topk_fvu[4])


def test_threshold_stops_each_token_once_its_residual_is_small(trained):
    data, mp, _ = trained
    x = data.x[:512]
    with torch.no_grad():
        loose = mp.pursuit(x, threshold=1.0, record_norms=True)
        tight = mp.pursuit(x, threshold=0.3, record_norms=True)
        for res, th in ((loose, 1.0), (tight, 0.3)):
            final = res.residual.norm(dim=-1)
            steps_used = (res.values != 0).sum(-1)
            # Either the residual fell under the threshold, or the step cap (d_in) was hit.
            assert bool(((final < th) | (steps_used >= res.values.shape[1] - 1)).all())
            # No step was taken after a token's residual was already under the threshold.
            before = res.norms[:, :-1]
            assert bool((res.values[before < th] == 0).all())
        assert metrics.l0((loose.values, loose.indices)) < metrics.l0((tight.values, tight.indices))


def test_gram_update_is_an_exact_rewrite():
    torch.manual_seed(0)
    x = torch.randn(128, 16)
    direct = saes.MPSAE(16, 48, k=8, gram=False)
    gram = saes.MPSAE(16, 48, k=8, gram=True)
    gram.load_state_dict(direct.state_dict())
    a, b = direct.pursuit(x), gram.pursuit(x)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)
    # Same gradients too: the argmax is a constant in both.
    var = saes.architectures.base.batch_variance(x)
    for sae in (direct, gram):
        sae.zero_grad()
        sae.training_forward(x, var).losses["mse"].backward()
    torch.testing.assert_close(direct.W_dec.grad, gram.W_dec.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(direct.b_dec.grad, gram.b_dec.grad, rtol=1e-4, atol=1e-5)


def test_options_no_reselect_and_untied():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    once = saes.MPSAE(16, 48, k=10, reselect=False).pursuit(x)
    assert all(len(set(row.tolist())) == 10 for row in once.indices)
    untied = saes.MPSAE(16, 48, k=4, tied=False)
    assert "W_enc" in dict(untied.named_parameters())
    assert "W_enc" not in dict(saes.MPSAE(16, 48, k=4).named_parameters())  # tied: W_enc is W_dec.T
    tied = saes.MPSAE(16, 48, k=4)
    assert torch.equal(tied.W_enc, tied.W_dec.T)


def test_pursuit_under_bf16_autocast_gives_the_float32_codes(monkeypatch) -> None:
    """The pursuit runs in float32 whatever autocast says (under CPU bf16 autocast the torch
    path once failed with an index_select dtype error: bf16 scores, a float32 Gram matrix)."""
    monkeypatch.setenv("SAES_KERNELS", "torch")
    torch.manual_seed(0)
    sae = saes.MPSAE(32, 128, k=4)
    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, i = sae.encode_sparse(x)
        out = sae.training_forward(x, x.var(0).sum())
    v32, i32 = sae.encode_sparse(x)
    assert v.dtype == torch.float32 and torch.equal(i, i32) and torch.equal(v, v32)
    assert torch.isfinite(sum(out.losses.values()))
