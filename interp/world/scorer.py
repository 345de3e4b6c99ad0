"""Exact next-token probabilities of the generator, by enumerating its hidden choices.

For a token sequence, :func:`score_doc` returns ``log p(x_t | x_<t)`` under the generator
and the entropy of that conditional distribution. The hidden choices are the document
latent ``z`` (kind, topic) and each segment's latent ``u`` (sentiment and template, or QA
item type); everything else is a visible token. The scorer runs one copy of the grammar
program per live hypothesis, weights each by the probability of the tokens so far, and
drops those that give the observed token probability zero. This is forward filtering on
a small discrete state, so the result is exact, not an estimate.

Averaged over held-out documents, ``-log p`` is the irreducible loss: a model that
matched the generator perfectly would have exactly this cross-entropy.

The same filtering gives :func:`latent_posterior`: which document latent (kind, topic) a
prefix came from, judged only on the part the generator could have produced. Steering
evaluation reads its success from it (:mod:`interp.interventions.steering_eval`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from interp.world.dist import Dist
from interp.world.generator import BOS, EOS, World
from interp.world.grammar import Program, Z

_EOS_DIST = Dist({EOS: 1.0})


@dataclass
class _Hyp:
    weight: float
    z: Z
    n_done: int
    program: Program | None   # None: this hypothesis predicts <eos> next
    dist: Dist


@dataclass
class DocScore:
    """Per predicted token (positions 1..n-1 of the document)."""

    logprob: list[float]      # log p(x_t | x_<t), nats
    entropy: list[float]      # H(X_t | x_<t), nats


def _start_segments(world: World, z: Z, n_done: int, weight: float, history: list[str]) -> list[_Hyp]:
    """Hypotheses at a segment boundary: stop now, or start a segment under each ``u``."""
    g = world.grammar
    out: list[_Hyp] = []
    p_stop = g.p_stop(z, n_done)
    if p_stop > 0:
        out.append(_Hyp(weight * p_stop, z, n_done, None, _EOS_DIST))
    if p_stop < 1:
        for u, pu in g.segment_latents(z):
            program = g.program(z, u, {}, history)
            out.append(_Hyp(weight * (1 - p_stop) * pu, z, n_done, program, next(program).dist))
    return out


def score_doc(world: World, tokens: list[str], with_entropy: bool = True) -> DocScore:
    """Exact conditional log-probabilities (and entropies) of one document's tokens.

    ``tokens`` starts with ``<bos>``; it may stop before ``<eos>`` (a prefix is scored the
    same way). Raises ``ValueError`` if the generator cannot produce the sequence.
    """
    run = _filter(world, tokens, with_entropy=with_entropy, strict=True)
    return DocScore(run.logprob, run.entropy)


@dataclass
class _Run:
    """What forward filtering over a token sequence leaves behind."""

    logprob: list[float]      # log p(x_t | x_<t) for t = 1 .. accepted-1
    entropy: list[float]      # H(X_t | x_<t), when asked for
    hyps: list[_Hyp]          # the live hypotheses after the accepted prefix
    accepted: int             # tokens (from <bos>) the generator can produce


def _filter(world: World, tokens: list[str], with_entropy: bool = False, strict: bool = True) -> _Run:
    """Forward filtering over ``tokens``: one grammar program per live hypothesis.

    ``strict``: a token the generator cannot produce raises ``ValueError``; otherwise the
    filtering stops there and ``accepted`` says how far it got. Nothing follows ``<eos>``:
    strict filtering ignores what comes after it, the other kind counts it as not accepted.
    """
    if not tokens or tokens[0] != BOS:
        raise ValueError("a document starts with <bos>")
    hyps: list[_Hyp] = []
    seen = [BOS]   # the document so far, shared by every hypothesis's program
    for z, pz in world.grammar.doc_prior():
        hyps += _start_segments(world, z, 0, pz, seen)
    logprobs: list[float] = []
    entropies: list[float] = []
    for t, token in enumerate(tokens[1:], start=1):
        total = sum(h.weight for h in hyps)
        if with_entropy:
            entropies.append(_entropy(hyps, total))
        survivors = []
        p_token = 0.0
        for h in hyps:
            p = h.dist.prob(token)
            if p > 0:
                p_token += h.weight * p
                h.weight *= p
                survivors.append(h)
        if p_token <= 0:
            if strict:
                raise ValueError(f"the generator cannot produce {token!r} at position {t} after "
                                 f"{' '.join(tokens[max(0, t - 8):t])!r}")
            return _Run(logprobs, entropies[:-1] if with_entropy else entropies, hyps, t)
        logprobs.append(math.log(p_token / total))
        if token == EOS:
            return _Run(logprobs, entropies, survivors, t + 1)
        seen.append(token)
        hyps = _advance(world, survivors, token, seen)
        # Renormalise now and then so long documents do not underflow.
        scale = sum(h.weight for h in hyps)
        for h in hyps:
            h.weight /= scale
    return _Run(logprobs, entropies, hyps, len(tokens))


def _entropy(hyps: list[_Hyp], total: float) -> float:
    """Entropy of the mixture of the hypotheses' next-token distributions."""
    mixture: dict[str, float] = {}
    for h in hyps:
        w = h.weight / total
        for tok, p in h.dist.items():
            mixture[tok] = mixture.get(tok, 0.0) + w * p
    return -sum(p * math.log(p) for p in mixture.values() if p > 0)


