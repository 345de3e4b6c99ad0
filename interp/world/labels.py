"""The per-token label schema, and turning documents into ``[batch, pos]`` tensors.

Two sources of labels:

* contextual labels, set by the grammar while it generates (topic, sentiment, QA part...);
  stored in each :class:`~.generator.Doc` as readable strings;
* lexical labels, a property of the word itself (word class, hierarchy nodes, polarity,
  entity/relation ids), looked up from per-vocabulary tables.

Categorical labels become int64 tensors with ``-1`` where the label does not apply (and on
padding); flags become bool tensors; multi-hot labels get a trailing dimension.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from interp.world.facts import CHAINS
from interp.world.generator import PAD, Doc, World
from interp.world.grammar import DOC_KINDS, ITEM_TYPES, QA_PARTS, TEMPLATES
from interp.world.lexicon import (
    CATEGORY_VERBS, COLORS, EVALUATIONS, FUNCTION_WORDS, HIERARCHY_NODES, HIERARCHY_PARENT,
    INSTRUCTIONS, MEMBER_PARENT, PUNCTUATION, RELATIONS, SENTIMENT_ADJECTIVES, SENTIMENT_VERBS, SENTIMENTS, SOURCES,
    SPECIAL_TOKENS, TOPICS, hierarchy_ancestors, topic_members,
)

ROLES = ["subject", "object", "adjective", "verb", "place", "ending", "tail", "category", "relation", "entity",
         "value", "source", "noise", "alias", "answer", "hop", "key"]
ANSWER_SOURCES = ["memory", "context", "both", "none"]
WORD_CLASSES = ["special", "punctuation", "function", "qa_word", "agent", "object", "place", "verb", "adjective",
                "sentiment_adjective", "sentiment_verb", "evaluation", "member", "category", "category_verb",
                "relation", "entity", "city", "color", "language", "alias"]
# The word classes that carry a topic (each topic has its own); function words, punctuation
# and sentiment words are shared by every topic and cannot show one.
TOPIC_WORD_CLASSES = ("agent", "object", "place", "verb", "adjective")


def topic_words(word_class: torch.Tensor) -> torch.Tensor:
    """Bool mask, same shape as ``word_class`` (a ``word_class`` label tensor): content words."""
    return torch.isin(word_class, torch.tensor([WORD_CLASSES.index(c) for c in TOPIC_WORD_CLASSES]))


@dataclass(frozen=True)
class LabelSpec:
    """One label: its kind ('category', 'flag', 'int', 'multi', 'float') and value names."""

    name: str
    kind: str
    names: tuple[str, ...] = ()
    doc: str = ""


# Contextual labels (set by the grammar).
CONTEXT_LABELS = [
    LabelSpec("doc_kind", "category", tuple(DOC_KINDS), "kind of document the token is in"),
    LabelSpec("topic", "category", tuple(TOPICS), "topic of a topical document (all its tokens)"),
    LabelSpec("sentiment", "category", tuple(SENTIMENTS), "sentiment of the topical sentence (all its tokens)"),
    LabelSpec("template", "category", tuple(TEMPLATES), "template of the topical sentence"),
    LabelSpec("role", "category", tuple(ROLES), "grammatical role of the token in its segment"),
    LabelSpec("item_type", "category", tuple(ITEM_TYPES), "QA item type (all tokens of the item)"),
    LabelSpec("instruction", "category", tuple(INSTRUCTIONS),
              "QA rendering: ignore (PK only), use (CK only), consider (base)"),
    LabelSpec("source", "category", tuple(SOURCES), "whether the QA context comes from an expert or a rumor"),
    LabelSpec("qa_part", "category", tuple(QA_PARTS), "which part of a QA item the token is in"),
    LabelSpec("answer_source", "category", tuple(ANSWER_SOURCES),
              "where the QA answer comes from (answer and explanation tokens)"),
    LabelSpec("fact_id", "int", (), "fact id (land*5+relation) on fact values, context values and QA answers"),
    LabelSpec("hops", "int", (), "look-ups a fact sentence composes: 1, 2 or 3 (all its tokens)"),
    LabelSpec("chain", "category", tuple(CHAINS),
              "how a fact sentence reaches its land: direct, via the neighbor, the capital, or both"),
    LabelSpec("bridge", "int", (), "the unwritten land whose relation a multi-hop fact sentence asks"),
    LabelSpec("bridge_first", "int", (), "three-hop sentences: the unwritten land the capital names"),
    LabelSpec("is_fact_answer", "flag", (), "the token is the fact base's value of fact_id"),
    LabelSpec("is_answer", "flag", (), "the token is the answer of a QA item"),
]
# Lexical labels (a property of the word).
LEXICAL_LABELS = [
    LabelSpec("word_class", "category", tuple(WORD_CLASSES), "class of the word"),
    LabelSpec("polarity", "int", (), "+1 positive word, -1 negative word, 0 otherwise"),
    LabelSpec("entity", "int", (), "index of the land the word names, -1 otherwise"),
    LabelSpec("relation", "category", tuple(RELATIONS), "relation the word names"),
    LabelSpec("hierarchy", "multi", tuple(HIERARCHY_NODES),
              "hierarchy nodes active: the word's node and all its ancestors"),
    LabelSpec("word_topics", "multi", tuple(TOPICS), "topics whose lexicon contains the word"),
]
SCORE_LABELS = [
    LabelSpec("true_logprob", "float", (), "log p(token | previous tokens) under the generator (nan at <bos>)"),
    LabelSpec("true_entropy", "float", (), "entropy of the generator's distribution for this token (nats)"),
]
SCHEMA = {spec.name: spec for spec in CONTEXT_LABELS + LEXICAL_LABELS + SCORE_LABELS}


def _word_class(world: World, w: str) -> str:
    lex = world.lexicon
    if w in SPECIAL_TOKENS:
        return "special"
    if w in PUNCTUATION:
        return "punctuation"
    if w in MEMBER_PARENT:
        return "member"
    if w in HIERARCHY_PARENT:
        return "category"
    for cls, table in (("sentiment_adjective", SENTIMENT_ADJECTIVES), ("sentiment_verb", SENTIMENT_VERBS),
                       ("evaluation", EVALUATIONS), ("category_verb", CATEGORY_VERBS)):
        if any(w in ws for ws in table.values()):
            return cls
    for cls, slot in (("agent", "agents"), ("object", "objects"), ("place", "places"), ("verb", "verbs"),
                      ("adjective", "adjectives")):
        if any(w in t[slot] for t in TOPICS.values()):
            return cls
    for cls, ws in (("relation", RELATIONS), ("color", COLORS), ("entity", lex.entities), ("city", lex.cities),
                    ("language", lex.languages), ("alias", lex.aliases)):
        if w in ws:
            return cls
    if w in FUNCTION_WORDS:
        return "function"
    return "qa_word"


@lru_cache(maxsize=8)
def lexical_tables(world: World) -> dict[str, torch.Tensor]:
    """Per-vocabulary-id tables of the lexical labels (index them with token ids)."""
    vocab = world.vocab
    v = len(vocab)
    word_class = torch.tensor([WORD_CLASSES.index(_word_class(world, w)) for w in vocab])
    polarity = torch.zeros(v, dtype=torch.long)
    for table in (SENTIMENT_ADJECTIVES, SENTIMENT_VERBS, EVALUATIONS):
        for sign, key in ((1, "positive"), (-1, "negative")):
            for w in table[key]:
                polarity[vocab.index(w)] = sign
    ent_index = {e: i for i, e in enumerate(world.lexicon.entities)}
    entity = torch.tensor([ent_index.get(w, -1) for w in vocab])
    relation = torch.tensor([RELATIONS.index(w) if w in RELATIONS else -1 for w in vocab])
    hierarchy = torch.zeros(v, len(HIERARCHY_NODES), dtype=torch.bool)
    node_index = {n: i for i, n in enumerate(HIERARCHY_NODES)}
    for i, w in enumerate(vocab):
        if w in node_index:
            for node in hierarchy_ancestors(w):
                hierarchy[i, node_index[node]] = True
    topics = list(TOPICS)
    word_topics = torch.zeros(v, len(topics), dtype=torch.bool)
    for j, t in enumerate(topics):
        words = {w for slot in ("agents", "objects", "places", "verbs", "adjectives") for w in TOPICS[t][slot]}
        words |= set(topic_members(t))
        for w in words:
            word_topics[vocab.index(w), j] = True
    return {"word_class": word_class, "polarity": polarity, "entity": entity, "relation": relation,
            "hierarchy": hierarchy, "word_topics": word_topics}


def encode_docs(world: World, docs: list[Doc], pad_to: int | None = None,
                scores: list | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Documents -> ``tokens [batch, pos]`` (right-padded with ``<pad>``) and label tensors.

    ``scores`` (from :func:`.scorer.score_doc`, one per doc) adds ``true_logprob`` and
    ``true_entropy``, aligned so that position ``t`` holds the figure for predicting token
    ``t`` from tokens ``< t``.
    """
    index = {w: i for i, w in enumerate(world.vocab)}
    width = max(len(d) for d in docs) if pad_to is None else pad_to
    if any(len(d) > width for d in docs):
        raise ValueError(f"a document has {max(len(d) for d in docs)} tokens, more than pad_to={width}")
    b = len(docs)
    tokens = torch.full((b, width), index[PAD], dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    for spec in CONTEXT_LABELS:
        if spec.kind == "flag":
            out[spec.name] = torch.zeros(b, width, dtype=torch.bool)
        else:
            out[spec.name] = torch.full((b, width), -1, dtype=torch.long)
    lookups = {spec.name: {n: i for i, n in enumerate(spec.names)} for spec in CONTEXT_LABELS if spec.names}
    for row, doc in enumerate(docs):
        tokens[row, : len(doc)] = torch.tensor([index[w] for w in doc.tokens])
        for col, labels in enumerate(doc.labels):
            for key, value in labels.items():
                if key not in out or value is None:
                    continue
                if key in lookups:
                    value = lookups[key][value]
                out[key][row, col] = value
    tables = lexical_tables(world)
    pad = tokens == index[PAD]
    for name, table in tables.items():
        values = table[tokens]
        if values.dtype == torch.bool:
            values[pad] = False
        else:
            values = values.masked_fill(pad, -1 if name != "polarity" else 0)
        out[name] = values
    if scores is not None:
        lp = torch.full((b, width), float("nan"))
        ent = torch.full((b, width), float("nan"))
        for row, s in enumerate(scores):
            lp[row, 1: 1 + len(s.logprob)] = torch.tensor(s.logprob)
            if s.entropy:
                ent[row, 1: 1 + len(s.entropy)] = torch.tensor(s.entropy)
        out["true_logprob"], out["true_entropy"] = lp, ent
    return tokens, out


def describe_schema() -> str:
    """A readable table of every label."""
    lines = []
    for spec in SCHEMA.values():
        values = f" [{', '.join(spec.names)}]" if spec.names and len(spec.names) <= 12 else (
            f" [{len(spec.names)} names]" if spec.names else "")
        lines.append(f"{spec.name:15s} {spec.kind:8s} {spec.doc}{values}")
    return "\n".join(lines)
