"""Steering evaluation, the SNMF paper's protocol: exact scores from the world's generator,
neutral prompts, selection kept apart from report, both signs tried, intervals.

Models here are tiny and random: they test the machinery, not which vector steers best.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import interp
import saes
from interp.cli import main
from interp.interventions.steering import Steering, next_token_kl
from interp.interventions.steering_eval import (
    Candidate, Trial, choose, mean_interval, prompt_sets, run_trials, score_generation,
)
from interp.interventions.steering_lexical import topic_success
from interp.evaluation.losses import token_kl
from interp.world import World, score_doc
from interp.world.generator import BOS, EOS
from interp.world.labels import lexical_tables
from interp.world.scorer import latent_posterior
from interp.world.train import ModelConfig

LAYER = 1
TINY = ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128)  # the random model the tests steer


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, world):
    """A random 2-layer world model with its word-level tokenizer, saved like a trained one."""
    from interp.world.tokenizer import build_tokenizer
    from interp.world.train import build_model

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-world")
    build_model(world, TINY).save_pretrained(directory)
    build_tokenizer(world.vocab, 128).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    torch.set_num_threads(1)
    return interp.load(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory):
    """A random TopK SAE at resid_post and random sparse SNMF features at mlp.hook_post."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("dicts")
    sae = saes.TopKSAE(TINY.n_embd, 64, k=4)
    sae.metadata.update(hook_name=f"blocks.{LAYER}.hook_resid_post")
    sae.save(directory / "topk")
    features = torch.randn(6, TINY.d_mlp) * (torch.rand(6, TINY.d_mlp) < 0.1)
    saes.SNMFResult(features, torch.zeros(1, 6), [0.0], 0,
                    {"hook_name": f"blocks.{LAYER}.mlp.hook_post"}).save(directory / "snmf")
    return directory


# -- the posterior over the document latent ------------------------------------------------------
def test_a_topic_word_puts_the_mass_on_its_topic(world):
    post = latent_posterior(world, [BOS, "the", "cook"])   # a cooking agent
    assert post.accepted == 3
    assert post.topic("cooking") > 0.99
    assert post.topics()["cooking"] > 0.99


def test_a_neutral_prefix_keeps_the_prior(world):
    prior = dict(world.grammar.doc_prior())
    assert latent_posterior(world, [BOS]).posterior == pytest.approx(prior)
    topics = latent_posterior(world, [BOS, "the", "good"]).topics()
    assert topics == pytest.approx({t: 1 / 8 for t in world.grammar.topics}, abs=1e-9)
    # "a" opens only taxonomy sentences, which only the four topics with a hierarchy have.
    assert sum(p > 0 for p in latent_posterior(world, [BOS, "a"]).topics().values()) == 4


def test_an_impossible_token_cuts_the_prefix_exactly_there(world):
    doc = world.sample_docs(1, seed=4, kind="topical")[0]
    k = 6
    post = latent_posterior(world, doc.tokens[:k] + [BOS] + doc.tokens[k:])
    assert post.accepted == k
    assert post.logprob == pytest.approx(score_doc(world, doc.tokens[:k]).logprob)
    assert latent_posterior(world, [BOS, "the", "good", "soup", "pan"]).accepted == 3  # an object is no subject
    # Nothing follows <eos>.
    assert latent_posterior(world, doc.tokens + ["the"]).accepted == len(doc.tokens)


def test_log_probs_match_score_doc_on_grammatical_documents(world):
    for doc in world.sample_docs(30, seed=7):   # every kind
        post = latent_posterior(world, doc.tokens)
        assert post.accepted == len(doc.tokens)
        assert post.logprob == pytest.approx(score_doc(world, doc.tokens).logprob, abs=1e-12)
        assert sum(post.posterior.values()) == pytest.approx(1.0)


# -- success and fluency ----------------------------------------------------------------------------
def test_a_heap_of_topic_words_scores_low_a_grammatical_sentence_near_one(world):
    prompt = [BOS, "the", "good"]
    heap = ["soup", "pan", "cook", "bakes", "dough", "soup"]
    ids = torch.tensor([[world.vocab.index(w) for w in heap]])
    lexical = topic_success(ids, world.grammar.topics.index("cooking"), lexical_tables(world)["word_topics"])
    degenerate = score_generation(world, prompt, heap, "cooking")
    assert lexical == 1.0
    assert degenerate.success < 0.2 and degenerate.accepted == 0 and math.isnan(degenerate.logprob)
    sentence = score_generation(world, prompt, ["cook", "bakes", "the", "soup", ".", EOS, "pan", "pan"], "cooking")
    assert sentence.success > 0.99
    assert sentence.accepted == 1.0 and sentence.n_generated == 6   # cut after <eos>
    assert -10 < sentence.logprob < 0


def test_an_ungrammatical_prompt_is_refused(world):
    with pytest.raises(ValueError, match="not grammatical"):
        score_generation(world, [BOS, "soup"], ["the"], "cooking")


# -- prompts, selection, signs -----------------------------------------------------------------------
def test_selection_and_report_sets_are_disjoint_and_neutral(world):
    sets = prompt_sets(world, n_selection=4, n_report=6, seed=3)
    assert sets.disjoint and not set(sets.selection) & set(sets.report)
    assert len(sets.selection) == 4 and len(sets.report) == 6
    assert sets.selection_seed != sets.report_seed
    for prompt in sets.selection + sets.report:
        topics = latent_posterior(world, [BOS, *prompt.split()]).topics()
        assert len(topics) == 8 and max(topics.values()) / min(topics.values()) <= 1.25
    crowded = prompt_sets(world, n_selection=10, n_report=10)   # more than the world offers
    assert not crowded.disjoint and crowded.selection_seed != crowded.report_seed


