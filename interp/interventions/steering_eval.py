"""Steering evaluation on the world model: which vector steers a planted topic best, at matched KL.

Two protocols compare three kinds of steering vector per planted topic: a difference in
means, an SAE latent and an SNMF feature, each calibrated to the same next-token KL.

``paper`` (the default) follows the SNMF paper (Shafran, Geiger & Geva 2025, its
``intervention/intervener.py``), with the world's exact scorer as the judge:

* **prompts that leave the topic open.** A topical document's topic is fixed at its first
  token, so a prompt from another topic's document could never switch. The prompts are
  short openings after which every topic is about equally likely (:func:`neutral_prompts`,
  read off the grammar), each continued several times by sampling (temperature 1, fixed
  seeds). A *selection* set and a *report* set differ in prompts (where there are enough)
  and in sampling seeds (:func:`prompt_sets`).
* **units chosen by steering, not detection.** Detection AUROC on labelled documents only
  shortlists ``candidates`` units per topic (SAE latents at the SAE's hook, SNMF features at
  ``blocks.L.mlp.hook_post``); each is steered with ``+α`` and ``−α``, ``α`` found by
  bisection to the target KL read at the last prompt token. The (unit, sign) with the best
  success on the selection set is reported on the report set (its ``α`` recalibrated on
  the report prompts). The difference in means sits at ``blocks.L.hook_mlp_out``.
* **scores that cannot be gamed.** Success is the exact posterior probability that the
  document is about the target topic, given the longest prefix of prompt + generation the
  grammar accepts (:func:`interp.world.scorer.latent_posterior`): a text that turns
  ungrammatical is judged on what came before, so a heap of topic words gains nothing.
  Fluency is the generator's mean log-probability per accepted generated token, and the
  share of generated tokens accepted.
* **intervals.** Means over prompts x samples x topics with 95% percentile-bootstrap
  intervals (:func:`mean_interval`).

``lexical`` is the earlier protocol, kept for comparison: the best-AUROC unit per method,
greedy generation from openings of other topics' documents, success = share of generated
topic words that belong to the target topic, fluency = the unsteered model's loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from interp.interventions.steering import Steering, calibrate_scale
from interp.interventions.steering_lexical import compare_lexical
from probes.metrics import Interval, mean_interval

PROTOCOLS = ("paper", "lexical")


# ==========================================================================================
# The paper protocol
# ==========================================================================================
@dataclass(frozen=True)
class SteerEvalConfig:
    """Settings of the paper protocol. The defaults keep 8 topics x 3 KL targets on a 4-layer,
    d_model-256 world model to a few minutes of CPU: 5 candidates x 2 signs per dictionary
    are each calibrated and sampled 8 times (4 prompts x 2) on the selection set; each chosen
    vector is sampled 24 times (6 prompts x 4) on the report set."""

    candidates: int = field(default=5, metadata={
        "help": "units per dictionary shortlisted by detection AUROC, each steered with +alpha and -alpha",
        "positive": True, "metavar": "M"})
    dim_hook: str = field(default="mlp_out", metadata={
        "help": "where the difference in means is taken and added: the MLP output (the paper's) or resid_post",
        "choices": ("mlp_out", "resid_post")})
    selection_prompts: int = field(default=4, metadata={
        "help": "neutral prompts that choose each method's (unit, sign)", "positive": True, "metavar": "N"})
    report_prompts: int = field(default=6, metadata={
        "help": "neutral prompts the chosen vectors are reported on (disjoint from the selection prompts "
                "while there are enough)", "positive": True, "metavar": "N"})
    selection_samples: int = field(default=2, metadata={
        "help": "sampled continuations per selection prompt", "positive": True, "metavar": "N"})
    report_samples: int = field(default=4, metadata={
        "help": "sampled continuations per report prompt", "positive": True, "metavar": "N"})
    new_tokens: int = field(default=16, metadata={
        "help": "tokens generated per continuation", "positive": True, "metavar": "N"})
    n_docs: int = field(default=200, metadata={
        "help": "labelled topical documents the candidates and the difference in means are read from",
        "flag": "--docs", "positive": True, "metavar": "N"})
    seed: int = field(default=0, metadata={"help": "seed of the labelled documents and of the sampling"})
    max_words: int = 2        # longest neutral prompt, in words after <bos>
    max_ratio: float = 1.25   # a prompt is neutral when max/min of P(topic | prompt, topical) is at most this
    n_boot: int = 2000        # bootstrap resamples per interval

    def __post_init__(self) -> None:
        for name in ("candidates", "selection_prompts", "report_prompts", "selection_samples", "report_samples",
                     "new_tokens", "n_docs", "max_words", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.dim_hook not in ("mlp_out", "resid_post"):
            raise ValueError(f"dim_hook={self.dim_hook!r}: use 'mlp_out' (the paper's) or 'resid_post'")
        if self.max_ratio < 1:
            raise ValueError(f"max_ratio={self.max_ratio}: a ratio of largest to smallest is at least 1")


# -- prompts that leave the topic open ------------------------------------------------------
def neutral_prompts(world: Any = None, max_words: int = 2, max_ratio: float = 1.25) -> list[str]:
    """Openings (words after ``<bos>``) after which every topic stays about equally likely.

    Read off the grammar, breadth first: a prefix is kept when a topical document can
    produce it and the largest P(topic | prefix, topical) is at most ``max_ratio`` times the
    smallest; kept prefixes are extended by every token that can follow them. In the default
    world this gives ``the`` (fact documents open with it too, and the taxonomy sentences
    some topics have open with ``a``) and ``the`` + each sentiment adjective (exactly
    uniform). Ordered by probability under a topical document, most likely first.
    """
    from interp.world import World
    from interp.world.generator import BOS
    from interp.world.scorer import latent_posterior, next_token_distribution

    world = world or World()
    n_topics = len(world.grammar.topics)
    p_topical = sum(p for z, p in world.grammar.doc_prior() if z[0] == "topical")
    found: dict[str, float] = {}
    frontier: list[list[str]] = [[BOS]]
    for _ in range(max_words):
        grown = []
        for prefix in frontier:
            for token in sorted(next_token_distribution(world, prefix)):
                candidate = prefix + [token]
                post = latent_posterior(world, candidate)
                topics = post.topics()
                if len(topics) < n_topics or min(topics.values()) <= 0:
                    continue
                if max(topics.values()) / min(topics.values()) > max_ratio:
                    continue
                topical = sum(p for z, p in post.posterior.items() if z[0] == "topical")
                found[" ".join(candidate[1:])] = math.exp(sum(post.logprob)) * topical / p_topical
                grown.append(candidate)
        frontier = grown
    if not found:
        raise ValueError(f"no opening of at most {max_words} words leaves the topic open within a ratio of "
                         f"{max_ratio}: raise max_ratio or max_words")
    return sorted(found, key=lambda p: (-found[p], p))


@dataclass(frozen=True)
class PromptSets:
    """The selection and report sets: prompts, continuations per prompt and sampling seeds.

    Units are chosen on one and reported on the other, so a unit that got lucky on its own
    samples does not carry its luck into the figures."""

    selection: tuple[str, ...]
    report: tuple[str, ...]
    selection_samples: int
    report_samples: int
    selection_seed: int
    report_seed: int

    @property
    def disjoint(self) -> bool:
        return not set(self.selection) & set(self.report)


def prompt_sets(world: Any = None, n_selection: int = 4, n_report: int = 6, selection_samples: int = 2,
                report_samples: int = 4, seed: int = 0, max_words: int = 2, max_ratio: float = 1.25) -> PromptSets:
    """Split :func:`neutral_prompts` into a selection and a report set.

    Prompts are dealt in turn (report first) so both sets mix likely and unlikely openings.
    When there are fewer than ``n_selection + n_report`` neutral prompts, both sets take
    from all of them and only the sampling seeds differ (``PromptSets.disjoint`` says which).
    """
    pool = neutral_prompts(world, max_words, max_ratio)
    if len(pool) >= n_selection + n_report:
        report, selection = _deal(pool, n_report, n_selection)
    else:
        report, selection = pool[:n_report], pool[:n_selection]
    return PromptSets(tuple(selection), tuple(report), selection_samples, report_samples,
                      selection_seed=2 * seed, report_seed=2 * seed + 1)


def _deal(pool: Sequence[str], n_first: int, n_second: int) -> tuple[list[str], list[str]]:
    """Deal ``pool`` alternately into two hands of at most ``n_first`` and ``n_second``."""
    first: list[str] = []
    second: list[str] = []
    for prompt in pool:
        if len(first) < n_first and (len(first) <= len(second) or len(second) >= n_second):
            first.append(prompt)
        elif len(second) < n_second:
            second.append(prompt)
    return first, second


# -- exact scores ----------------------------------------------------------------------------
@dataclass
class GenerationScore:
    """One continuation, judged by the world's generator."""

    success: float    # P(document about the target topic | longest grammatical prefix)
    logprob: float    # mean log p per accepted generated token (nats); NaN when none is accepted
    accepted: float   # share of generated tokens (up to the first <eos>) inside that prefix
    n_generated: int


