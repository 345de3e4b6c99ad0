"""The earlier steering comparison, kept beside the paper protocol (``protocol="lexical"``).

For each planted topic: the best-AUROC unit per method (difference in means at
``resid_post``, an SAE latent, an SNMF feature), greedy generation from openings of *other*
topics' documents, success = share of generated topic words that belong to the target
topic (the world's lexical labels), fluency = the unsteered model's loss on the generation.
A degenerate generation with a few topic words can score high here; the paper protocol in
:mod:`.steering_eval` cannot be gamed that way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from interp.evaluation.losses import next_token_nll
from interp.interventions.steering import Steering, calibrate_scale


@dataclass
class SteeringRow:
    method: str
    target_kl: float
    scale: float
    kl: float
    success: float
    fluency: float


def topic_prompts(topic: str, n: int = 16, words: int = 3, seed: int = 0) -> list[str]:
    """Openings of topical documents about other topics: steering must change the subject."""
    from interp.world import World

    docs = [d for d in World().iter_docs(20 * n, seed=seed, kind="topical") if d.z[1] != topic][:n]
    return [" ".join(d.tokens[1: 1 + words]) for d in docs]


def topic_success(new_tokens: torch.Tensor, topic_index: int, word_topics: torch.Tensor) -> float:
    """Share of generated topic words that belong to the target topic ([n, T] token ids)."""
    flat = new_tokens.flatten().cpu()
    flat = flat[flat < word_topics.shape[0]]
    topical = word_topics[flat]  # [m, n_topics]
    is_topic_word = topical.any(1)
    if not bool(is_topic_word.any()):
        return 0.0
    return float(topical[is_topic_word, topic_index].float().mean())


@torch.no_grad()
def fluency(model: Any, tokens: torch.Tensor, mask: torch.Tensor, prompt_length: int) -> float:
    """Mean per-token loss of the generated tokens under the unsteered model."""
    nll = next_token_nll(model(tokens, attention_mask=mask), tokens)  # [n, T-1]: loss of token t+1
    generated = mask[:, 1:].bool().clone()
    generated[:, : prompt_length - 1] = False
    return float(nll[generated].mean())


def evaluate_steering(model: Any, specs: dict[str, Steering], topic_index: int, prompts: Sequence[str],
                      word_topics: torch.Tensor, kl_targets: Sequence[float] = (0.05, 0.1, 0.25, 0.5),
                      new_tokens: int = 16) -> list[SteeringRow]:
    """Calibrate each spec to each KL target, generate greedily, score success and fluency."""
    rows = []
    plain = model.generate(list(prompts), max_new_tokens=new_tokens)
    rows.append(SteeringRow("unsteered", 0.0, 0.0, 0.0, topic_success(plain.new_tokens, topic_index, word_topics),
                            fluency(model, plain.tokens, plain.attention_mask, plain.prompt_length)))
    for method, spec in specs.items():
        for target in kl_targets:
            tuned, kl = calibrate_scale(model, spec, list(prompts), target)
            out = model.generate(list(prompts), max_new_tokens=new_tokens, steering=[tuned])
            rows.append(SteeringRow(method, target, tuned.scale, kl,
                                    topic_success(out.new_tokens, topic_index, word_topics),
                                    fluency(model, out.tokens, out.attention_mask, out.prompt_length)))
    return rows


def steering_chart(rows: Sequence[SteeringRow], topic: str) -> Any:
    """Plotly scatter of success against fluency, one trace per method, labelled by KL target."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        fig.add_trace(go.Scatter(x=[r.fluency for r in mine], y=[r.success for r in mine], mode="lines+markers+text",
                                 text=[f"KL {r.target_kl:g}" for r in mine], textposition="top center", name=method))
    fig.update_layout(title=f"Steering towards topic {topic!r}: success vs fluency at matched KL",
                      xaxis_title="loss of the generation under the unsteered model (lower = more fluent)",
                      yaxis_title="share of topic words on target", yaxis_range=[0, 1.05])
    return fig


