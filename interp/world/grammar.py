"""The grammar: one small program per kind of segment (topical sentence, fact, QA item).

A program is a Python generator. It yields :class:`Emit` steps (a next-token distribution
plus the labels of whatever token gets chosen) and receives the chosen token back. It never
draws random numbers itself, so the same program serves three drivers:

* the sampler (draws each token from the step's distribution),
* the scorer (reads the probability of an observed token; see :mod:`.scorer`),
* the re-renderer (replays an item with its instruction swapped; see :mod:`.datasets`).

Choices that are not visible as a token (a sentence's sentiment, a QA item's type) are the
segment *latent* ``u``, drawn by the driver from :meth:`Grammar.segment_latents`; the scorer
sums over them. Everything a program does after a choice depends only on the tokens
emitted so far and on ``(z, u)``, which keeps the scorer exact.
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from interp.world.config import WorldConfig
from interp.world.dist import Dist, mix, point, uniform
from interp.world.facts import CHAINS, FactBase
from interp.world.lexicon import (
    CATEGORY_VERBS, EVALUATIONS, HIERARCHY_PARENT, INSTRUCTION_PHRASES, INSTRUCTIONS,
    SENTIMENT_ADJECTIVES, SENTIMENT_VERBS, SENTIMENTS, SOURCES, TOPICS, UNKNOWN, Lexicon, hierarchy_ancestors,
    topic_categories, topic_members,
)

DOC_KINDS = ["topical", "fact", "qa"]
TEMPLATES = ["action", "creature", "taxonomy"]
ITEM_TYPES = ["supportive", "conflicting", "novel", "irrelevant", "noise", "complementary"]
QA_PARTS = ["instruction", "context", "question", "answer", "explanation"]

# Doc-level latent: (kind, topic or None). Segment latent: depends on the kind.
Z = tuple[str, Any]


@dataclass(frozen=True)
class Emit:
    """One step of a program: the next token's distribution and that token's labels."""

    dist: Dist
    labels: dict = field(default_factory=dict)
    # A step whose token may be one of two word classes (an adjective or the noun itself;
    # a land or the "the" that opens a chain) names the role per alternative.
    roles: tuple[tuple[frozenset, str], ...] = ()

    def labels_for(self, token: str) -> dict:
        """The labels of ``token`` when this step emits it."""
        for words, role in self.roles:
            if token in words:
                return {**self.labels, "role": role}
        return self.labels


Program = Generator[Emit, str, None]


def _fixed(tokens: list[str], labels: dict | None = None) -> Program:
    """Emit a fixed run of tokens (probability 1 each)."""
    for t in tokens:
        yield Emit(point(t), dict(labels or {}))


@dataclass(frozen=True)
class QAState:
    """What a QA item's context said, and the question asked: enough to answer every rendering."""

    source: str
    stated: tuple[tuple[str, str, str], ...]     # (entity, relation, value) facts in the context
    aliases: tuple[tuple[str, str], ...]         # (alias, entity) pairs in the context
    relation: str
    subject: str                                 # entity or alias the question names


def answer_for(facts: FactBase, state: QAState, instruction: str) -> tuple[str, str]:
    """``(answer word, source)`` for one rendering; source is memory/context/both/none.

    * ignore   (PK only): the memorised value, or "unknown" for a name memory does not know;
    * use      (CK only): the value the context states, or "unknown";
    * consider (base):    both agree -> that value ("both"); they conflict -> the context if
      the passage comes from an expert, memory if it is a rumor; a land only the context
      knows -> the context's value; an alias resolved through the context -> memory's value
      for the entity ("both": each source gave half).
    """
    stated = {(e, r): v for e, r, v in state.stated}
    alias_of = dict(state.aliases)
    known = state.subject in facts._entity_index
    memory = facts.value(state.subject, state.relation) if known else None
    context = stated.get((state.subject, state.relation))
    if instruction == "ignore":
        return (memory, "memory") if memory is not None else (UNKNOWN, "none")
    if instruction == "use":
        return (context, "context") if context is not None else (UNKNOWN, "none")
    if not known:
        if context is not None:                 # a land only the context knows
            return context, "context"
        entity = alias_of.get(state.subject)
        if entity is None:
            return UNKNOWN, "none"
        return facts.value(entity, state.relation), "both"
    if context is None:
        return memory, "memory"
    if context == memory:
        return memory, "both"
    return (context, "context") if state.source == "expert" else (memory, "memory")


