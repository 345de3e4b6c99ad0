"""Faithfulness of the suite's absorption, SCR, TPP and RAVEL families: hand-built dictionaries
whose answer is known (a latent that absorbed its parent, a latent that is the spurious
concept, one latent group per attribute) against clean, random or mixed ones; then the suite
and `interp eval-saes` on the shipped world model."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

import saes
from interp.errors import InterpError
from interp.evaluation.absorption import AbsorptionConfig, absorption, token_absorption
from interp.evaluation.ravel import RavelConfig, RavelTask, ravel
from interp.evaluation.scr_tpp import ScrTppConfig, Texts, scr, tpp
from interp.world import default_model_path

needs_world = pytest.mark.skipif(not default_model_path().exists(), reason="the default world model is not built")
HOOK = "blocks.2.hook_resid_post"
SAEBENCH_FIELDS = {"eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                   "eval_result_details", "eval_result_unstructured", "sae_bench_commit_hash", "sae_lens_id",
                   "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"}


def relu_dictionary(W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: float = 0.0) -> saes.ReLUSAE:
    """A ReLU SAE with the given encoder ``[d, n]`` and decoder ``[n, d]`` (no decoder bias)."""
    sae = saes.ReLUSAE(W_dec.shape[1], W_dec.shape[0])
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.fill_(b_enc)
        sae.b_dec.zero_()
    return sae


# ----------------------------------------------------------------------------- absorption
def _hierarchy(n: int = 2400, d: int = 64, n_children: int = 30, seed: int = 0):
    """Tokens of a parent p alone (30%), p + one of its children (35%), or an unrelated direction."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(d)
    r = torch.rand(n, generator=g)
    child = torch.randint(n_children, (n,), generator=g)
    other = torch.randint(d - 1 - n_children, (n,), generator=g)
    x = torch.zeros(n, d)
    has_parent, is_child = r < 0.65, (r >= 0.3) & (r < 0.65)
    x[has_parent, 0] = 1.0
    x[is_child] += eye[1 + child[is_child]]
    x[~has_parent] = eye[1 + n_children + other[~has_parent]]
    x += 0.05 * torch.randn(n, d, generator=g)
    return x, has_parent[:, None], is_child[:, None]


def test_absorbed_parent_scores_high_and_a_clean_parent_zero():
    d, n_children = 64, 30
    x, parent, child = _hierarchy(d=d, n_children=n_children)
    eye = torch.eye(d)
    clean = relu_dictionary(eye, eye, b_enc=-0.3)
    # Absorbed: the parent latent's encoder subtracts every child, so it is silent on child tokens;
    # each child latent decodes p + c_j, carrying the parent direction there instead.
    W_enc, W_dec = eye.clone(), eye.clone()
    W_enc[:, 0] = eye[0] - eye[1:1 + n_children].sum(0)
    W_dec[1:1 + n_children] = (eye[0] + eye[1:1 + n_children]) / 2 ** 0.5
    absorbed = relu_dictionary(W_enc, W_dec, b_enc=-0.3)
    r_clean = absorption(clean, x, parent, ["parent"], children=child)
    r_abs = absorption(absorbed, x, parent, ["parent"], children=child)
    assert r_clean.concepts[0].num_probe_true_positives >= 100
    assert r_clean.concepts[0].split_feats == [0] and r_abs.concepts[0].split_feats == [0]
    m_clean, m_abs = r_clean.mean_metrics(), r_abs.mean_metrics()
    assert m_clean["mean_absorption_fraction_score"] < 0.02 and m_clean["mean_full_absorption_score"] == 0.0
    assert m_abs["mean_absorption_fraction_score"] > 0.9 and m_abs["mean_full_absorption_score"] > 0.7
    assert r_abs.concepts[0].main_silent_rate > 0.75 and r_clean.concepts[0].main_silent_rate < 0.05
    lo, hi = r_abs.intervals(n_boot=200)["mean_absorption_fraction_score"]
    assert lo <= m_abs["mean_absorption_fraction_score"] <= hi and hi - lo < 0.1
    # SAEBench's result layout
    detail = r_abs.details()[0]
    assert set(detail) == {"concept", "mean_absorption_fraction", "full_absorption_rate", "num_full_absorption",
                           "num_probe_true_positives", "num_split_features"}