def score_generation(world: Any, prompt: Sequence[str], generated: Sequence[str], topic: str,
                     memo: dict | None = None) -> GenerationScore:
    """Score a continuation: ``prompt`` (tokens from ``<bos>``) must be grammatical;
    ``generated`` is cut after its first ``<eos>`` (the document has ended there).

    ``memo`` caches the posterior per token sequence (sampling repeats itself)."""
    from interp.world.generator import EOS
    from interp.world.scorer import latent_posterior

    generated = list(generated)
    if EOS in generated:
        generated = generated[: generated.index(EOS) + 1]
    tokens = tuple(prompt) + tuple(generated)
    post = memo.get(tokens) if memo is not None else None
    if post is None:
        post = latent_posterior(world, list(tokens))
        if memo is not None:
            memo[tokens] = post
    if post.accepted < len(prompt):
        raise ValueError(f"the prompt {' '.join(prompt)!r} is not grammatical in this world "
                         f"(it fails at token {post.accepted}); use prompts from neutral_prompts()")
    n_accepted = post.accepted - len(prompt)
    gen_logprob = post.logprob[len(prompt) - 1: post.accepted - 1]
    return GenerationScore(success=post.topic(topic),
                           logprob=sum(gen_logprob) / n_accepted if n_accepted else math.nan,
                           accepted=n_accepted / len(generated) if generated else math.nan,
                           n_generated=len(generated))