class Grammar:
    """The programs of one world, with their distributions cached."""

    def __init__(self, config: WorldConfig, lexicon: Lexicon, facts: FactBase) -> None:
        self.cfg = config
        self.lex = lexicon
        self.facts = facts
        self.topics = list(TOPICS)
        self.content_words = tuple(self._content_words())
        self._land_names = frozenset(facts.entities)

    # -- doc level --------------------------------------------------------------------------
    def doc_prior(self) -> list[tuple[Z, float]]:
        c = self.cfg
        out: list[tuple[Z, float]] = [(("topical", t), c.p_topical / len(self.topics)) for t in self.topics]
        return out + [(("fact", None), c.p_fact), (("qa", None), c.p_qa)]

    def doc_labels(self, z: Z) -> dict:
        return {"doc_kind": z[0], "topic": z[1]}

    def p_stop(self, z: Z, n_done: int) -> float:
        """Probability that the document ends after ``n_done`` segments."""
        if n_done == 0:
            return 0.0
        kind = z[0]
        if kind == "topical":
            return 1.0 if n_done >= self.cfg.max_topical_sentences else self.cfg.p_topical_stop
        if kind == "fact":
            return 1.0 if n_done >= self.cfg.max_fact_sentences else self.cfg.p_fact_stop
        return 1.0  # one QA item per document

    @lru_cache(maxsize=None)
    def segment_latents(self, z: Z) -> tuple[tuple[Any, float], ...]:
        """The segment latent ``u`` and its prior, for a document with latent ``z``."""
        kind, topic = z
        if kind == "topical":
            has_members = bool(topic_members(topic))
            out = []
            for s, ps in zip(SENTIMENTS, self.cfg.sentiment_prior):
                if not has_members:
                    weights = {"action": 1.0}
                elif s == "neutral":
                    weights = {"action": 0.35, "creature": 0.35, "taxonomy": 0.30}
                else:
                    weights = {"action": 0.55, "creature": 0.45}
                out += [((s, t), ps * w) for t, w in weights.items()]
            return tuple(out)
        if kind == "fact":
            return ((None, 1.0),)
        out = []
        for typ, pt in zip(ITEM_TYPES, self.cfg.item_type_prior):
            if typ in ("noise", "complementary"):
                out.append(((typ, 1, 0), pt))
                continue
            for k, pk in enumerate(self.cfg.context_sizes, start=1):
                positions = range(k) if typ in ("supportive", "conflicting", "novel") else range(1)
                out += [((typ, k, pos), pt * pk / len(positions)) for pos in positions]
        return tuple(out)

    def program(self, z: Z, u: Any, seg: dict, history: list[str]) -> Program:
        """The program of one segment. ``seg`` receives labels that hold for all its tokens;
        ``history`` is the document so far (a live list: the driver appends each token
        before sending it on), which topical sentences read to repeat earlier nouns."""
        kind, topic = z
        if kind == "topical":
            return self.topical_sentence(topic, u[0], u[1], seg, history)
        if kind == "fact":
            return self.fact_sentence(seg)
        return self.qa_item(*u, seg=seg)

    # -- topical sentences ----------------------------------------------------------------------
    @lru_cache(maxsize=None)
    def _adjectives(self, topic: str, sentiment: str) -> Dist:
        plain = uniform(tuple(TOPICS[topic]["adjectives"]))
        if sentiment == "neutral":
            return plain
        p = self.cfg.p_sentiment_adjective
        return mix([(p, uniform(tuple(SENTIMENT_ADJECTIVES[sentiment]))), (1 - p, plain)])

    @lru_cache(maxsize=4096)
    def _nouns(self, nouns: tuple[str, ...], mentioned: tuple[str, ...]) -> Dist:
        """A noun, often one the document already mentioned (why copying pays off)."""
        if not mentioned:
            return uniform(nouns)
        p = self.cfg.p_repeat
        return mix([(p, uniform(mentioned)), (1 - p, uniform(nouns))])

    @lru_cache(maxsize=4096)
    def _adjective_or(self, topic: str, sentiment: str, nouns: tuple[str, ...], mentioned: tuple[str, ...]) -> Dist:
        p = self.cfg.p_adjective
        return mix([(p, self._adjectives(topic, sentiment)), (1 - p, self._nouns(nouns, mentioned))])

    @lru_cache(maxsize=None)
    def _action_verbs(self, topic: str, sentiment: str) -> Dist:
        plain = uniform(tuple(TOPICS[topic]["verbs"]))
        if sentiment == "neutral":
            return plain
        p = self.cfg.p_sentiment_verb
        return mix([(p, uniform(tuple(SENTIMENT_VERBS[sentiment]))), (1 - p, plain)])

    @lru_cache(maxsize=None)
    def _creature_verbs(self, member: str) -> Dist:
        # Nearest category gets the most mass; the root the least. A 3-level chain (fruit ->
        # food) and a 4-level chain (bird -> animal -> living) both sum to one.
        chain = hierarchy_ancestors(member)[1:]
        level_weights = [0.5, 0.3, 0.2][: len(chain)]
        return mix([(w, uniform(tuple(CATEGORY_VERBS[node]))) for w, node in zip(level_weights, chain)])

    @lru_cache(maxsize=None)
    def _ending(self, sentiment: str, need_tail: bool, allow_place: bool) -> Dist:
        """After the last noun/verb: a place phrase, the evaluative tail, or the full stop."""
        if sentiment == "neutral":
            p_tail = 0.0
        else:
            p_tail = 1.0 if need_tail else self.cfg.p_tail_optional
        close = mix([(p_tail, point(",")), (1 - p_tail, point("."))])
        if not allow_place:
            return close
        p = self.cfg.p_place
        return mix([(p, uniform(("in", "near"))), (1 - p, close)])

    def _noun_phrase(self, topic: str, sentiment: str, nouns: tuple[str, ...], role: str,
                     state: dict, history: list[str]) -> Generator[Emit, str, str]:
        """``[ADJ] NOUN`` (the determiner is emitted by the caller). Returns the noun."""
        noun_set = frozenset(nouns)
        mentioned = tuple(w for w in dict.fromkeys(history) if w in noun_set)
        tok = yield Emit(self._adjective_or(topic, sentiment, nouns, mentioned), {"role": "adjective"},
                         ((noun_set, role),))
        if tok not in noun_set:  # it was the adjective
            state["shown"] |= sentiment != "neutral" and tok in SENTIMENT_ADJECTIVES[sentiment]
            tok = yield Emit(self._nouns(nouns, mentioned), {"role": role})
        return tok

    def topical_sentence(self, topic: str, sentiment: str, template: str, seg: dict,
                         history: list[str]) -> Program:
        seg.update(sentiment=sentiment, template=template)
        if template == "taxonomy":
            yield Emit(point("a"))
            child = yield Emit(self._taxonomy_children(topic), {"role": "subject"})
            yield from _fixed(["is", "a", "kind", "of"])
            yield Emit(self._taxonomy_parents(child), {"role": "category"})
            yield Emit(point("."))
            return
        state = {"shown": False}
        yield Emit(point("the"))
        if template == "action":
            agents = tuple(TOPICS[topic]["agents"])
            yield from self._noun_phrase(topic, sentiment, agents, "subject", state, history)
            verb = yield Emit(self._action_verbs(topic, sentiment), {"role": "verb"})
            state["shown"] |= sentiment != "neutral" and verb in SENTIMENT_VERBS[sentiment]
            yield Emit(point("the"))
            objects = tuple(TOPICS[topic]["objects"]) + tuple(topic_members(topic))
            yield from self._noun_phrase(topic, sentiment, objects, "object", state, history)
        else:
            member = yield from self._noun_phrase(topic, sentiment, tuple(topic_members(topic)), "subject", state,
                                                  history)
            yield Emit(self._creature_verbs(member), {"role": "verb"})
        tok = yield Emit(self._ending(sentiment, not state["shown"], True), {"role": "ending"})
        if tok in ("in", "near"):
            yield Emit(point("the"), {"role": "ending"})
            yield Emit(uniform(tuple(TOPICS[topic]["places"])), {"role": "place"})
            tok = yield Emit(self._ending(sentiment, not state["shown"], False), {"role": "ending"})
        if tok == ",":
            yield from _fixed(["and", "it", "was"], {"role": "tail"})
            yield Emit(uniform(tuple(EVALUATIONS[sentiment])), {"role": "tail"})
            yield Emit(point("."))

    @lru_cache(maxsize=None)
    def _taxonomy_children(self, topic: str) -> Dist:
        children = [m for m in topic_members(topic)] + [c for c in topic_categories(topic)
                                                        if HIERARCHY_PARENT[c] is not None]
        return uniform(tuple(children))

    @lru_cache(maxsize=None)
    def _taxonomy_parents(self, child: str) -> Dist:
        ancestors = hierarchy_ancestors(child)[1:]
        if len(ancestors) == 1:
            return point(ancestors[0])
        return mix([(0.7, point(ancestors[0])), (0.3, uniform(tuple(ancestors[1:])))])

    # -- fact sentences --------------------------------------------------------------------------
    @lru_cache(maxsize=None)
    def _lands(self, exclude: frozenset = frozenset()) -> Dist:
        """A land, weighted by its fame (``FactBase.land_weights``)."""
        return Dist({e: w for e, w in self.facts.land_weights.items() if e not in exclude})

    @lru_cache(maxsize=None)
    def _capital_keys(self) -> Dist:
        """The capital that names a land in ``the land whose capital is CITY`` (land's fame)."""
        return Dist({self.facts.value(e, "capital"): w for e, w in self.facts.land_weights.items()})

    @lru_cache(maxsize=None)
    def _chain_prior(self, relation: str) -> dict[str, float]:
        """P(chain | relation); "the capital of the land whose capital is C" is never asked."""
        prior = dict(zip(CHAINS, self.cfg.chain_prior))
        if relation == "capital":
            prior["capital"] = 0.0
        total = sum(prior.values())
        return {c: p / total for c, p in prior.items()}

    @lru_cache(maxsize=None)
    def _chain_step(self, relation: str, step: str) -> Dist:
        """The next token of a chain, marginalised over the chains still possible."""
        p = self._chain_prior(relation)
        if step == "after_of":            # a land (one look-up) or "the" (a chain)
            return mix([(p["direct"], self._lands()), (1 - p["direct"], point("the"))])
        if step == "after_the":           # "neighbor" or "land"
            return mix([(p["neighbor"] + p["capital_neighbor"], point("neighbor")), (p["capital"], point("land"))])
        # after "the neighbor of": a land, or "the land whose capital is ..."
        return mix([(p["neighbor"], self._lands()), (p["capital_neighbor"], point("the"))])

    def fact_sentence(self, seg: dict) -> Program:
        """``the REL of ENT is VAL .``, or a chain of look-ups whose bridges are never written:
        ``the REL of the neighbor of ENT``, ``the REL of the land whose capital is CITY``,
        ``the REL of the neighbor of the land whose capital is CITY``."""
        lands = self._land_names
        hop = {"role": "hop"}
        yield Emit(point("the"))
        relation = yield Emit(uniform(tuple(self.facts.relations)), {"role": "relation"})
        yield Emit(point("of"))
        tok = yield Emit(self._chain_step(relation, "after_of"), hop, ((lands, "entity"),))
        if tok != "the":
            chain, anchor = "direct", tok
        else:
            tok = yield Emit(self._chain_step(relation, "after_the"), hop)
            chain = "capital"
            if tok == "neighbor":
                yield Emit(point("of"), hop)
                tok = yield Emit(self._chain_step(relation, "after_neighbor_of"), hop, ((lands, "entity"),))
                chain = "neighbor" if tok != "the" else "capital_neighbor"
                if tok == "the":
                    yield Emit(point("land"), hop)
            if chain != "neighbor":
                yield from _fixed(["whose", "capital", "is"], hop)
                tok = yield Emit(self._capital_keys(), {"role": "key"})
            anchor = tok
        yield Emit(point("is"))
        found = self.facts.resolve(relation, chain, anchor)
        index = self.facts._entity_index
        seg.update(hops=found.hops, chain=chain,
                   bridge=index[found.bridges[-1]] if found.bridges else None,
                   bridge_first=index[found.bridges[0]] if len(found.bridges) > 1 else None)
        yield Emit(point(found.value), {"role": "value", "is_fact_answer": True,
                                        "fact_id": self.facts.fact_id(found.target, relation)})
        yield Emit(point("."))

    # -- QA items ---------------------------------------------------------------------------------
    @lru_cache(maxsize=None)
    def _context_value(self, entity: str, relation: str, role: str) -> Dist:
        """The value a context sentence states: true (supportive), different (conflicting),
        or, for a distractor, mostly true."""
        values = tuple(self.facts.values(relation))
        if role == "novel":                      # memory knows nothing of this land
            return uniform(values)
        truth = self.facts.value(entity, relation)
        if role == "supportive":
            return point(truth)
        if role == "conflicting":
            return uniform(tuple(v for v in values if v != truth))
        p = self.cfg.p_distractor_true
        return mix([(p, point(truth)), (1 - p, uniform(values))])

    def _content_words(self) -> list[str]:
        words: list[str] = []
        for t in TOPICS.values():
            for slot in ("agents", "objects", "places", "verbs", "adjectives"):
                words += [w for w in t[slot] if w not in words]
        return words

    @lru_cache(maxsize=None)
    def _noise_word(self, n_words: int) -> Dist:
        words = uniform(self.content_words)
        if n_words < 2:
            return words
        if n_words >= self.cfg.max_noise_words:
            return point(".")
        p = self.cfg.p_noise_stop
        return mix([(p, point(".")), (1 - p, words)])

    def qa_item(self, item_type: str, k: int, pos: int, seg: dict) -> Program:
        seg.update(item_type=item_type)
        part = {"qa_part": "instruction"}
        instruction = yield Emit(uniform(tuple(INSTRUCTIONS)), dict(part))
        seg["instruction"] = instruction
        yield from _fixed(INSTRUCTION_PHRASES[instruction][1:], part)

        part = {"qa_part": "context"}
        yield from _fixed(["context", "("], part)
        source = yield Emit(uniform(tuple(SOURCES)), dict(part, role="source"))
        seg["source"] = source
        yield from _fixed([")", ":"], part)
        stated: list[tuple[str, str, str]] = []
        aliases: list[tuple[str, str]] = []
        if item_type == "noise":
            n_words = 0
            while True:
                tok = yield Emit(self._noise_word(n_words), dict(part, role="noise"))
                if tok == ".":
                    break
                n_words += 1
        elif item_type == "complementary":
            entity = yield Emit(self._lands(), dict(part, role="entity"))
            yield from _fixed(["is", "also", "called"], part)
            alias = yield Emit(uniform(tuple(self.lex.aliases)), dict(part, role="alias"))
            yield Emit(point("."), dict(part))
            aliases.append((alias, entity))
        else:
            used: set[str] = set()
            for i in range(k):
                yield Emit(point("the"), dict(part))
                relation = yield Emit(uniform(tuple(self.facts.qa_relations)), dict(part, role="relation"))
                yield Emit(point("of"), dict(part))
                novel = item_type == "novel" and i == pos
                names = uniform(tuple(self.lex.aliases)) if novel else self._lands(frozenset(used))
                entity = yield Emit(names, dict(part, role="entity"))
                used.add(entity)
                yield Emit(point("is"), dict(part))
                role = item_type if (item_type in ("supportive", "conflicting", "novel") and i == pos) else "distractor"
                fid = -1 if novel else self.facts.fact_id(entity, relation)
                value = yield Emit(self._context_value(entity, relation, role), dict(part, role="value", fact_id=fid))
                yield Emit(point("."), dict(part))
                stated.append((entity, relation, value))

        part = {"qa_part": "question"}
        yield from _fixed(["question", ":"], part)
        if item_type in ("supportive", "conflicting", "novel"):
            subject, relation, _ = stated[pos]
            yield Emit(point(relation), dict(part, role="relation"))
            yield Emit(point("of"), dict(part))
            yield Emit(point(subject), dict(part, role="entity"))
        else:
            relation = yield Emit(uniform(tuple(self.facts.qa_relations)), dict(part, role="relation"))
            yield Emit(point("of"), dict(part))
            if item_type == "complementary":
                subject = aliases[0][0]
                yield Emit(point(subject), dict(part, role="alias"))
            else:
                # A question the context does not answer: any land whose `relation` it did not state.
                said = frozenset(e for e, r, _ in stated if r == relation)
                subject = yield Emit(self._lands(said), dict(part, role="entity"))
        yield from _fixed(["?", "answer", ":"], part)

        state = QAState(source, tuple(stated), tuple(aliases), relation, subject)
        answers = {r: answer_for(self.facts, state, r) for r in INSTRUCTIONS}
        seg["meta"] = {"answers": {r: a for r, (a, _) in answers.items()},
                       "answer_sources": {r: src for r, (_, src) in answers.items()},
                       "relation": relation, "subject": subject}
        answer, source_used = answers[instruction]
        known = subject in self.facts._entity_index
        entity = subject if known else dict(aliases).get(subject)
        fid = self.facts.fact_id(entity, relation) if entity is not None else -1
        labels = {"qa_part": "answer", "is_answer": True, "fact_id": fid, "role": "answer",
                  "answer_source": source_used,
                  "is_fact_answer": entity is not None and answer == self.facts.value(entity, relation)}
        yield Emit(point(answer), labels)
        part = {"qa_part": "explanation", "answer_source": source_used}
        if answer != UNKNOWN:
            yield from _fixed([",", "from", source_used], part)
        yield Emit(point("."), dict(part))