def test_absorption_fraction_follows_saebenchs_formula_token_by_token():
    cfg = AbsorptionConfig()
    # latent 0 is the main latent, 1 and 2 point along the probe (cosine 1), 3 is orthogonal
    dec_proj = torch.tensor([1.0, 1.0, 1.0, 0.0])
    dec_cos = torch.tensor([1.0, 1.0, 1.0, 0.0])
    z = torch.tensor([[0.5, 0.5, 0.0, 3.0],    # main carries half, one absorber the rest: 0.5
                      [0.0, 1.0, 0.0, 0.0],    # main silent, absorber carries it all: 1, full
                      [1.0, 0.0, 0.0, 0.0],    # main carries it all: 0
                      [0.0, 0.2, 0.1, 0.0]])   # absorbers carry 0.3 of 1.0 < 0.4: no absorption
    x_proj = torch.tensor([1.0, 1.0, 1.0, 1.0])
    frac, full = token_absorption(z, x_proj, dec_proj, dec_cos, [0], cfg)
    assert frac.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert full.tolist() == [False, True, False, False]


# ------------------------------------------------------------------------------- SCR / TPP
AXES = 16


def _axis_and_random(d: int = AXES, seed: int = 0):
    """The axis dictionary (+e_i and -e_i: every planted direction is a latent) and a random one."""
    eye = torch.eye(d)
    axes = torch.cat([eye, -eye])
    rand = torch.randn(2 * d, d, generator=torch.Generator().manual_seed(seed))
    rand = rand / rand.norm(dim=1, keepdim=True)
    return relu_dictionary(axes.T, axes), relu_dictionary(rand.T, rand)


def test_scr_removes_a_spurious_latent_and_a_random_dictionary_does_not():
    g = torch.Generator().manual_seed(0)
    n = 1200
    target, spurious = torch.randint(2, (n,), generator=g), torch.randint(2, (n,), generator=g)
    x = 0.7 * torch.randn(n, AXES, generator=g)
    x[:, 0] += 2.0 * target - 1.0
    x[:, 1] += 2.0 * (2.0 * spurious - 1.0)      # the louder concept: the biased probe leans on it
    axis, rand = _axis_and_random()
    cfg = ScrTppConfig(n_values=(1, 2, 5), n_boot=200)
    good = scr(Texts.of(axis, x, torch.arange(n), {}), {"pair": (target, spurious)}, cfg)
    bad = scr(Texts.of(rand, x, torch.arange(n), {}), {"pair": (target, spurious)}, cfg)
    acc = good.accuracies["pair"]
    assert acc["dir1_acc_biased_probe_on_target"] < 0.75 < acc["oracle_acc_target"]
    assert good.metrics["scr_metric_threshold_2"] == good.metrics["scr_dir1_threshold_2"]   # dir1 chosen
    assert good.metrics["scr_metric_threshold_2"] > 0.85     # +e1 and -e1 are the spurious concept
    assert bad.metrics["scr_metric_threshold_2"] < 0.3
    lo, hi = good.intervals["scr_metric_threshold_2"]
    assert lo <= good.metrics["scr_metric_threshold_2"] <= hi
    assert set(good.details[0]) == {"dataset_name"} | set(good.metrics)


def test_tpp_hits_one_class_with_its_own_latent_and_not_with_random_ones():
    g = torch.Generator().manual_seed(1)
    n, classes = 1200, 4
    cls = torch.randint(classes, (n,), generator=g)
    x = 0.7 * torch.randn(n, AXES, generator=g)
    x[torch.arange(n), cls] += 1.5
    axis, rand = _axis_and_random()
    cfg = ScrTppConfig(n_values=(1, 2), n_boot=200)
    good = tpp(Texts.of(axis, x, torch.arange(n), {}), cls, list("abcd"), cfg)
    bad = tpp(Texts.of(rand, x, torch.arange(n), {}), cls, list("abcd"), cfg)
    assert good.metrics["tpp_threshold_1_intended_diff_only"] > 0.25
    assert good.metrics["tpp_threshold_1_unintended_diff_only"] < 0.05
    assert good.metrics["tpp_threshold_1_total_metric"] > 0.25
    assert bad.metrics["tpp_threshold_1_total_metric"] < 0.1
    assert set(good.per_class) == set("abcd")


