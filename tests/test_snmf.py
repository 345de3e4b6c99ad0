"""SNMF: the update's invariants, its monotone coefficient step, and recovery of planted factors."""
from __future__ import annotations

import math

import pytest
import torch

from saes.synthetic import mlp_factors
from saes.snmf import SNMF, SNMFResult, hierarchical, reconstruction_error, semi_nmf_coefficient_step


def planted(seed=0, **shape):
    """Token-major activations and the true features [rank, d] (see synthetic.mlp_factors)."""
    data = mlp_factors(seed=seed, **shape)
    return data.x, data.directions


def test_invariants_support_and_nonnegativity():
    acts, _ = planted()
    result = SNMF(rank=6, sparsity=0.125, max_iter=30, seed=1).fit(acts)
    assert result.features.shape == (6, 64) and result.coefficients.shape == (600, 6)
    assert (result.coefficients >= 0).all()
    assert ((result.features != 0).sum(1) == math.ceil(0.125 * 64)).all()
    assert (result.features < 0).any() and (result.features > 0).any()  # mixed sign
    # The best factors are returned, not the last ones.
    assert result.loss_history[result.best_iteration] == min(result.loss_history)


def test_coefficient_update_is_monotone_and_keeps_nonnegativity():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 300, generator=g)
    Z = torch.randn(40, 8, generator=g)
    Yt = torch.rand(300, 8, generator=g)
    losses = [reconstruction_error(A, Z, Yt)]
    for _ in range(50):
        Yt = semi_nmf_coefficient_step(A, Z, Yt, 1e-9)
        assert (Yt >= 0).all()
        losses.append(reconstruction_error(A, Z, Yt))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]


def test_without_sparsity_the_loss_trace_does_not_increase():
    acts, _ = planted(seed=3)
    result = SNMF(rank=6, max_iter=40, patience=100, seed=0, sparsify=False, dtype="float64").fit(acts)
    h = result.loss_history
    assert all(b <= a * (1 + 1e-9) for a, b in zip(h, h[1:]))


@pytest.mark.parametrize("init,seed", [("random", 1), ("random", 2), ("kmeans", 3)])
def test_recovers_planted_sparse_features(init, seed):
    acts, true = planted(seed=seed)
    result = SNMF(rank=6, sparsity=0.125, max_iter=300, patience=30, seed=0, init=init, n_init=4).fit(acts)
    cos = torch.nn.functional.normalize(true, dim=1) @ torch.nn.functional.normalize(result.features, dim=1).T
    # Each planted feature is matched by some recovered feature (sign included: Y ≥ 0 fixes it).
    assert cos.max(1).values.min() > 0.9, cos.max(1).values
    rel = result.loss_history[result.best_iteration] / float(acts.pow(2).sum())
    assert rel < 0.02


def test_svd_init_is_deterministic_and_fits():
    acts, _ = planted(seed=3)
    a = SNMF(rank=6, sparsity=0.125, max_iter=100, init="svd").fit(acts)
    b = SNMF(rank=6, sparsity=0.125, max_iter=100, init="svd", seed=9).fit(acts)
    assert torch.equal(a.features, b.features)
    assert a.loss_history[a.best_iteration] / float(acts.pow(2).sum()) < 0.05


def test_hierarchical_mixing_is_nonnegative_and_reconstructs():
    acts, _ = planted(rank=8, seed=4)
    fine = SNMF(rank=8, sparsity=0.25, max_iter=100, seed=0).fit(acts)
    coarse, mixing = hierarchical(fine.features, rank=3, sparsity=0.5, max_iter=100, seed=0)
    assert mixing.shape == (8, 3) and (mixing >= 0).all()
    assert coarse.features.shape == (3, 64)