@dataclass
class LatentPosterior:
    """The document latent given a token prefix, read off the generator exactly."""

    posterior: dict[Z, float]  # P(z | accepted prefix) for every z of the prior; sums to 1
    accepted: int              # length of the longest prefix (from <bos>) the generator can produce
    logprob: list[float]       # log p(x_t | x_<t) of that prefix, t = 1 .. accepted-1

    def topic(self, topic: str) -> float:
        """P(the document is topical, about ``topic``)."""
        return self.posterior.get(("topical", topic), 0.0)

    def topics(self) -> dict[str, float]:
        """P(topic | topical document, prefix): the topic distribution alone (empty if no
        topical document could have produced the prefix)."""
        topical = {z[1]: p for z, p in self.posterior.items() if z[0] == "topical"}
        total = sum(topical.values())
        return {t: p / total for t, p in topical.items()} if total > 0 else {}


def latent_posterior(world: World, tokens: list[str]) -> LatentPosterior:
    """Posterior over the document latent ``z`` (kind, topic) given the longest prefix of
    ``tokens`` the generator can produce.

    Unlike :func:`score_doc` it does not raise on an impossible token: it stops there, so a
    text that turns ungrammatical is judged on what came before (an ungrammatical tail gains
    nothing). ``<eos>`` ends the document: any token after it is not accepted.
    ``tokens`` starts with ``<bos>``.
    """
    run = _filter(world, tokens, strict=False)
    mass: dict[Z, float] = {z: 0.0 for z, _ in world.grammar.doc_prior()}
    for h in run.hyps:
        mass[h.z] = mass.get(h.z, 0.0) + h.weight
    total = sum(mass.values())
    return LatentPosterior({z: m / total for z, m in mass.items()}, run.accepted, run.logprob)


def _advance(world: World, hyps: list[_Hyp], token: str, history: list[str]) -> list[_Hyp]:
    """Feed the observed token to each program; finished segments branch into the next."""
    out: list[_Hyp] = []
    boundary: dict[tuple[Z, int], float] = {}   # finished segments merge: the future forgets u
    for h in hyps:
        try:
            h.dist = h.program.send(token).dist
            out.append(h)
        except StopIteration:
            key = (h.z, h.n_done + 1)
            boundary[key] = boundary.get(key, 0.0) + h.weight
    for (z, n_done), weight in boundary.items():
        out += _start_segments(world, z, n_done, weight, history)
    return out


def next_token_distribution(world: World, prefix: list[str]) -> dict[str, float]:
    """The generator's exact distribution of the token after ``prefix`` (which starts with
    ``<bos>``): what a perfect model would predict there."""
    if not prefix or prefix[0] != BOS:
        raise ValueError("a prefix starts with <bos>")
    seen = [BOS]
    hyps: list[_Hyp] = []
    for z, pz in world.grammar.doc_prior():
        hyps += _start_segments(world, z, 0, pz, seen)
    for token in prefix[1:]:
        hyps = [h for h in hyps if h.dist.prob(token) > 0]
        if not hyps:
            raise ValueError(f"the generator cannot produce the prefix {' '.join(prefix)!r}")
        for h in hyps:
            h.weight *= h.dist.prob(token)
        seen.append(token)
        hyps = _advance(world, hyps, token, seen)
    total = sum(h.weight for h in hyps)
    out: dict[str, float] = {}
    for h in hyps:
        for tok, p in h.dist.items():
            out[tok] = out.get(tok, 0.0) + h.weight / total * p
    return out