def test_scr_tpp_refuse_data_they_cannot_score():
    axis, _ = _axis_and_random()
    x = torch.randn(40, AXES)
    texts = Texts.of(axis, x, torch.arange(40), {})
    only_one_cell = (torch.ones(40, dtype=torch.long), torch.ones(40, dtype=torch.long))
    with pytest.raises(InterpError, match="too few texts"):
        scr(texts, {"p": only_one_cell})
    with pytest.raises(InterpError, match="at least two classes"):
        tpp(texts, torch.zeros(40, dtype=torch.long), ["a", "b"])
    with pytest.raises(InterpError, match="n_values"):
        tpp(texts, torch.arange(40) % 2, ["a", "b"], ScrTppConfig(n_values=(0,)))


# ----------------------------------------------------------------------------------- RAVEL
def _attribute_world(n_entities: int = 60, n_attributes: int = 3, n_values: int = 6, seed: int = 0) -> RavelTask:
    """Entities whose activation is the sum of one direction per attribute value (plus a marker of
    the attribute asked); the read-out of attribute a picks the largest of a's value directions."""
    g = torch.Generator().manual_seed(seed)
    d = n_attributes * n_values + n_attributes
    values = torch.randint(n_values, (n_entities, n_attributes), generator=g)
    acts = torch.zeros(n_entities, n_attributes, d)
    for a in range(n_attributes):
        acts[:, a, n_attributes * n_values + a] = 1.0
        for b in range(n_attributes):
            acts[torch.arange(n_entities), a, b * n_values + values[:, b]] = 1.0
    truth = torch.arange(n_attributes) * n_values + values
    block = torch.arange(n_attributes * n_values) // n_values

    def downstream(entity: torch.Tensor, attribute: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h[:, : n_attributes * n_values] - 100.0 * (block[None] != attribute[:, None]).float()

    return RavelTask([f"attr{a}" for a in range(n_attributes)], acts, truth.clone(), truth, downstream)


def test_ravel_one_latent_group_per_attribute_is_disentangled_and_a_mixed_dictionary_is_not():
    task = _attribute_world()
    d = task.acts.shape[-1]
    planted = relu_dictionary(torch.eye(d), torch.eye(d))
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(3)))
    rows = torch.cat([Q, -Q])            # every latent mixes every attribute (and still reconstructs exactly)
    mixed = relu_dictionary(rows.T, rows)
    cfg = RavelConfig(num_pairs_per_attribute=128, n_boot=200)
    good, bad = ravel(planted, task, cfg), ravel(mixed, task, cfg)
    assert good.metrics["cause_score"] > 0.95 and good.metrics["isolation_score"] > 0.95
    assert bad.metrics["disentanglement_score"] < good.metrics["disentanglement_score"] - 0.08
    for name in task.attributes:      # the mask keeps the attribute's own value latents
        chosen = set(good.per_attribute[name]["latents"])
        a = task.attributes.index(name)
        assert chosen & set(range(6 * a, 6 * a + 6)) and not chosen & {x for b in range(3) if b != a
                                                                       for x in range(6 * b, 6 * b + 6)}
    lo, hi = bad.intervals["disentanglement_score"]
    assert lo <= bad.metrics["disentanglement_score"] <= hi
    with pytest.raises(InterpError, match="no attribute"):
        ravel(planted, task, cfg, attributes=["colour"])


