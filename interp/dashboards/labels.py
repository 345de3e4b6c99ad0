"""Concept labels per store row, for matching latents to concepts by AUROC.

Two sources:

* :class:`RowLabels` — the caller's ``{concept: [n_rows] 0/1 tensor}``, aligned with the store;
* :class:`WorldTokenLabels` — on the world model, the planted lexical labels
  (``word_class``, ``polarity``, ``relation``, ``hierarchy``, ``word_topics``; see
  ``interp/world/WORLD.md``) read from each row's own token through the world's
  per-vocabulary tables. They need nothing but the stored tokens, so they stream.
  Contextual labels (topic, sentiment, QA parts) depend on the generator's hidden choices,
  which a store of text does not keep: pass them with ``labels=`` when you have them.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import InterpError
from .sources import row_tokens


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
    """The world's lexical labels of each row's token, as ``label:value`` concepts."""

    def __init__(self, model: Any) -> None:
        from ..world import World
        from ..world.labels import WORD_CLASSES, lexical_tables
        from ..world.lexicon import HIERARCHY_NODES, RELATIONS, TOPICS

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
        self.names = list(columns)
        self._table = torch.stack(list(columns.values()), dim=1)  # [vocab, concepts]

    def chunk(self, store: Any, start: int, stop: int) -> torch.Tensor:
        tokens = row_tokens(store, start, stop)
        inside = tokens < self._table.shape[0]
        out = torch.zeros(stop - start, self._table.shape[1], dtype=torch.bool)
        out[inside] = self._table[tokens[inside]]
        return out


def resolve_labels(model: Any, store: Any, labels: dict[str, Any] | None) -> RowLabels | WorldTokenLabels | None:
    """The caller's labels; else the world's planted labels for a store of the world model; else None."""
    if labels is not None:
        return RowLabels(labels, len(store))
    if store.model_name == "world" and getattr(model, "name", None) == "world":
        return WorldTokenLabels(model)
    return None
