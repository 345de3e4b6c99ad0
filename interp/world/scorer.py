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
            mixture: dict[str, float] = {}
            for h in hyps:
                w = h.weight / total
                for tok, p in h.dist.items():
                    mixture[tok] = mixture.get(tok, 0.0) + w * p
            entropies.append(-sum(p * math.log(p) for p in mixture.values() if p > 0))
        survivors = []
        p_token = 0.0
        for h in hyps:
            p = h.dist.prob(token)
            if p > 0:
                p_token += h.weight * p
                h.weight *= p
                survivors.append(h)
        if p_token <= 0:
            raise ValueError(f"the generator cannot produce {token!r} at position {t} after "
                             f"{' '.join(tokens[max(0, t - 8):t])!r}")
        logprobs.append(math.log(p_token / total))
        if token == EOS:
            break
        seen.append(token)
        hyps = _advance(world, survivors, token, seen)
        # Renormalise now and then so long documents do not underflow.
        scale = sum(h.weight for h in hyps)
        for h in hyps:
            h.weight /= scale
    return DocScore(logprobs, entropies)


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