def _trial(unit: int, sign: int, success: float) -> Trial:
    spec = Steering(f"blocks.{LAYER}.hook_resid_post", torch.ones(32))
    return Trial(Candidate("sae latent", spec, unit, 0.9), sign, 0.5, scale=sign * 2.0, kl=0.5, success=success)


def test_choose_takes_the_best_steerer_whatever_its_sign():
    trials = [_trial(3, 1, 0.20), _trial(3, -1, 0.70), _trial(5, 1, 0.40), _trial(5, -1, math.nan)]
    best = choose(trials)
    assert (best.candidate.unit, best.sign) == (3, -1)
    assert choose([_trial(1, 1, math.nan)]) is None   # nothing reached the target


def test_dictionary_units_are_tried_with_both_signs(world, model):
    sets = prompt_sets(world, n_selection=2, n_report=2, selection_samples=1, report_samples=1)
    spec = Steering(f"blocks.{LAYER}.hook_resid_post", torch.randn(32))
    unit = run_trials(model, world, Candidate("sae latent", spec, 0, 0.6), "cooking", sets, (0.005,), 3, {})
    assert sorted(t.sign for t in unit) == [-1, 1]
    assert all(t.scale * t.sign > 0 and t.kl == pytest.approx(0.005, rel=0.06) for t in unit)
    dim = run_trials(model, world, Candidate("diff-in-means", spec), "cooking", sets, (0.005,), 3, {})
    assert [t.sign for t in dim] == [1]


def test_kl_at_the_last_prompt_token(model):
    spec = Steering(f"blocks.{LAYER}.hook_mlp_out", torch.randn(32), scale=3.0)
    prompts = ["the good", "the"]
    tokens, mask = model.to_tokens(prompts, padding_side="left", return_attention_mask=True)
    with torch.no_grad(), model.hooks([(spec.hook, lambda x, hook: x + spec.scale * spec.vector * mask[..., None])]):
        steered = model(tokens, attention_mask=mask)
    with torch.no_grad():
        clean = model(tokens, attention_mask=mask)
    expected = float(token_kl(clean, steered)[:, -1].mean())
    assert next_token_kl(model, [spec], prompts, kl_position="last") == pytest.approx(expected, rel=1e-4)
    assert next_token_kl(model, [spec], prompts) != pytest.approx(expected, rel=1e-4)  # the default reads all tokens


# -- intervals -------------------------------------------------------------------------------------------
def test_mean_interval_on_known_data():
    constant = mean_interval([0.5] * 10)
    assert (constant.mean, constant.lo, constant.hi, constant.n) == (0.5, 0.5, 0.5, 10)
    torch.manual_seed(0)
    x = (2.0 + torch.randn(400)).tolist()
    ci = mean_interval(x + [math.nan])
    half = 1.96 * float(torch.tensor(x).std()) / 400 ** 0.5
    assert ci.n == 400 and ci.lo < ci.mean < ci.hi
    assert ci.hi - ci.lo == pytest.approx(2 * half, rel=0.15)
    assert ci.mean - ci.lo == pytest.approx(half, rel=0.25)
    assert mean_interval(x) == mean_interval(x)        # fixed seed: the same figures every run
    assert mean_interval([math.nan]).n == 0
    with pytest.raises(ValueError, match="coverage"):
        mean_interval(x, level=95)


# -- the command line ------------------------------------------------------------------------------------
def test_cli_lexical_protocol_still_works(model_dir, dictionaries, tmp_path, capsys):
    code = main(["steer-eval", "--model", str(model_dir), "--from", str(dictionaries), "--topics", "cooking",
                 "--kl", "0.005", "--protocol", "lexical", "--prompts", "3", "--new-tokens", "4",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "steering.json").read_text())
    assert report["protocol"] == "lexical"
    assert {r["method"] for r in report["rows"]} == {"unsteered", "diff-in-means", "sae latent", "snmf feature"}
    assert all("fluency" in r for r in report["rows"])
    assert "lexical protocol" in capsys.readouterr().out


def test_cli_paper_protocol_runs_end_to_end(model_dir, dictionaries, tmp_path, capsys):
    code = main(["steer-eval", "--model", str(model_dir), "--from", str(dictionaries), "--topics", "cooking,music",
                 "--kl", "0.003,0.006", "--candidates", "2", "--selection-prompts", "2", "--report-prompts", "3",
                 "--selection-samples", "2", "--report-samples", "2", "--docs", "30", "--new-tokens", "4",
                 "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((tmp_path / "steering.json").read_text())
    assert report["protocol"] == "paper" and report["settings"]["dim_hook"] == "mlp_out"
    assert report["prompts"]["disjoint"]
    assert not set(report["prompts"]["selection"]) & set(report["prompts"]["report"])
    methods = {(m["method"], m["target_kl"]) for m in report["mean"]}
    assert methods == {("unsteered", 0.0)} | {(m, k) for m in ("diff-in-means", "sae latent", "snmf feature")
                                              for k in (0.003, 0.006)}
    for m in report["mean"]:
        s = m["success"]
        assert s["n"] == 2 * 3 * 2 and s["lo"] <= s["mean"] <= s["hi"]   # topics x prompts x samples
    steered = [r for r in report["rows"] if r["method"] == "sae latent"]
    assert all(sorted({t["sign"] for t in r["trials"]}) == [-1, 1] for r in steered)
    assert all(r["kl"] == pytest.approx(r["target_kl"], rel=0.06) for r in steered)
    assert "[" in out.out and (tmp_path / "steering.html").exists()