def rows_as_dicts(rows: Sequence[SteeringRow]) -> list[dict]:
    return [asdict(r) for r in rows]


@torch.no_grad()
def topic_specs(model: Any, topic_index: int, layer: int, sae: Any = None, snmf: Any = None,
                n_docs: int = 200, seed: int = 0) -> tuple[dict[str, Steering], dict]:
    """The three steering vectors for a planted topic, from labelled world documents (lexical protocol).

    * ``diff-in-means``: mean resid_post over the topic's tokens minus the other topics';
    * ``sae latent``: the latent of ``sae`` (trained at that resid_post) with the best AUROC
      for the topic;
    * ``snmf feature``: the feature of ``snmf`` (fit at that layer's ``mlp.hook_post``) whose
      coefficients, refitted for these tokens (:meth:`SNMFResult.encode`), best detect the topic.
    Returns the specs and what was chosen (with AUROCs).
    """
    from probes import coverage, diff_in_means

    from interp.world import labelled_batch

    resid, post = f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"
    batch = labelled_batch(n_docs, seed=seed, kind="topical")
    # Every token of the topic's documents against every token of the others': the topic
    # as the model carries it through a document, which is what steering has to install.
    # (Picking the latent on content words alone finds word detectors that steer worse.)
    keep = batch.labels["topic"] >= 0
    _, cache = model.run_with_cache(batch.tokens, names=[resid, post], return_logits=False,
                                    attention_mask=batch.attention_mask)
    x = cache[resid][keep].float()
    on = batch.labels["topic"][keep] == topic_index
    specs = {"diff-in-means": Steering.from_direction(diff_in_means(x[on], x[~on]), resid, name="diff-in-means")}
    chosen: dict = {}
    if sae is not None:
        report = coverage(sae.encode(x), on[:, None])
        latent = int(report.best_latent[0])
        specs["sae latent"] = Steering.from_sae(sae, latent, hook=resid)
        chosen["sae latent"] = {"latent": latent, "auroc": float(report.best_auroc[0])}
    if snmf is not None:
        coeffs = snmf.encode(cache[post][keep].float())  # [n, rank]: non-negative fit on the fixed features
        report = coverage(coeffs, on[:, None])
        feature = int(report.best_latent[0])
        specs["snmf feature"] = Steering.from_snmf(snmf, feature, post)
        chosen["snmf feature"] = {"feature": feature, "auroc": float(report.best_auroc[0])}
    return specs, chosen


def compare_lexical(model: Any, topics: Sequence[str], layer: int, sae: Any, snmf: Any,
                     kl_targets: Sequence[float], n_prompts: int, new_tokens: int, seed: int) -> list[dict]:
    from interp.world import World
    from interp.world.labels import lexical_tables
    from interp.world.lexicon import TOPICS

    names = list(TOPICS)
    word_topics = lexical_tables(World())["word_topics"]
    out = []
    for topic in topics:
        index = names.index(topic)
        specs, chosen = topic_specs(model, index, layer, sae=sae, snmf=snmf, seed=seed)
        rows = evaluate_steering(model, specs, index, topic_prompts(topic, n=n_prompts, seed=seed), word_topics,
                                 kl_targets=kl_targets, new_tokens=new_tokens)
        for row in rows_as_dicts(rows):
            out.append({"topic": topic, **row, **({"chosen": chosen[row["method"]]} if row["method"] in chosen else {})})
    return out


def mean_by_method(rows: Sequence[dict]) -> list[SteeringRow]:
    """Average success, fluency, scale and KL over topics for each (method, KL target) (lexical rows;
    the paper protocol's rows go to :func:`summarize`)."""
    if rows and "fluency" not in rows[0]:
        raise ValueError("these rows come from the paper protocol (no 'fluency' field): summarise them with "
                         "summarize(rows), or run compare_methods(..., protocol='lexical')")
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["target_kl"]), []).append(r)
    fields_ = ("scale", "kl", "success", "fluency")
    return [SteeringRow(m, t, *(sum(r[f] for r in g) / len(g) for f in fields_)) for (m, t), g in groups.items()]
