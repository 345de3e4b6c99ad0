"""Concept labels per store row, for matching latents to concepts by AUROC.

Two sources:

* :class:`RowLabels` — the caller's ``{concept: [n_rows] 0/1 tensor}``, aligned with the store;
* :class:`WorldTokenLabels` — on the world model, the planted labels read back from the
  stored tokens (see ``interp/world/WORLD.md``): the *token* labels of each row's own word
  (``word_class``, ``polarity``, ``relation``, ``hierarchy``, ``word_topics``) through the
  world's per-vocabulary tables, and the *document* labels of the text around it
  (``topic``, ``doc_kind``, ``sentiment``, ``qa_part``), as far as the window up to that
  row shows them (:func:`window_topics`, :func:`window_document_labels`). They need nothing
  but the stored tokens, so they stream.

Document labels are causal: a row's label depends on the tokens up to it, as the model's
activation there does, so a sentence's sentiment is labelled from its first sentiment word
on and a document's kind from the first word that shows it. What they label agrees with
the generator's own labels on at least 98% of tokens (tests/test_dashboards.py checks this).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.errors import InterpError

# Words only fact and QA documents use (relations, invented names, QA words): once one is seen
# the document is not topical. Classes from interp.world.labels.WORD_CLASSES.
NON_TOPICAL_CLASSES = ("relation", "entity", "city", "language", "alias", "qa_word")
NON_TOPICAL_WORDS = ("question", "answer", "from")
# Words of QA items only (instructions, the context header, question and answer markers,
# explanations): one of them makes the document a QA item.
QA_ONLY_CLASSES = ("qa_word", "alias")
QA_ONLY_WORDS = ("given", "only", "also", "called", "question", "answer", "from", "(", ")", ":", "?")
INSTRUCTION_WORDS = ("ignore", "use", "consider")  # the first word of every QA item
FACT_ONLY_WORDS = ("neighbor", "land", "whose")  # multi-hop fact sentences; QA contexts never use them
FACT_OR_QA_CLASSES = ("relation", "entity", "city", "language", "color")
# Words only topical sentences use (function words of their templates, sentiment words).
TOPICAL_ONLY_WORDS = ("a", "in", "near", "and", "it", "was")
TOPICAL_ONLY_CLASSES = ("sentiment_adjective", "sentiment_verb", "evaluation")
DOC_KINDS = ("topical", "fact", "qa")
SENTIMENTS = ("positive", "negative")  # a neutral sentence never shows itself before its end
QA_PARTS = ("instruction", "context", "question", "answer", "explanation")
TOKEN, DOCUMENT, GIVEN = "token", "document", "given"  # where a concept's label comes from


class RowLabels:
    """Caller-given labels: ``{name: [n_rows]}`` tensors of 0/1 (or bool)."""

    def __init__(self, labels: dict[str, Any], n_rows: int) -> None:
        if not labels:
            raise InterpError("labels is empty; pass {concept_name: [n_rows] 0/1 tensor} or None")
        self.names = list(labels)
        self.scopes = [GIVEN] * len(self.names)
        self._columns = []
        for name, value in labels.items():
            t = torch.as_tensor(value).reshape(-1)
            if t.shape[0] != n_rows:
                raise InterpError(f"label {name!r} has {t.shape[0]} rows but the store has {n_rows}; "
                                  "labels must give one 0/1 value per store row, in store order")
            self._columns.append(t.bool())

    def chunk(self, store: Any, start: int, stop: int) -> torch.Tensor:
        return torch.stack([c[start:stop] for c in self._columns], dim=1)


@dataclass(frozen=True)
class WindowTables:
    """Per-vocabulary facts the window scans read (token id -> property)."""

    word_topics: list[set[int]]
    non_topical: list[bool]
    bos: int
    eos: int
    polarity: list[int]  # +1 / -1 sentiment words, else 0
    qa_only: frozenset[int]
    instruction: frozenset[int]
    fact_only: frozenset[int]
    fact_or_qa: frozenset[int]
    topical_only: frozenset[int]
    period: int
    context: int
    open_paren: int
    question: int
    answer: int
    colon: int

    @classmethod
    def of(cls, world: Any) -> WindowTables:
        from interp.world.labels import WORD_CLASSES, lexical_tables

        vocab = world.vocab
        t = lexical_tables(world)
        classes = [WORD_CLASSES[int(c)] for c in t["word_class"]]

        def ids(names: tuple[str, ...] = (), of_classes: tuple[str, ...] = ()) -> frozenset[int]:
            return frozenset({vocab.index(w) for w in names} | {i for i, c in enumerate(classes) if c in of_classes})

        non_topical = [c in NON_TOPICAL_CLASSES for c in classes]
        for w in NON_TOPICAL_WORDS:
            non_topical[vocab.index(w)] = True
        return cls(
            word_topics=[set(row.nonzero()[:, 0].tolist()) for row in t["word_topics"]],
            non_topical=non_topical, bos=vocab.index("<bos>"), eos=vocab.index("<eos>"),
            polarity=t["polarity"].tolist(),
            qa_only=ids(QA_ONLY_WORDS, QA_ONLY_CLASSES), instruction=ids(INSTRUCTION_WORDS),
            fact_only=ids(FACT_ONLY_WORDS), fact_or_qa=ids(of_classes=FACT_OR_QA_CLASSES),
            topical_only=ids(TOPICAL_ONLY_WORDS, TOPICAL_ONLY_CLASSES),
            period=vocab.index("."), context=vocab.index("context"), open_paren=vocab.index("("),
            question=vocab.index("question"), answer=vocab.index("answer"), colon=vocab.index(":"),
        )


class WorldTokenLabels:
    """The world's token labels of each row's word and the document labels of its window,
    as ``label:value`` concepts (``scopes`` says which of the two each is)."""

    def __init__(self, model: Any) -> None:
        from interp.world import World
        from interp.world.labels import WORD_CLASSES, lexical_tables
        from interp.world.lexicon import HIERARCHY_NODES, RELATIONS, TOPICS

        world = World()
        vocab = world.vocab
        ids = model.tokenizer.convert_tokens_to_ids(vocab)
        if ids != list(range(len(vocab))):
            raise InterpError("the model's tokenizer does not number the world's words as the world does; "
                              "pass labels= explicitly for this model")
        t = lexical_tables(world)
        columns: dict[str, torch.Tensor] = {}
        for i, name in enumerate(WORD_CLASSES):
            columns[f"word_class:{name}"] = t["word_class"] == i
        columns["polarity:positive"] = t["polarity"] > 0
        columns["polarity:negative"] = t["polarity"] < 0
        for i, name in enumerate(RELATIONS):
            columns[f"relation:{name}"] = t["relation"] == i
        for i, name in enumerate(HIERARCHY_NODES):
            columns[f"hierarchy:{name}"] = t["hierarchy"][:, i]
        for i, name in enumerate(TOPICS):
            columns[f"word_topics:{name}"] = t["word_topics"][:, i]
        self._table = torch.stack(list(columns.values()), dim=1)  # [vocab, token concepts]
        # Document labels: one block of columns per label, each value its own concept.
        self._documents = {"topic": list(TOPICS), "doc_kind": list(DOC_KINDS), "sentiment": list(SENTIMENTS),
                           "qa_part": list(QA_PARTS)}
        self.names = list(columns) + [f"{k}:{v}" for k, values in self._documents.items() for v in values]
        self.scopes = [TOKEN] * len(columns) + [DOCUMENT] * (len(self.names) - len(columns))
        self._tables = WindowTables.of(world)
        self._windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # seq -> (tokens, [pos, doc labels])

    def chunk(self, store: Any, start: int, stop: int) -> torch.Tensor:
        seq, pos = store.locate(torch.arange(start, stop))
        tokens = torch.empty(stop - start, dtype=torch.int64)
        doc = torch.empty(stop - start, len(self._documents), dtype=torch.int64)
        for s in seq.unique().tolist():
            sel = seq == s
            window, labels = self._window(store, s, start + int(sel.nonzero()[0, 0]))
            tokens[sel], doc[sel] = window[pos[sel]], labels[pos[sel]]
        out = torch.zeros(stop - start, len(self.names), dtype=torch.bool)
        inside = tokens < self._table.shape[0]
        out[inside, : self._table.shape[1]] = self._table[tokens[inside]]
        offset = self._table.shape[1]
        for k, values in enumerate(self._documents.values()):
            has = doc[:, k] >= 0
            out[has.nonzero()[:, 0], offset + doc[has, k]] = True
            offset += len(values)
        return out

    def _window(self, store: Any, seq: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq not in self._windows:
            if len(self._windows) > 64:  # chunks move forward through the store: old windows are done
                self._windows.clear()
            tokens = store.tokens_for(row).tokens
            tab, ids = self._tables, tokens.tolist()
            labels = {"topic": window_topics(ids, tab.word_topics, tab.non_topical, tab.bos, tab.eos),
                      **window_document_labels(ids, tab)}
            self._windows[seq] = (tokens, torch.tensor([labels[k] for k in self._documents]).T)
        return self._windows[seq]


def window_topics(tokens: list[int], word_topics: list[set[int]], non_topical: list[bool], bos: int,
                  eos: int) -> list[int]:
    """Per position, the topic of its document as far as the window shows it, else -1.

    A document starts after ``<bos>``/``<eos>``. Its topic is known once the topic words seen
    so far (each word's ``word_topics``) leave exactly one topic; a word that only fact and
    QA documents use, or words with no topic in common, mark it as not topical. Causal: a
    position's label depends on tokens up to it, as the model's activation there does. On
    world text it agrees with the generator's topic label on 99.7% of the tokens it labels
    and labels 90% of topical tokens (tests/test_dashboards.py checks this).
    """
    out = []
    topics: set[int] | None = None
    topical = True
    for t in tokens:
        if t in (bos, eos):
            topics, topical = None, True
            out.append(-1)
            continue
        if t < len(non_topical) and non_topical[t]:
            topical = False
        if topical and t < len(word_topics) and word_topics[t]:
            topics = set(word_topics[t]) if topics is None else topics & word_topics[t]
            topical = bool(topics)
        out.append(next(iter(topics)) if topical and topics is not None and len(topics) == 1 else -1)
    return out


def window_document_labels(tokens: list[int], tab: WindowTables) -> dict[str, list[int]]:
    """Per position: ``doc_kind``, ``sentiment`` and ``qa_part`` as far as the window shows them.

    Values index :data:`DOC_KINDS`, :data:`SENTIMENTS` and :data:`QA_PARTS`; -1 where the
    tokens so far do not tell. A document whose start the window shows (after ``<eos>``, or
    a ``<bos>`` past position 0; a window's first ``<bos>`` may cut a document) is a QA item
    if its first word is an instruction, else topical or fact by the first word only one of
    them uses; a document cut by the window needs a word only its kind uses. A sentence's
    sentiment is known from its first sentiment word to its full stop. QA parts follow the
    item's fixed markers: instruction, ``context (``, ``question :``, ``? answer :``, the
    answer word, then the explanation.
    """
    n = len(tokens)
    kind, sentiment, part = [-1] * n, [-1] * n, [-1] * n
    doc_kind = feel = qa = -1
    seen_start = False
    qa_words = tab.qa_only | tab.instruction
    for i, t in enumerate(tokens):
        if t in (tab.bos, tab.eos):
            doc_kind = feel = qa = -1
            seen_start = i > 0 or t == tab.eos  # a window's first <bos> may sit inside a document
            continue
        first = seen_start
        seen_start = False
        if doc_kind != 2:
            if t in qa_words or (first and t in tab.instruction):
                doc_kind, feel = 2, -1
            elif doc_kind == -1 and first:
                doc_kind = -2  # started as topical or fact: decided by the next telling word
            if doc_kind in (-1, -2):
                if t in tab.fact_only or (doc_kind == -2 and t in tab.fact_or_qa):
                    doc_kind = 1
                elif t in tab.topical_only or (doc_kind == -2 and t < len(tab.word_topics) and tab.word_topics[t]
                                               and not tab.non_topical[t]):
                    doc_kind = 0
        if doc_kind == 2:
            qa = _qa_part(qa, t, tokens[i - 1] if i else -1, tokens[i - 2] if i > 1 else -1, first, tab)
        elif doc_kind != 1:
            polarity = tab.polarity[t] if t < len(tab.polarity) else 0
            if polarity and feel == -1:
                feel = 0 if polarity > 0 else 1
        kind[i] = doc_kind if doc_kind >= 0 else -1
        sentiment[i] = feel if doc_kind != 1 else -1
        part[i] = qa if doc_kind == 2 else -1
        if t == tab.period:
            feel = -1  # the full stop is the sentence's last token
    return {"doc_kind": kind, "sentiment": sentiment, "qa_part": part}


def _qa_part(part: int, t: int, prev: int, prev2: int, first: bool, tab: WindowTables) -> int:
    """The QA part of token ``t`` given the part of the token before it."""
    if t in tab.instruction and (first or part == -1):
        return 0
    if t == tab.question:
        return 2
    if part == 0 and prev == tab.period:
        return 1  # "context" right after the instruction's full stop
    if part == -1 and t == tab.open_paren:
        return 1
    if part == 2 and prev == tab.colon and prev2 == tab.answer:
        return 3
    if part in (3, 4):
        return 4
    return part


def resolve_labels(model: Any, store: Any, labels: dict[str, Any] | None) -> RowLabels | WorldTokenLabels | None:
    """The caller's labels; else the world's planted labels for a store of the world model; else None."""
    if labels is not None:
        return RowLabels(labels, len(store))
    if store.model_name == "world" and getattr(model, "name", None) == "world":
        return WorldTokenLabels(model)
    return None