def _words(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The real (unpadded) tokens of one row as the world's words."""
    return model.tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())


def score_outputs(world: Any, model: Any, out: Any, topic: str, memo: dict | None = None) -> list[GenerationScore]:
    """:func:`score_generation` for every row of a :class:`GenerationResult`."""
    P = out.prompt_length
    mask = out.attention_mask.cpu()
    tokens = out.tokens.cpu()
    return [score_generation(world, _words(model, tokens[i, :P], mask[i, :P]),
                             _words(model, tokens[i, P:], mask[i, P:]), topic, memo)
            for i in range(len(tokens))]


# -- intervals ---------------------------------------------------------------------------------
# -- candidates ----------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A unit vector to steer with (``spec.scale`` 1) and why it was shortlisted."""

    method: str
    spec: Steering
    unit: int | None = None
    auroc: float | None = None


@torch.no_grad()
def candidate_units(model: Any, layer: int, topic_indices: Sequence[int], sae: Any = None, snmf: Any = None,
                    config: SteerEvalConfig = SteerEvalConfig(), world: Any = None) -> dict[int, list[Candidate]]:
    """Per topic: the difference in means and the top ``config.candidates`` SAE latents and SNMF
    features by detection AUROC, over every token of labelled topical documents.

    Detection only shortlists: the best detector is often a poor steerer, so the final choice
    is made by steering (:func:`choose`)."""
    from probes import diff_in_means
    from saes.metrics import auroc

    from interp.world import World, labelled_batch

    world = world or World()
    dim_hook = f"blocks.{layer}.hook_{config.dim_hook}"
    post = f"blocks.{layer}.mlp.hook_post"
    sae_hook = _sae_hook(sae, layer) if sae is not None else None
    names = list(dict.fromkeys([dim_hook] + ([sae_hook] if sae is not None else [])
                               + ([post] if snmf is not None else [])))
    batch = labelled_batch(config.n_docs, seed=config.seed, world=world, kind="topical", model=model, names=names)
    keep = batch.labels["topic"] >= 0
    topic = batch.labels["topic"][keep]
    acts = {name: batch.cache[name][keep].float() for name in names}
    sae_codes = snmf_codes = None
    if sae is not None:
        sae_codes = sae.encode(acts[sae_hook].to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
    if snmf is not None:   # non-negative coefficients refitted on these tokens, the features fixed
        snmf_codes = snmf.encode(acts[post]).cpu()
    out: dict[int, list[Candidate]] = {}
    for index in topic_indices:
        on = topic == index
        if not bool(on.any()) or bool(on.all()):
            raise ValueError(f"topic {world.grammar.topics[index]!r} has no tokens (or only its own) among "
                             f"{config.n_docs} labelled documents: raise n_docs")
        x = acts[dim_hook]
        cands = [Candidate("diff-in-means", Steering.from_direction(diff_in_means(x[on], x[~on]), dim_hook,
                                                                    name="diff-in-means"))]
        if sae_codes is not None:
            cands += [Candidate("sae latent", Steering.from_sae(sae, u, hook=sae_hook), u, a)
                      for u, a in _top_units(auroc(sae_codes, on), config.candidates)]
        if snmf_codes is not None:
            cands += [Candidate("snmf feature", Steering.from_snmf(snmf, u, post), u, a)
                      for u, a in _top_units(auroc(snmf_codes, on), config.candidates)]
        out[index] = cands
    return out


def _top_units(aurocs: torch.Tensor, m: int) -> list[tuple[int, float]]:
    """The ``m`` units of highest AUROC, best first."""
    values, units = aurocs.nan_to_num(0.0).topk(min(m, len(aurocs)))
    return [(int(u), float(a)) for u, a in zip(units, values)]


def _sae_hook(sae: Any, layer: int) -> str:
    return (getattr(sae, "metadata", None) or {}).get("hook_name") or f"blocks.{layer}.hook_resid_post"


# -- selection -------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One (unit, sign) steered at one KL target on the selection set."""

    candidate: Candidate
    sign: int
    target_kl: float
    scale: float = math.nan
    kl: float = math.nan
    success: float = math.nan   # mean over the selection set; NaN when the target was out of reach
    note: str = ""

    def record(self) -> dict:
        return {"unit": self.candidate.unit, "auroc": self.candidate.auroc, "sign": self.sign, "scale": self.scale,
                "kl": self.kl, "success": self.success, **({"note": self.note} if self.note else {})}


def choose(trials: Sequence[Trial]) -> Trial | None:
    """The trial with the best selection success (the first of equals: higher AUROC, then +α).

    None when no trial reached its KL target."""
    done = [t for t in trials if not math.isnan(t.success)]
    return max(done, key=lambda t: t.success) if done else None


def _signs(candidate: Candidate) -> tuple[int, ...]:
    """Dictionary units are tried both ways (the paper's ±α); the difference in means points
    at the topic by construction."""
    return (1,) if candidate.method == "diff-in-means" else (1, -1)


def _sample(model: Any, world: Any, spec: Steering | None, prompts: Sequence[str], samples: int, seed: int,
            topic: str, new_tokens: int, memo: dict) -> list[GenerationScore]:
    """``samples`` continuations of each prompt (temperature 1, one seed for the batch), scored."""
    batch = [p for p in prompts for _ in range(samples)]
    out = model.generate(batch, max_new_tokens=new_tokens, steering=[spec] if spec is not None else [],
                         do_sample=True, temperature=1.0, seed=seed, stop_at_eos=True)
    return score_outputs(world, model, out, topic, memo)


def _calibrated(model: Any, spec: Steering, prompts: Sequence[str], target: float,
                start: float) -> tuple[Steering, float]:
    """``spec`` at the scale whose KL at the last prompt token is ``target`` (the paper's)."""
    return calibrate_scale(model, spec, list(prompts), target, start=start, kl_position="last")


def run_trials(model: Any, world: Any, candidate: Candidate, topic: str, sets: PromptSets,
               kl_targets: Sequence[float], new_tokens: int, memo: dict) -> list[Trial]:
    """Every sign of ``candidate`` at every KL target, scored on the selection set.

    Targets run in increasing order, each bisection starting from the last one's scale."""
    trials = []
    for sign in _signs(candidate):
        start = 1.0
        for target in sorted(kl_targets):
            trial = Trial(candidate, sign, target)
            try:
                tuned, trial.kl = _calibrated(model, candidate.spec.with_scale(sign * start), sets.selection,
                                              target, start)
            except ValueError as err:   # this direction saturates below the target: not a steerer here
                trials += [Trial(candidate, sign, t, note=str(err)) for t in sorted(kl_targets) if t >= target]
                break                   # a larger target is out of reach too
            trial.scale, start = tuned.scale, abs(tuned.scale)
            scores = _sample(model, world, tuned, sets.selection, sets.selection_samples, sets.selection_seed,
                             topic, new_tokens, memo)
            trial.success = sum(s.success for s in scores) / len(scores)
            trials.append(trial)
    return trials


# -- one topic ---------------------------------------------------------------------------------------
def _row(topic: str, method: str, target: float, scale: float, kl: float, scores: Sequence[GenerationScore],
         **extra: Any) -> dict:
    values = {k: [getattr(s, k) for s in scores] for k in ("success", "logprob", "accepted")}
    means = {k: _nanmean(v) for k, v in values.items()}
    return {"topic": topic, "method": method, "target_kl": target, "scale": scale, "kl": kl, **means,
            "n": len(scores), **extra, "values": values}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def evaluate_topic(model: Any, world: Any, topic: str, candidates: Sequence[Candidate], sets: PromptSets,
                   kl_targets: Sequence[float], new_tokens: int, memo: dict | None = None) -> list[dict]:
    """The paper protocol for one topic: the unsteered row, then per method and KL target the
    (unit, sign) chosen on the selection set, recalibrated and scored on the report set.

    Each row holds the per-continuation ``values`` the intervals are computed from, and
    ``trials``: every (unit, sign) tried, with its selection success."""
    memo = {} if memo is None else memo
    plain = _sample(model, world, None, sets.report, sets.report_samples, sets.report_seed, topic, new_tokens, memo)
    rows = [_row(topic, "unsteered", 0.0, 0.0, 0.0, plain)]
    for method in dict.fromkeys(c.method for c in candidates):
        trials = [t for c in candidates if c.method == method
                  for t in run_trials(model, world, c, topic, sets, kl_targets, new_tokens, memo)]
        for target in kl_targets:
            mine = [t for t in trials if t.target_kl == target]
            best = choose(mine)
            if best is None:
                continue   # no candidate reaches this KL: no row (the trials' notes say why)
            try:
                tuned, kl = _calibrated(model, best.candidate.spec.with_scale(best.sign * abs(best.scale)),
                                        sets.report, target, abs(best.scale))
            except ValueError:
                continue
            scores = _sample(model, world, tuned, sets.report, sets.report_samples, sets.report_seed, topic,
                             new_tokens, memo)
            rows.append(_row(topic, method, target, tuned.scale, kl, scores, unit=best.candidate.unit,
                             sign=best.sign, auroc=best.candidate.auroc, selection_success=best.success,
                             trials=[t.record() for t in mine]))
    return rows


def paper_protocol(model: Any, topics: Sequence[str], layer: int, sae: Any = None, snmf: Any = None,
                   kl_targets: Sequence[float] = (0.25, 0.5, 1.0), config: SteerEvalConfig = SteerEvalConfig(),
                   world: Any = None, progress: bool = False) -> tuple[list[dict], PromptSets]:
    """The paper protocol over ``topics``: rows as :func:`evaluate_topic`, and the prompt sets used."""
    from tqdm.auto import tqdm

    from interp.world import World

    world = world or World()
    names = list(world.grammar.topics)
    _check_topics(topics, names)
    sets = prompt_sets(world, config.selection_prompts, config.report_prompts, config.selection_samples,
                       config.report_samples, config.seed, config.max_words, config.max_ratio)
    _check_tokenizer(model, sets.selection + sets.report)
    candidates = candidate_units(model, layer, [names.index(t) for t in topics], sae, snmf, config, world)
    memo: dict = {}
    rows: list[dict] = []
    for topic in tqdm(topics, desc="steer-eval topics", disable=not progress):
        rows += evaluate_topic(model, world, topic, candidates[names.index(topic)], sets, kl_targets,
                               config.new_tokens, memo)
    return rows, sets


def _check_topics(topics: Sequence[str], names: Sequence[str]) -> None:
    unknown = [t for t in topics if t not in names]
    if unknown:
        raise ValueError(f"unknown topics {unknown}; the world's topics are {', '.join(names)}")


def _check_tokenizer(model: Any, prompts: Sequence[str]) -> None:
    """Every prompt word must be one token of the model: otherwise its ids are not the world's words."""
    from interp.world.generator import BOS

    for prompt in prompts:
        words = model.tokenizer.convert_ids_to_tokens(model.to_tokens(prompt)[0].tolist())
        if words != [BOS, *prompt.split()]:
            raise ValueError(f"the model reads {prompt!r} as {words}, not as the world's words: steering evaluation "
                             "needs a model trained on this world with its word-level tokenizer")


# -- summary and chart -----------------------------------------------------------------------------------
@dataclass
class SummaryRow:
    """One method at one KL target, over topics x prompts x samples of the report set."""

    method: str
    target_kl: float
    kl: float          # mean KL reached (at the last prompt token), over topics
    success: Interval
    logprob: Interval
    accepted: Interval
    topics: int

    def to_dict(self) -> dict:
        return {"method": self.method, "target_kl": self.target_kl, "kl": self.kl, "topics": self.topics,
                **{k: asdict(getattr(self, k)) for k in ("success", "logprob", "accepted")}}


def summarize(rows: Sequence[dict], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[SummaryRow]:
    """Pool the paper protocol's rows per (method, KL target): mean and bootstrap interval
    (:func:`mean_interval`) of success, log-probability and accepted share over every
    continuation of every topic. ``logprob`` leaves out continuations with no accepted token."""
    if rows and "values" not in rows[0]:
        raise ValueError("these rows come from the lexical protocol (no per-continuation 'values'): average them "
                         "with mean_by_method(rows)")
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["target_kl"]), []).append(r)
    out = []
    for (method, target), group in groups.items():
        pooled = {k: [v for r in group for v in r["values"][k]] for k in ("success", "logprob", "accepted")}
        success, logprob, accepted = (mean_interval(pooled[k], level, n_boot, seed)
                                      for k in ("success", "logprob", "accepted"))
        out.append(SummaryRow(method, target, sum(r["kl"] for r in group) / len(group), success, logprob, accepted,
                              topics=len(group)))
    return out


