"""`World`: the seeded generator of labelled documents.

A document is ``<bos> segment segment ... <eos>``. Its latent ``z`` (kind and topic) is
drawn first; then segments (sentences or one QA item) follow until the stop probability
fires. Every token carries a label dict; see :mod:`.labels` for the schema.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from interp.world.config import DEFAULT_CONFIG, WorldConfig
from interp.world.facts import FactBase
from interp.world.grammar import Grammar, Z
from interp.world.lexicon import Lexicon

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


@dataclass
class Doc:
    """One sampled document: words, one label dict per word, and per-segment metadata."""

    tokens: list[str]
    labels: list[dict]
    z: Z
    segments: list[dict] = field(default_factory=list)  # per segment: latent, span, labels, meta

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)


def _draw(options, rng: random.Random):
    """One item from ``[(item, prob), ...]``."""
    r, acc = rng.random(), 0.0
    for item, p in options:
        acc += p
        if r < acc:
            return item
    return options[-1][0]


class World:
    """A planted world: lexicon, fact base and grammar, all fixed by ``config.seed``.

    >>> world = World()
    >>> doc = world.sample_doc(random.Random(0))
    >>> doc.text.startswith("<bos>")
    True
    """

    def __init__(self, config: WorldConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.lexicon = Lexicon.build(config.seed, config.n_entities, config.n_languages, config.n_aliases)
        self.facts = FactBase(self.lexicon, config.seed, config.land_zipf)
        self.grammar = Grammar(config, self.lexicon, self.facts)

    @cached_property
    def vocab(self) -> list[str]:
        """Every token, special tokens first; a token's id is its index here."""
        return list(self.lexicon.vocab)

    # -- sampling ------------------------------------------------------------------------
    def sample_doc(self, rng: random.Random, z: Z | None = None) -> Doc:
        """Sample one document (of latent ``z`` if given)."""
        g = self.grammar
        if z is None:
            z = _draw(g.doc_prior(), rng)
        doc_labels = g.doc_labels(z)
        tokens, labels = [BOS], [dict(doc_labels)]
        segments: list[dict] = []
        n_done = 0
        while not (n_done and rng.random() < g.p_stop(z, n_done)):
            u = _draw(g.segment_latents(z), rng)
            seg: dict = {}
            start = len(tokens)
            program = g.program(z, u, seg, tokens)
            step = next(program)
            while True:
                token = step.dist.sample(rng)
                tokens.append(token)
                labels.append({**doc_labels, **step.labels_for(token)})
                try:
                    step = program.send(token)
                except StopIteration:
                    break
            meta = seg.pop("meta", {})
            for lab in labels[start:]:
                lab.update(seg)
            segments.append({"u": u, "start": start, "end": len(tokens), "labels": seg, "meta": meta})
            n_done += 1
        tokens.append(EOS)
        labels.append(dict(doc_labels))
        return Doc(tokens, labels, z, segments)

    def sample_docs(self, n: int, seed: int = 0, kind: str | None = None, topic: str | None = None) -> list[Doc]:
        """``n`` documents from sampling seed ``seed``; optionally only one kind (and topic)."""
        return list(self.iter_docs(n, seed, kind, topic))

    def iter_docs(self, n: int | None, seed: int = 0, kind: str | None = None,
                  topic: str | None = None) -> Iterator[Doc]:
        rng = random.Random(f"docs-{self.config.seed}-{seed}")
        prior = self.grammar.doc_prior()
        if kind is not None:
            prior = [(z, p) for z, p in prior if z[0] == kind and (topic is None or z[1] == topic)]
            if not prior:
                raise ValueError(f"no documents of kind={kind!r} topic={topic!r}; kinds are topical, fact, qa "
                                 f"and topics are {', '.join(self.grammar.topics)}")
            total = sum(p for _, p in prior)
            prior = [(z, p / total) for z, p in prior]
        i = 0
        while n is None or i < n:
            yield self.sample_doc(rng, _draw(prior, rng))
            i += 1
