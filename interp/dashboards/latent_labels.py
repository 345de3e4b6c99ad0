"""Concept labels per store row, for matching latents to concepts by AUROC.

Two sources:

* :class:`RowLabels` — the caller's ``{concept: [n_rows] 0/1 tensor}``, aligned with the store;
* :class:`WorldTokenLabels` — on the world model, the planted lexical labels
  (``word_class``, ``polarity``, ``relation``, ``hierarchy``, ``word_topics``; see
  ``interp/world/WORLD.md``) read from each row's own token through the world's
  per-vocabulary tables, plus ``topic:<name>``, the topic of the row's document as far as
  its window shows it (:func:`window_topics`). They need nothing but the stored tokens, so
  they stream. Other contextual labels (sentiment, QA parts) depend on the generator's
  hidden choices, which a store of text does not keep: pass them with ``labels=``.
"""
from __future__ import annotations

from typing import Any

import torch

from interp.errors import InterpError

# Words only fact and QA documents use (relations, invented names, QA words): once one is seen
# the document is not topical. Classes from interp.world.labels.WORD_CLASSES.
NON_TOPICAL_CLASSES = ("relation", "entity", "city", "language", "alias", "qa_word")
NON_TOPICAL_WORDS = ("question", "answer", "from")


class RowLabels:
    """Caller-given labels: ``{name: [n_rows]}`` tensors of 0/1 (or bool)."""

    def __init__(self, labels: dict[str, Any], n_rows: int) -> None:
        if not labels:
            raise InterpError("labels is empty; pass {concept_name: [n_rows] 0/1 tensor} or None")
        self.names = list(labels)
        self._columns = []
        for name, value in labels.items():
            t = torch.as_tensor(value).reshape(-1)
            if t.shape[0] != n_rows:
                raise InterpError(f"label {name!r} has {t.shape[0]} rows but the store has {n_rows}; "
                                  "labels must give one 0/1 value per store row, in store order")
            self._columns.append(t.bool())

    def chunk(self, store: Any, start: int, stop: int) -> torch.Tensor:
        return torch.stack([c[start:stop] for c in self._columns], dim=1)


class WorldTokenLabels:
    """The world's lexical labels of each row's token and its document's topic, as ``label:value`` concepts."""

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
        self._table = torch.stack(list(columns.values()), dim=1)  # [vocab, lexical concepts]
        self.names = list(columns) + [f"topic:{name}" for name in TOPICS]
        self._n_topics = len(TOPICS)
        non_topical = torch.tensor([WORD_CLASSES[int(c)] in NON_TOPICAL_CLASSES for c in t["word_class"]])
        non_topical[[vocab.index(w) for w in NON_TOPICAL_WORDS]] = True
        self._word_topics = [set(row.nonzero()[:, 0].tolist()) for row in t["word_topics"]]
        self._non_topical = non_topical.tolist()
        self._bos, self._eos = vocab.index("<bos>"), vocab.index("<eos>")
        self._windows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # seq -> (tokens, topic per position)

    def chunk(self, store: Any, start: int, stop: int) -> torch.Tensor:
        seq, pos = store.locate(torch.arange(start, stop))
        tokens = torch.empty(stop - start, dtype=torch.int64)
        topic = torch.empty(stop - start, dtype=torch.int64)
        for s in seq.unique().tolist():
            sel = seq == s
            window, topics = self._window(store, s, start + int(sel.nonzero()[0, 0]))
            tokens[sel], topic[sel] = window[pos[sel]], topics[pos[sel]]
        out = torch.zeros(stop - start, len(self.names), dtype=torch.bool)
        inside = tokens < self._table.shape[0]
        out[inside, : self._table.shape[1]] = self._table[tokens[inside]]
        has = topic >= 0
        out[has.nonzero()[:, 0], self._table.shape[1] + topic[has]] = True
        return out

    def _window(self, store: Any, seq: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq not in self._windows:
            if len(self._windows) > 64:  # chunks move forward through the store: old windows are done
                self._windows.clear()
            tokens = store.tokens_for(row).tokens
            self._windows[seq] = (tokens, torch.tensor(window_topics(tokens.tolist(), self._word_topics,
                                                                     self._non_topical, self._bos, self._eos)))
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


def resolve_labels(model: Any, store: Any, labels: dict[str, Any] | None) -> RowLabels | WorldTokenLabels | None:
    """The caller's labels; else the world's planted labels for a store of the world model; else None."""
    if labels is not None:
        return RowLabels(labels, len(store))
    if store.model_name == "world" and getattr(model, "name", None) == "world":
        return WorldTokenLabels(model)
    return None
