"""Faithfulness of the SAE evaluation suite's foundation and core families: each metric
against a direct computation on small data, and planted cases where the answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import saes
from interp.errors import InterpError
from interp.evaluation.core import DocBootstrap, evaluate_core, reconstruction_estimates
from interp.evaluation.dataset import LabelledActivations, bootstrap_docs
from interp.model.tiny import tiny_model

HOOK = "blocks.0.hook_resid_post"


def exact_sae(d: int) -> saes.TopKSAE:
    """A TopK SAE that reconstructs every input exactly: latents +e_i and -e_i, k = d."""
    sae = saes.TopKSAE(d, 2 * d, k=d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def tiny() -> tuple:
    model = tiny_model("gpt2")
    words = ["the", "cat", "sat", "on", "the", "mat", ".", "a", "dog", "ran", "under", "the", "big", "tree", ".", "the", "bird", "flew", "over", "the", "sky"]
    g = torch.Generator().manual_seed(0)
    vocab = model.tokenizer.convert_tokens_to_ids(words)
    lengths = [9, 6, 12, 4, 10, 7]
    windows = torch.full((len(lengths), 12), model.pad_token_id, dtype=torch.int64)
    mask = torch.zeros_like(windows)
    for r, n in enumerate(lengths):
        windows[r, 0] = model.bos_token_id
        windows[r, 1:n] = torch.tensor(vocab)[torch.randint(len(vocab), (n - 1,), generator=g)]
        mask[r, :n] = 1
    data = LabelledActivations.from_tokens(model, HOOK, windows, mask)
    return model, data


# ------------------------------------------------------------------ dataset
def test_from_tokens_rows_match_the_model_and_skip_bos_and_padding(tiny):
    model, data = tiny
    assert len(data) == sum([8, 5, 11, 3, 9, 6])  # real tokens minus BOS
    assert bool((data.position > 0).all())
    _, cache = model.run_with_cache(data.windows, names=[HOOK], attention_mask=data.attention_mask)
    ref = cache[HOOK][data.doc, data.position]
    assert torch.allclose(data.acts, ref, atol=1e-5)


def test_split_is_by_document_and_keeps_windows_aligned(tiny):
    _, data = tiny
    train, test = data.split(test_fraction=0.34, seed=3)
    assert len(train) + len(test) == len(data)
    assert train.n_docs + test.n_docs == data.n_docs and test.n_docs == 2
    for part in (train, test):
        assert torch.equal(part.windows[part.doc, part.position], part.tokens)
    # every document on exactly one side, the same sides on a second call with the same seed
    sides = [{tuple(w) for w in part.windows.tolist()} for part in (train, test)]
    assert not sides[0] & sides[1] and sides[0] | sides[1] == {tuple(w) for w in data.windows.tolist()}
    again, _ = data.split(test_fraction=0.34, seed=3)
    assert torch.equal(again.acts, train.acts)


def test_from_tensors_labels_classes_and_bad_input():
    acts = torch.randn(6, 3)
    s = LabelledActivations.from_tensors(acts, {"a": [1, 0, 1, 0, 1, 0]}, classes={"c": [0, 1, 2, -1, 0, 1]},
                                         class_names={"c": ["x", "y", "z"]}, doc=[0, 0, 1, 1, 2, 2])
    assert s.labels["c:y"].tolist() == [False, True, False, False, False, True]
    assert s.scopes["a"] == "given" and s.n_docs == 3
    with pytest.raises(InterpError, match="one value per row"):
        LabelledActivations.from_tensors(acts, {"a": [1, 0]})
    with pytest.raises(InterpError, match=r"\[n, d\]"):
        LabelledActivations.from_tensors(torch.randn(2, 3, 4))
    with pytest.raises(InterpError, match="no token windows"):
        s.token_source()


def test_bootstrap_over_documents_moves_documents_together():
    # two documents of very different means: resampling documents gives a wide interval,
    # treating 200 rows as independent would give a narrow one
    values = torch.cat([torch.zeros(100), torch.ones(100)])
    doc = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    est, lo, hi = bootstrap_docs(values, doc, n_boot=500)
    assert est == pytest.approx(0.5) and lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    e = DocBootstrap(doc, n_boot=500).estimate(lambda s, n: s / n, s=values, n=torch.ones(200))
    assert (e.value, e.lo, e.hi) == pytest.approx((est, lo, hi))


# ------------------------------------------------------------------ core
def test_fvu_and_ev_match_numpy_and_are_centred():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 8
    mean = torch.full((d,), 3.0)
    noise = torch.randn(n, d, generator=g)
    x = mean + noise
    x_hat = mean + 0.53 * noise + 0.25 * torch.randn(n, d, generator=g)
    doc = torch.arange(n) // 10
    out = reconstruction_estimates(x, x_hat, DocBootstrap(doc, n_boot=200))
    xn, hn = x.double().numpy(), x_hat.double().numpy()
    fvu_ref = ((xn - hn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    unc_ref = 1 - ((xn - hn) ** 2).sum() / (xn ** 2).sum()
    assert out["fvu"].value == pytest.approx(fvu_ref, rel=1e-9)
    assert out["explained_variance"].value == pytest.approx(1 - fvu_ref, rel=1e-9)
    assert out["explained_variance_uncentred"].value == pytest.approx(unc_ref, rel=1e-9)
    # the large mean: uncentred EV looks excellent, centred EV tells the truth
    assert unc_ref > 0.97 and 0.7 < 1 - fvu_ref < 0.85
    assert out["fvu"].lo < fvu_ref < out["fvu"].hi
    cos_ref = ((xn * hn).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(hn, axis=1)).mean()
    assert out["cossim"].value == pytest.approx(cos_ref, rel=1e-9)
    assert out["mse"].value == pytest.approx(((xn - hn) ** 2).mean(), rel=1e-9)
    rrb = (np.linalg.norm(hn, axis=1) ** 2).mean() / (xn * hn).sum(1).mean()
    assert out["relative_reconstruction_bias"].value == pytest.approx(rrb, rel=1e-9)


def test_core_on_an_exact_and_a_shrunk_reconstruction():
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(300, 6, generator=g)
    data = LabelledActivations.from_tensors(acts, doc=torch.arange(300) // 15)
    exact = evaluate_core(exact_sae(6), data, n_boot=100)
    assert exact.fvu.value == pytest.approx(0.0, abs=1e-10)
    assert exact.l2_ratio.value == pytest.approx(1.0, abs=1e-6)
    assert exact.l0.value == pytest.approx(6.0)
    shrunk_sae = exact_sae(6)
    with torch.no_grad():
        shrunk_sae.W_dec.mul_(0.5)
    shrunk = evaluate_core(shrunk_sae, data, n_boot=100)
    assert shrunk.relative_reconstruction_bias.value == pytest.approx(0.5, rel=1e-6)
    assert shrunk.l2_ratio.value == pytest.approx(0.5, rel=1e-6)


def test_density_dead_dense_and_l0_distribution():
    # a TopK SAE whose latents fire on known shares of rows
    n, d = 200, 4
    acts = torch.zeros(n, d)
    acts[:, 0] = 1.0                 # latent 0 fires on every row (dense)
    acts[: n // 20, 1] = 1.0         # latent 1 on 5%
    sae = exact_sae(d)
    res = evaluate_core(sae, LabelledActivations.from_tensors(acts), n_boot=50)
    dens = res.feature_density
    assert dens[0] == pytest.approx(1.0) and dens[1] == pytest.approx(0.05)
    assert set(res.dead_latents.tolist()) == {2, 3, 4, 5, 6, 7}
    assert res.dense_latents.tolist() == [0]
    assert res.l0.value == pytest.approx(1.05)
    assert res.l0_quantiles["q50"] == 1.0 and res.l0_quantiles["q05"] == 1.0
    assert sum(res.density_histogram["counts"]) == 2 and res.density_histogram["dead"] == 6


def test_splice_matches_evaluate_sae_and_exact_sae_recovers_everything(tiny):
    from interp.evaluation.splice import evaluate_sae

    model, data = tiny
    sae = saes.TopKSAE(data.d, 64, k=4)
    res = evaluate_core(sae, data, model, n_boot=100)
    ref = evaluate_sae(model, sae, HOOK, data.token_source(), batch_size=4)
    s = res.splice
    assert s["ce_clean"].value == pytest.approx(ref.ce_clean, rel=1e-5)
    assert s["ce_spliced"].value == pytest.approx(ref.ce_spliced, rel=1e-5)
    assert s["ce_loss_recovered"].value == pytest.approx(ref.ce_loss_recovered, rel=1e-4)
    assert s["kl_spliced"].value == pytest.approx(ref.kl_spliced, rel=1e-4)
    assert res.fvu.value == pytest.approx(ref.fvu, rel=1e-4)
    assert res.l0.value == pytest.approx(ref.l0)
    exact = evaluate_core(exact_sae(data.d), data, model, n_boot=100).splice
    assert exact["ce_loss_recovered"].value == pytest.approx(1.0, abs=1e-4)
    assert exact["kl_spliced"].value == pytest.approx(0.0, abs=1e-6)
    assert exact["kl_div_score"].value == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------ recovery
def planted_jumprelu(directions: torch.Tensor, threshold: float, extra: int = 0) -> saes.JumpReLUSAE:
    """Encoder and decoder are the planted directions (plus ``extra`` random latents)."""
    m, d = directions.shape
    g = torch.Generator().manual_seed(5)
    rows = torch.cat([directions, torch.nn.functional.normalize(torch.randn(extra, d, generator=g), dim=-1)])
    sae = saes.JumpReLUSAE(d, m + extra)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(threshold)
    return sae


def test_recovery_of_planted_directions_and_of_a_random_dictionary():
    from interp.evaluation.recovery import recovery_of
    from saes import synthetic

    data = synthetic.superposition(n_features=24, d=64, n_samples=3000, seed=0, mean_active=3.0)
    # orthonormal planted directions: the planted dictionary reads every code exactly
    q, _ = torch.linalg.qr(torch.randn(64, 24, generator=torch.Generator().manual_seed(2)))
    data.directions, data.x = q.T.contiguous(), data.codes @ q.T
    good = recovery_of(planted_jumprelu(data.directions, 0.1, extra=8), data)
    assert good.mcc == pytest.approx(1.0, abs=1e-6) and good.mmcs == pytest.approx(1.0, abs=1e-6)
    assert good.matched_latent == list(range(24))
    assert good.f1 == pytest.approx(1.0) and good.f1_micro == pytest.approx(1.0)
    assert good.mcc_codes == pytest.approx(1.0, abs=1e-6)
    assert good.shrinkage == pytest.approx(1.0, abs=1e-5)
    # the same dictionary with every code halved on the way out: shrinkage 0.5
    halved = planted_jumprelu(data.directions, 0.1)
    with torch.no_grad():
        halved.W_dec.mul_(0.5)
    shrunk = recovery_of(halved, data)
    assert shrunk.shrinkage == pytest.approx(0.5, abs=1e-5) and shrunk.norm_ratio == pytest.approx(0.5, abs=1e-5)
    g = torch.Generator().manual_seed(9)
    random = planted_jumprelu(torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=-1), 0.35)
    bad = recovery_of(random, data)
    assert bad.mcc < 0.4 and bad.f1 < 0.5 and bad.mcc_codes < 0.5


def test_recovery_counts_unmatched_features_as_zero():
    from interp.evaluation.recovery import recovery_of
    from saes import synthetic

    data = synthetic.superposition(n_features=24, d=64, n_samples=500, seed=1, mean_active=3.0)
    half = planted_jumprelu(data.directions[:12], 0.35)  # only 12 latents for 24 features
    r = recovery_of(half, data)
    assert r.mcc == pytest.approx(0.5, abs=1e-6)
    assert r.matched_latent[12:] == [-1] * 12 and r.per_feature_f1[12:] == [0.0] * 12


# ------------------------------------------------------------------ label interpretability
def test_auroc_matrix_matches_saes_auroc_with_ties():
    from interp.evaluation.label_interp import auroc_matrix
    from saes.metrics import auroc

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200, 6), generator=g).float() * (torch.rand(200, 6, generator=g) > 0.5)
    labels = torch.rand(200, 3, generator=g) > 0.6
    got = auroc_matrix(scores, labels)
    for c in range(3):
        assert torch.allclose(got[c], auroc(scores, labels[:, c]), atol=1e-12)


def test_a_latent_equal_to_a_planted_label_is_explained_and_random_ones_are_not():
    from interp.evaluation.label_interp import label_interpretability

    g = torch.Generator().manual_seed(0)
    n, d = 600, 8
    concept = torch.rand(n, generator=g) < 0.2
    acts = torch.randn(n, d, generator=g) * 0.1
    acts[:, 0] = concept.float() * (1 + torch.rand(n, generator=g))  # dimension 0 carries the concept
    data = LabelledActivations.from_tensors(acts, {"concept": concept, "noise": torch.rand(n, generator=g) < 0.3})
    res = label_interpretability(exact_sae(d), data, threshold=0.9)
    # latent 0 (+e_0) equals the concept; +/-e_i of the noise dimensions explain nothing
    assert res.per_label["concept"]["best_latent"] == 0 and res.per_label["concept"]["auroc"] == pytest.approx(1.0)
    top = next(p for p in res.per_latent if p["latent"] == 0)
    assert top["explained"] and top["best"][0]["label"] == "concept" and top["best"][0]["precision"] == 1.0
    assert res.n_explained == 1 and res.n_live == 2 * d - 1  # -e_0 never fires (dimension 0 >= 0)
    assert res.explained_fraction == pytest.approx(1 / (2 * d - 1))
    assert res.label_coverage == pytest.approx(0.5)


def test_the_random_control_is_chance_level_and_a_planted_dictionary_beats_it():
    from interp.evaluation.label_interp import label_interpretability, random_control

    g = torch.Generator().manual_seed(0)
    n, d, c = 2000, 16, 8
    on = torch.rand(n, c, generator=g) < 0.3  # eight concepts, about 2.4 per row
    acts = torch.randn(n, d, generator=g) * 0.05
    acts[:, :c] += on.float() * (1 + torch.rand(n, c, generator=g))
    data = LabelledActivations.from_tensors(acts, {f"c{i}": on[:, i] for i in range(c)})
    sae = saes.TopKSAE(d, 2 * c, k=3)  # the eight concept directions plus eight random ones
    with torch.no_grad():
        w = torch.cat([torch.eye(d)[:c], torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)])
        sae.W_dec.copy_(w), sae.W_enc.copy_(w.T), sae.b_enc.zero_(), sae.b_dec.fill_(0.01)
    res = label_interpretability(sae, data, random_control_seed=0)
    assert res.explained_fraction >= 0.3
    chance = [label_interpretability(sae, data, random_control_seed=s).random_explained_fraction for s in range(3)]
    assert max(chance) <= 0.2 and chance[0] == res.random_explained_fraction  # same seed, same control
    control = random_control(sae, k=3, seed=0)
    assert (control.d_in, control.d_sae, control.k) == (d, 2 * c, 3) and torch.equal(control.b_dec, sae.b_dec)
    assert not torch.allclose(control.W_dec, sae.W_dec)
    assert label_interpretability(sae, data).random_explained_fraction is None  # measured only when asked


# ------------------------------------------------------------------ sparse probing
def test_fit_logistic_reaches_sklearns_l2_optimum():
    from interp.evaluation.sparse_probing import fit_logistic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g).double()
    y = ((x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0]).double() + 0.3 * torch.randn(300, generator=g)) > 0).double()
    wide = torch.cat([x, 0.1 * torch.randn(300, 145, generator=g).double()], 1)  # > 128 features: L-BFGS
    for features, C, tol in ((x, 1.0, 1e-7), (x, 0.05, 1e-7), (wide, 1.0, 1e-4)):
        w, b = fit_logistic(features, y, C=C)
        resid = torch.sigmoid(features @ w + b) - y
        # stationarity of C * sum log-loss + ||w||^2 / 2 (bias unpenalised)
        assert float((C * features.T @ resid + w).abs().max()) < tol
        assert abs(float(resid.sum())) < tol


def test_top_k_mean_diff_is_the_largest_absolute_mean_difference():
    from interp.evaluation.sparse_probing import top_k_mean_diff

    x = torch.tensor([[1.0, 0.0, 5.0, 2.0], [3.0, 0.0, 5.0, 2.0], [0.0, 4.0, 5.0, 0.0], [0.0, 2.0, 5.0, 0.0]])
    y = torch.tensor([1, 1, 0, 0])
    # mean differences: 2, -3, 0, 2 -> |.| ranks 1, then 0 and 3
    assert top_k_mean_diff(x, y, 1).tolist() == [1]
    assert set(top_k_mean_diff(x, y, 3).tolist()) == {0, 1, 3}


def planted_probe_set(n_docs: int = 120, per_doc: int = 10, d: int = 128) -> LabelledActivations:
    g = torch.Generator().manual_seed(0)
    n = n_docs * per_doc
    cls = torch.randint(3, (n,), generator=g)
    acts = torch.randn(n, d, generator=g)
    acts[:, 0] = torch.where(cls == 0, 2.0 + 0.3 * torch.randn(n, generator=g), 0.3 * torch.randn(n, generator=g))
    return LabelledActivations.from_tensors(acts, classes={"c": cls}, class_names={"c": ["on", "off1", "off2"]},
                                            doc=torch.arange(n) // per_doc)


def test_sparse_probing_finds_the_planted_latent_and_a_random_dictionary_does_not():
    from interp.evaluation.sparse_probing import sparse_probing

    data = planted_probe_set()
    res = sparse_probing(exact_sae(data.d), data, k_values=(1, 2, 5), n_boot=200, dense=False)
    on = {k: v["on"] for k, v in res.per_class["c"].items()}
    assert on["sae_top_1_test_accuracy"] > 0.97 and on["llm_top_1_test_accuracy"] > 0.97
    assert res.selected_latents["c"]["on"]["1"] == [0]  # +e_0: the planted latent
    lo, hi = res.intervals["sae_top_1_test_accuracy"]
    assert lo <= res.sae["sae_top_1_test_accuracy"] <= hi
    g = torch.Generator().manual_seed(3)
    random = planted_jumprelu(torch.nn.functional.normalize(torch.randn(256, data.d, generator=g), dim=-1), 0.0)
    bad = sparse_probing(random, data, k_values=(1,), n_boot=50, dense=False)
    assert bad.per_class["c"]["sae_top_1_test_accuracy"]["on"] < 0.75
    # the SAEBench layout: metrics by category, details per dataset, flat floats
    out = res.to_saebench(exact_sae(data.d))
    assert out["eval_type_id"] == "sparse_probing" and out["sae_cfg_dict"]["architecture"] == "topk"
    assert set(out["eval_result_metrics"]) == {"llm", "sae"}
    assert "sae_top_1_test_accuracy" in out["eval_result_metrics"]["sae"]
    assert out["eval_result_details"][0]["dataset_name"] == "c"


# ------------------------------------------------------------------ the world set (the shipped model)
def test_world_set_rows_labels_and_splice_on_the_default_model():
    import interp
    from interp.world import World, labelled_batch
    from interp.world.labels import WORD_CLASSES
    from interp.world.lexicon import HIERARCHY_NODES, MEMBER_PARENT

    model = interp.load("world")
    data = LabelledActivations.from_world(model, HOOK, n_docs=24, seed=5)
    ref = labelled_batch(24, seed=5, world=World(), model=model, names=[HOOK])
    # the rows are the model's activations at every real non-BOS position of those documents
    assert len(data) == int(ref.mask.sum()) - 24
    assert torch.allclose(data.acts, ref.cache[HOOK][data.doc, data.position], atol=1e-5)
    # token labels are the generator's lexical labels; the causal topic agrees where it is known
    wc = ref.labels["word_class"][data.doc, data.position]
    for name in ("agent", "member", "entity", "punctuation"):
        assert torch.equal(data.labels[f"word_class:{name}"], wc == WORD_CLASSES.index(name))
    known = data.classes["topic"] >= 0
    assert int(known.sum()) > 50
    assert (data.classes["topic"][known] == data.classes["topic_generator"][known]).float().mean() > 0.98
    members = (data.classes["hierarchy_node"] >= 0).nonzero()[:, 0]
    for i in members.tolist():
        word = HIERARCHY_NODES[data.classes["hierarchy_node"][i]]
        if word in MEMBER_PARENT:
            assert HIERARCHY_NODES[data.classes["hierarchy_parent"][i]] == MEMBER_PARENT[word]
    # documents cut to a shorter window keep their first tokens and (causal model) their activations
    short = LabelledActivations.from_world(model, HOOK, n_docs=8, seed=5, context_length=16)
    assert short.windows.shape[1] <= 16 and short.meta["cut_docs"] == sum(len(d) > 16 for d in ref.docs[:8])
    assert torch.allclose(short.acts, ref.cache[HOOK][short.doc, short.position], atol=1e-5)
    # splicing an exact reconstruction in loses nothing
    res = evaluate_core(exact_sae(data.d), data, model, n_boot=50)
    assert res.splice["ce_loss_recovered"].value == pytest.approx(1.0, abs=1e-4)
    assert res.splice["kl_spliced"].value < 1e-6


def test_bad_input_is_named(tiny):
    model, data = tiny
    bare = LabelledActivations.from_tensors(data.acts)
    with pytest.raises(InterpError, match="no hook"):
        evaluate_core(exact_sae(data.d), bare, model, n_boot=10)
    with pytest.raises(InterpError, match="d_in=6"):
        evaluate_core(exact_sae(6), data, n_boot=10)
    with pytest.raises(InterpError, match="test_fraction"):
        data.split(test_fraction=1.5)