def summary_chart(summary: Sequence[SummaryRow], title: str) -> Any:
    """Plotly scatter of success against log-probability per token, with 95% intervals both
    ways, one trace per method, labelled by KL target (accepted share on hover)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in dict.fromkeys(r.method for r in summary):
        mine = [r for r in summary if r.method == method]
        fig.add_trace(go.Scatter(
            x=[r.logprob.mean for r in mine], y=[r.success.mean for r in mine], mode="lines+markers+text", name=method,
            text=[f"KL {r.target_kl:g}" if r.target_kl else "" for r in mine], textposition="top center",
            error_x=dict(type="data", symmetric=False, array=[r.logprob.hi - r.logprob.mean for r in mine],
                         arrayminus=[r.logprob.mean - r.logprob.lo for r in mine]),
            error_y=dict(type="data", symmetric=False, array=[r.success.hi - r.success.mean for r in mine],
                         arrayminus=[r.success.mean - r.success.lo for r in mine]),
            customdata=[[str(r.accepted)] for r in mine],
            hovertemplate="success %{y:.3f}<br>log p/token %{x:.3f}<br>accepted %{customdata[0]}"))
    fig.update_layout(title=f"Steering towards a topic: {title} (95% bootstrap intervals)",
                      xaxis_title="generator's log-probability per accepted generated token (higher = more fluent)",
                      yaxis_title="P(target topic | grammatical prefix)", yaxis_range=[0, 1.05])
    return fig


# ==========================================================================================
# Both protocols
# ==========================================================================================
def compare_methods(model: Any, topics: Sequence[str], layer: int, sae: Any = None, snmf: Any = None,
                    kl_targets: Sequence[float] = (0.25, 0.5, 1.0), n_prompts: int = 12, new_tokens: int = 16,
                    seed: int = 0, protocol: str = "paper", world: Any = None, progress: bool = False,
                    **options: Any) -> list[dict]:
    """The full comparison: for each planted topic, every available method at every KL target.

    ``protocol="paper"`` (default): rows of :func:`evaluate_topic`, summarised by
    :func:`summarize`; ``options`` are the other :class:`SteerEvalConfig` fields
    (``candidates``, ``dim_hook``, ``selection_prompts`` ...). ``protocol="lexical"``: one dict
    per (topic, method, target) with what was chosen (latent/feature and its AUROC) and the
    :class:`SteeringRow` fields, averaged by :func:`mean_by_method`; ``n_prompts`` is its prompt count.
    """
    from interp.world.lexicon import TOPICS

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: use one of {', '.join(PROTOCOLS)}")
    _check_topics(topics, list(TOPICS))
    if protocol == "lexical":
        if options:
            raise ValueError(f"{', '.join(options)}: only protocol='paper' takes these")
        return compare_lexical(model, topics, layer, sae, snmf, kl_targets, n_prompts, new_tokens, seed)
    known = {f.name for f in fields(SteerEvalConfig)}
    stray = [k for k in options if k not in known]
    if stray:
        raise ValueError(f"unknown options {stray}; the paper protocol takes {', '.join(sorted(known))}")
    config = SteerEvalConfig(**{"new_tokens": new_tokens, "seed": seed, **options})
    rows, _ = paper_protocol(model, topics, layer, sae, snmf, kl_targets, config, world, progress)
    return rows