def test_round_trip_and_bad_input(tmp_path):
    acts, _ = planted(n_tokens=100)
    result = SNMF(rank=4, sparsity=0.1, max_iter=5).fit(acts)
    result.save(tmp_path)
    back = SNMFResult.load(tmp_path)
    assert torch.equal(back.features, result.features) and torch.equal(back.coefficients, result.coefficients)
    assert back.loss_history == result.loss_history
    with pytest.raises(ValueError, match="max_tokens=50"):
        SNMF(rank=4, max_tokens=50).fit(acts)
    bad = acts.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf .*\[7\]"):
        SNMF(rank=4).fit(bad)
    with pytest.raises(ValueError, match="empty"):
        SNMF(rank=4).fit(torch.zeros(0, 64))


def test_encode_gives_held_out_tokens_the_best_non_negative_coefficients():
    acts, _ = planted(n_tokens=900, seed=4)
    fit_acts, held_out = acts[:600], acts[600:]
    result = SNMF(rank=6, sparsity=0.125, max_iter=200, patience=30, seed=0, n_init=2).fit(fit_acts)
    F = result.features

    def error(x, codes):
        return float((x - result.decode(codes)).pow(2).sum())

    # On the fitted tokens, encode does at least as well as the fit's own coefficients.
    assert error(fit_acts, result.encode(fit_acts)) <= 1.01 * error(fit_acts, result.coefficients)
    # Held-out tokens of the same kind are reconstructed well, with non-negative codes.
    codes = result.encode(held_out)
    assert codes.shape == (300, 6) and (codes >= 0).all()
    assert error(held_out, codes) < 0.2 * float((held_out - held_out.mean(0)).pow(2).sum())
    # Tokens the features do not fit (mixed-sign noise): the least-squares solution has many
    # negative coefficients, and clamping them is not the best non-negative fit. encode
    # reaches what projected gradient run to convergence reaches.
    noise = torch.randn(300, 64, generator=torch.Generator().manual_seed(1))
    best = torch.zeros(300, 6)
    step = 1 / float(torch.linalg.eigvalsh(F @ F.T).max())
    for _ in range(5000):
        best = (best - step * (best @ F @ F.T - noise @ F.T)).clamp_min(0)
    clamped = torch.linalg.lstsq(F.T, noise.T).solution.T.clamp_min(0)
    excess_clamped = error(noise, clamped) - error(noise, best)
    assert excess_clamped > 0
    assert error(noise, result.encode(noise)) - error(noise, best) <= 0.01 * excess_clamped
    with pytest.raises(ValueError, match=r"\[n_tokens, 64\]"):
        result.encode(held_out[:, :10])


def test_snmf_as_a_dictionary_evaluates_in_the_model_like_an_sae(tiny_gpt2_dir):
    import interp
    from interp.evaluation.splice import evaluate_sae

    model = interp.load(str(tiny_gpt2_dir))
    hook = "blocks.0.mlp.hook_post"
    tokens = torch.randint(3, model.tokenizer.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens, names=[hook], return_logits=False)
    acts = cache[hook].reshape(-1, cache[hook].shape[-1]).float()
    result = SNMF(rank=8, sparsity=0.5, max_iter=60, seed=0).fit(acts)
    d = result.as_dictionary(n_iter=50)
    values, indices = d.encode_sparse(acts)
    # The SAE interface gives exactly the SNMF's own reconstruction.
    torch.testing.assert_close(d.decode_sparse(values, indices), result.decode(result.encode(acts, n_iter=50)))
    assert (values >= 0).all() and d.d_sae == 8 and d.d_in == acts.shape[1]
    good = evaluate_sae(model, d, hook, tokens)
    assert 0 < good.fvu < 1 and good.l0 <= 8
    # A dictionary of random features reconstructs worse, in activation space and in the output.
    bad = SNMFResult(torch.randn_like(result.features), result.coefficients, [], 0).as_dictionary(n_iter=50)
    worse = evaluate_sae(model, bad, hook, tokens)
    assert worse.fvu > good.fvu and worse.kl_spliced > good.kl_spliced