# ------------------------------------------------------------------ the world model, the CLI
@needs_world
def test_world_intervention_swaps_the_answer_and_texts_carry_one_label_each():
    import interp
    from interp.evaluation.dataset import LabelledActivations
    from interp.evaluation.ravel import (
        Intervention,
        make_pairs,
        score_pairs,
        world_ravel_task,
    )
    from interp.evaluation.scr_tpp import world_scr_pairs, world_tpp_texts

    model = interp.load("world")
    task = world_ravel_task(model, HOOK, entities=60)
    assert task.known.float().mean() > 0.95
    d = task.acts.shape[-1]
    exact = relu_dictionary(torch.cat([torch.eye(d), -torch.eye(d)]).T, torch.cat([torch.eye(d), -torch.eye(d)]))
    inter = Intervention(exact, task, add_error=False)
    pairs = make_pairs(task, task.attributes.index("flag"), 40, torch.Generator().manual_seed(0))
    every = score_pairs(inter, pairs, torch.arange(2 * d))
    none = score_pairs(inter, pairs, torch.zeros(0, dtype=torch.long))
    # swapping the whole (exactly reconstructed) state gives the source's answer; swapping nothing the base's
    assert every[pairs.is_cause].float().mean() > 0.9 and every[~pairs.is_cause].float().mean() < 0.1
    assert none[pairs.is_cause].float().mean() < 0.1 and none[~pairs.is_cause].float().mean() > 0.9

    data = LabelledActivations.from_world(model, HOOK, n_docs=48, seed=3, kind="topical")
    group, _text_labels, pairs_scr = world_scr_pairs(data)
    kept = group >= 0
    for g in group[kept].unique()[:40].tolist():     # a text is one sentence: one topic, one sentiment
        rows = group == g
        assert data.classes["topic_generator"][rows].unique().numel() == 1
        assert data.classes["sentiment_generator"][rows].unique().numel() == 1
        assert data.doc[rows].unique().numel() == 1
    assert len(pairs_scr) == 4 and all(len(t) == int(group.max()) + 1 for t, _ in pairs_scr.values())
    _tg, classes, names = world_tpp_texts(data)
    assert len(classes) == data.doc.unique().numel() and len(names) == 8


@needs_world
def test_cli_writes_saebench_files_for_core_and_absorption(tmp_path):
    from interp.cli import main

    sae = saes.TopKSAE(256, 64, k=4, metadata={"hook_name": HOOK, "model_name": "world"})
    sae.save(tmp_path / "tiny")
    out = tmp_path / "eval"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["eval-saes", str(tmp_path / "tiny"), "--model", "world", "--suite", "core,absorption",
                     "--docs", "16", "--topical-docs", "256", "--n-boot", "50", "--out", str(out)])
    assert code == 0
    for family, type_id in (("core", "core"), ("absorption", "absorption_first_letter")):
        result = json.loads((out / family / "tiny_eval_results.json").read_text())
        assert SAEBENCH_FIELDS <= set(result) and result["eval_type_id"] == type_id
        assert result["sae_cfg_dict"]["d_sae"] == 64 and result["sae_cfg_dict"]["hook_name"] == HOOK
    core = json.loads((out / "core" / "tiny_eval_results.json").read_text())["eval_result_metrics"]
    assert 0 < core["sparsity"]["l0"] <= 4 and "explained_variance" in core["reconstruction_quality"]
    assert "ce_loss_score" in core["model_performance_preservation"]
    absorbed = json.loads((out / "absorption" / "tiny_eval_results.json").read_text())
    assert set(absorbed["eval_result_metrics"]["mean"]) == {
        "mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
        "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features"}
    assert absorbed["eval_result_details"], "no hierarchy concept had enough child tokens"
    assert (out / "comparison.md").exists() and (out / "figures.html").stat().st_size > 100_000
    assert "absorption.mean_absorption_fraction_score" in stdout.getvalue()


def test_cli_refuses_an_unknown_family_in_one_line(tmp_path, capsys):
    from interp.cli import main

    sae = saes.TopKSAE(8, 16, k=2, metadata={"hook_name": HOOK})
    sae.save(tmp_path / "s")
    assert main(["eval-saes", str(tmp_path / "s"), "--suite", "core,absorbtion", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean absorption" in err[0] and err[0].startswith("interp eval-saes: error:")
