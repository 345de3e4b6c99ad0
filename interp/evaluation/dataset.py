"""A labelled evaluation set: activations at one hook, with the token windows they came from
and concept labels per row.

:class:`LabelledActivations` is what the SAE evaluation suite reads. One row is one token
position; every row knows its token id, its document (a window of ``windows``) and its
position there, so the same object feeds the reconstruction metrics (``acts``), the
model-level splice (``windows`` + ``attention_mask``, see :meth:`token_source`) and the
label-based metrics (``labels``, ``classes``).

Three constructors:

* :meth:`LabelledActivations.from_world`: documents sampled from the planted world, run
  through the world model, each row labelled with the world's planted labels (the concepts
  of :class:`~interp.activations.row_labels.WorldTokenLabels`: token labels of the row's
  word, causal document labels of the text up to it) and with class indices (the same
  labels as multi-class columns, plus the generator's own contextual labels);
* :meth:`LabelledActivations.from_tokens`: any model, any token windows, optional labels;
* :meth:`LabelledActivations.from_tensors`: activations and labels the caller already has.

>>> import torch
>>> s = LabelledActivations.from_tensors(torch.randn(6, 4), {"odd": torch.arange(6) % 2 == 1},
...                                      doc=torch.tensor([0, 0, 1, 1, 2, 2]))
>>> train, test = s.split(test_fraction=0.34, seed=0)
>>> len(train) + len(test), sorted(set(train.doc.tolist())), test.n_docs
(6, [0, 1], 1)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import torch

from interp.errors import InterpError

TOKEN, DOCUMENT, GIVEN = "token", "document", "given"
SCOPES = (TOKEN, DOCUMENT, GIVEN)

# Generator labels kept as classes (exact, from the grammar; not causal: a topical document's
# first word already carries its topic). Names get this suffix where a causal read-back of
# the same label exists.
GENERATOR_CLASSES = ("doc_kind", "topic", "sentiment", "template", "role", "item_type", "instruction", "source",
                     "qa_part", "answer_source", "chain", "hops", "fact_id", "bridge", "bridge_first")
GENERATOR_SUFFIX = "_generator"


@dataclass
class LabelledActivations:
    """Activations at one hook with per-row token, document, position and concept labels.

    Attributes:
        acts: ``[n, d]`` float32 activations (one row per kept token position).
        tokens: ``[n]`` int64 token ids (-1 when unknown, e.g. :meth:`from_tensors` without tokens).
        doc: ``[n]`` int64 document index (a row of ``windows`` when there are windows).
        position: ``[n]`` int64 position of the row in its document's window.
        labels: ``{concept: [n] bool}`` binary concepts (``"word_class:agent"``, ``"topic:music"``...).
        scopes: ``{concept: scope}``: ``"token"`` (a function of the row's own token id),
            ``"document"`` (depends on the text around it) or ``"given"`` (caller's labels).
        classes: ``{task: [n] int64}`` multi-class labels, ``-1`` where the task does not
            apply (``topic``, ``sentiment``, ``word_class``, ``relation``, ``hierarchy_node``...).
        class_names: ``{task: [value names]}`` (empty for integer-valued tasks such as ``fact_id``).
        class_scopes: ``{task: scope}``.
        hook: the hook the activations were read at ("" when unknown).
        windows: ``[n_docs, pos]`` int64 token windows the rows came from, or None.
        attention_mask: ``[n_docs, pos]`` int64, 1 on real tokens, or None.
        exclude_bos: whether position 0 of windows starting with BOS was left out of the rows
            (and is left alone by the splice).
        meta: provenance (``source``, ``model``, ``seed``, ``n_docs``, ``context_length``...).

    Invariant (checked on construction): where windows exist,
    ``windows[doc, position] == tokens`` on every row.
    """

    acts: torch.Tensor
    tokens: torch.Tensor
    doc: torch.Tensor
    position: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    classes: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    class_scopes: dict[str, str] = field(default_factory=dict)
    hook: str = ""
    windows: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    exclude_bos: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.acts.shape[0])

    @property
    def d(self) -> int:
        return int(self.acts.shape[1])

    @property
    def n_docs(self) -> int:
        """Number of documents (windows when present, else distinct ``doc`` values)."""
        if self.windows is not None:
            return int(self.windows.shape[0])
        return int(self.doc.max()) + 1 if len(self) else 0

    def label_matrix(self, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
        """``([n, c] bool, names)``: the binary labels stacked as columns (all of them by default)."""
        names = list(self.labels) if names is None else list(names)
        missing = [n for n in names if n not in self.labels]
        if missing:
            raise InterpError(f"no label {missing[0]!r}; labels here are: {', '.join(list(self.labels)[:12])}...")
        if not names:
            return torch.zeros(len(self), 0, dtype=torch.bool), []
        return torch.stack([self.labels[n] for n in names], dim=1), names

    def select(self, rows: torch.Tensor) -> LabelledActivations:
        """The rows ``rows`` (bool mask or indices), documents and windows left as they are."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero()[:, 0]
        return replace(
            self, acts=self.acts[rows], tokens=self.tokens[rows], doc=self.doc[rows], position=self.position[rows],
            labels={k: v[rows] for k, v in self.labels.items()}, classes={k: v[rows] for k, v in self.classes.items()},
            scopes=dict(self.scopes), class_names={k: list(v) for k, v in self.class_names.items()},
            class_scopes=dict(self.class_scopes), meta=dict(self.meta),
        )

    def subset_docs(self, docs: Sequence[int] | torch.Tensor) -> LabelledActivations:
        """The rows of the documents ``docs``, renumbered ``0..len(docs)-1`` in the given order,
        with their windows (so the subset still splices)."""
        docs = torch.as_tensor(docs, dtype=torch.int64).reshape(-1)
        if docs.numel() and (docs.min() < 0 or docs.max() >= self.n_docs):
            raise InterpError(f"document indices must lie in 0..{self.n_docs - 1}")
        new_index = torch.full((max(self.n_docs, 1),), -1, dtype=torch.int64)
        new_index[docs] = torch.arange(len(docs))
        keep = new_index[self.doc] >= 0
        out = self.select(keep)
        out.doc = new_index[out.doc]
        if self.windows is not None:
            out.windows = self.windows[docs]
            out.attention_mask = self.attention_mask[docs] if self.attention_mask is not None else None
        out._check()
        return out

    def split_docs(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train_docs, test_docs)``: the document indices :meth:`split` puts on each side
        (sorted); ``torch.isin(s.doc, test_docs)`` marks the test rows in place."""
        if not 0 < test_fraction < 1:
            raise InterpError(f"test_fraction={test_fraction}: give a share strictly between 0 and 1, e.g. 0.2")
        present = self.doc.unique() if self.windows is None else torch.arange(self.n_docs)
        if len(present) < 2:
            raise InterpError(f"the set has {len(present)} document(s); a split by document needs at least 2")
        g = torch.Generator().manual_seed(seed)
        perm = present[torch.randperm(len(present), generator=g)]
        n_test = min(max(1, round(len(present) * test_fraction)), len(present) - 1)
        return perm[n_test:].sort().values, perm[:n_test].sort().values

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[LabelledActivations, LabelledActivations]:
        """``(train, test)`` by document: every row of a document lands on the same side, so
        neighbouring tokens of one text never sit on both sides. Seeded, so reruns agree.
        Each side's documents are renumbered from 0 (see :meth:`split_docs` for the indices)."""
        train_docs, test_docs = self.split_docs(test_fraction, seed)
        return self.subset_docs(train_docs), self.subset_docs(test_docs)

    def token_source(self) -> Any:
        """The windows as a :class:`~interp.activations.tokens.TokenSource` for splicing
        (:func:`interp.evaluation.splice.evaluate_sae` takes it as ``tokens``)."""
        from interp.activations.tokens import TokenSource

        if self.windows is None:
            raise InterpError("this set has no token windows (built from tensors alone); CE/KL need them: "
                              "build it with from_world or from_tokens")
        mask = self.attention_mask if self.attention_mask is not None else torch.ones_like(self.windows)
        return TokenSource(self.windows, attention_mask=mask, exclude_bos=self.exclude_bos)

    def docs_of_rows(self) -> torch.Tensor:
        """``[n]`` document index per row (an alias of ``doc``, for symmetry with per-document metrics)."""
        return self.doc

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tensors(
        cls,
        acts: torch.Tensor,
        labels: Mapping[str, Any] | None = None,
        *,
        classes: Mapping[str, Any] | None = None,
        class_names: Mapping[str, Sequence[str]] | None = None,
        doc: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
        scopes: Mapping[str, str] | None = None,
        hook: str = "",
    ) -> LabelledActivations:
        """A set from the caller's own activations ``[n, d]`` and labels.

        ``labels``: ``{concept: [n] 0/1}``; ``classes``: ``{task: [n] int}`` with ``-1`` where
        the task does not apply (each class value also becomes a binary concept
        ``task:value``). ``doc`` groups rows into documents for the split and the bootstrap
        (default: each row its own document). ``scopes`` default to ``"given"``.
        """
        acts = torch.as_tensor(acts)
        if acts.ndim != 2:
            raise InterpError(f"acts must be [n, d] (one row per token), got shape {list(acts.shape)}; "
                              "flatten [batch, pos, d] with acts.reshape(-1, d) and drop padding first")
        n = acts.shape[0]
        arange = torch.arange(n)
        out_labels = {k: _column(k, v, n, torch.bool) for k, v in (labels or {}).items()}
        out_classes = {k: _column(k, v, n, torch.int64) for k, v in (classes or {}).items()}
        names = {k: list((class_names or {}).get(k, [])) for k in out_classes}
        for task, column in out_classes.items():
            values = names[task] or [str(v) for v in range(int(column.max()) + 1 if len(column) else 0)]
            for i in column[column >= 0].unique().tolist():
                out_labels.setdefault(f"{task}:{values[i] if i < len(values) else i}", column == i)
        given_scopes = dict(scopes or {})
        return cls(
            acts=acts.float(),
            tokens=_column("tokens", tokens, n, torch.int64) if tokens is not None else torch.full((n,), -1),
            doc=_column("doc", doc, n, torch.int64) if doc is not None else arange,
            position=_column("position", position, n, torch.int64) if position is not None else torch.zeros(n, dtype=torch.int64),
            labels=out_labels, scopes={k: given_scopes.get(k.split(":")[0], given_scopes.get(k, GIVEN)) for k in out_labels},
            classes=out_classes, class_names=names, class_scopes={k: given_scopes.get(k, GIVEN) for k in out_classes},
            hook=hook, meta={"source": "tensors"},
        )

    @classmethod
    @torch.no_grad()
    def from_tokens(
        cls,
        model: Any,
        hook: str,
        windows: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        exclude_bos: bool = True,
        batch_size: int = 64,
        labels: Mapping[str, Any] | None = None,
    ) -> LabelledActivations:
        """Run ``model`` on token ``windows [n_docs, pos]`` (right-padded, ``attention_mask`` 1 on
        real tokens) and keep the activations at ``hook`` of every real position (minus position 0
        of windows starting with BOS when ``exclude_bos``, as the harvest and the splice do).

        ``labels``: optional ``{concept: [n_docs, pos] 0/1}`` aligned with the windows.
        """
        model.check_hooks(hook)
        windows = torch.as_tensor(windows, dtype=torch.int64)
        if windows.ndim != 2:
            raise InterpError(f"windows must be [n_docs, pos] token ids, got shape {list(windows.shape)}")
        mask = torch.ones_like(windows) if attention_mask is None else torch.as_tensor(attention_mask).long()
        if mask.shape != windows.shape:
            raise InterpError(f"attention_mask is {list(mask.shape)} but windows are {list(windows.shape)}")
        keep = _keep_mask(model, windows, mask, exclude_bos)
        doc, position = keep.nonzero(as_tuple=True)
        chunks = []
        for a in range(0, windows.shape[0], batch_size):
            tok, m = windows[a: a + batch_size], mask[a: a + batch_size]
            _, cache = model.run_with_cache(tok.to(model.device), names=[hook], attention_mask=m.to(model.device),
                                            return_logits=False)
            x = cache[hook]
            chunks.append(x.reshape(*x.shape[:2], -1)[keep[a: a + batch_size].to(x.device)].float().cpu())
        acts = torch.cat(chunks) if chunks else torch.zeros(0, 0)
        row_labels = {k: torch.as_tensor(v).bool()[doc, position] for k, v in (labels or {}).items()}
        return cls(acts=acts, tokens=windows[doc, position], doc=doc, position=position, labels=row_labels,
                   scopes={k: GIVEN for k in row_labels}, hook=hook, windows=windows, attention_mask=mask,
                   exclude_bos=exclude_bos, meta={"source": "tokens", "model": getattr(model, "name", None)})

    @classmethod
    def from_world(
        cls,
        model: Any,
        hook: str,
        n_docs: int = 256,
        seed: int = 1,
        context_length: int | None = None,
        *,
        kind: str | None = None,
        world: Any = None,
        exclude_bos: bool = True,
        batch_size: int = 64,
    ) -> LabelledActivations:
        """``n_docs`` documents sampled from the world's generator (sampling seed ``seed``; the
        world model was trained on seed 0's stream, so the default 1 is held-out text), one
        document per window (cut to ``context_length``, default the model's positions), run
        through ``model`` (a world model: ``interp.load("world")``) with the activations at
        ``hook`` kept in memory.

        Labels per row: every concept of
        :class:`~interp.activations.row_labels.WorldTokenLabels` (``word_class:*``,
        ``polarity:*``, ``relation:*``, ``hierarchy:*``, ``word_topics:*`` of the row's word,
        scope ``token``; ``topic:*``, ``doc_kind:*``, ``sentiment:*``, ``qa_part:*`` of the
        text up to it, scope ``document``). Classes: the same as multi-class columns
        (``word_class``, ``relation``, ``polarity`` (negative, neutral, positive), ``entity``,
        ``hierarchy_node`` (the word's own node), ``hierarchy_parent`` (its parent node),
        ``topic``, ``doc_kind``, ``sentiment``, ``qa_part``), plus the generator's exact
        contextual labels (``template``, ``role``, ``chain``, ``hops``, ``fact_id``,
        ``bridge``... and ``topic_generator``, ``sentiment_generator`` (with neutral),
        ``doc_kind_generator``, ``qa_part_generator``: known from the first token, not causal).
        """
        from interp.world import World
        from interp.world.labels import encode_docs

        world = world or World()
        if len(model.tokenizer) != len(world.vocab):
            raise InterpError(f"the model's tokenizer has {len(model.tokenizer)} tokens but the world has "
                              f"{len(world.vocab)}: from_world needs a world model (interp.load('world'))")
        n_pos = _positions(model)
        width = int(context_length or n_pos or 128)
        if n_pos is not None and width > n_pos:
            raise InterpError(f"context_length={width} exceeds the model's {n_pos} positions; pass at most {n_pos}")
        docs = world.sample_docs(n_docs, seed=seed, kind=kind)
        n_cut = sum(len(d) > width for d in docs)
        docs = [_cut(d, width) for d in docs]
        windows, gen = encode_docs(world, docs)
        lengths = torch.tensor([len(d) for d in docs])
        mask = (torch.arange(windows.shape[1]) < lengths[:, None]).long()
        out = cls.from_tokens(model, hook, windows, mask, exclude_bos=exclude_bos, batch_size=batch_size)
        out._add_world_labels(model, gen)
        out.meta = {"source": "world", "model": getattr(model, "name", None), "seed": seed, "n_docs": n_docs,
                    "context_length": width, "kind": kind, "world_seed": world.config.seed,
                    "cut_docs": n_cut}
        return out

    # ------------------------------------------------------------------ internals
    def _add_world_labels(self, model: Any, generator_labels: dict[str, torch.Tensor]) -> None:
        from interp.activations.row_labels import DOCUMENT as DOC_SCOPE
        from interp.activations.row_labels import WorldTokenLabels
        from interp.world.labels import SCHEMA
        from interp.world.lexicon import HIERARCHY_NODES, HIERARCHY_PARENT

        assert self.windows is not None
        reader = WorldTokenLabels(model)
        store = _WindowStore(self.windows, self.doc, self.position)
        matrix = reader.chunk(store, 0, len(self)) if len(self) else torch.zeros(0, len(reader.names), dtype=torch.bool)
        for j, (name, scope) in enumerate(zip(reader.names, reader.scopes)):
            self.labels[name] = matrix[:, j]
            self.scopes[name] = DOCUMENT if scope == DOC_SCOPE else TOKEN
        # Multi-class views of the one-hot blocks (at most one value per row is set in each).
        for task in ("word_class", "relation", "topic", "doc_kind", "sentiment", "qa_part"):
            cols = [n for n in reader.names if n.split(":", 1)[0] == task]
            block = torch.stack([self.labels[c] for c in cols], dim=1)
            self.classes[task] = torch.where(block.any(1), block.long().argmax(1), -1)
            self.class_names[task] = [c.split(":", 1)[1] for c in cols]
            self.class_scopes[task] = self.scopes[cols[0]]
        d, p = self.doc, self.position
        self.classes["polarity"] = generator_labels["polarity"][d, p] + 1
        self.class_names["polarity"] = ["negative", "neutral", "positive"]
        self.classes["entity"] = generator_labels["entity"][d, p]
        self.class_names["entity"] = []
        hier = generator_labels["hierarchy"][d, p]  # [n, nodes]: the word's node and its ancestors
        depth = torch.tensor([_depth(node, HIERARCHY_PARENT) for node in HIERARCHY_NODES])
        deepest = torch.where(hier.any(1), (hier.long() * (depth + 1)).argmax(1), -1)
        parent_of = torch.tensor([HIERARCHY_NODES.index(_parent(node, HIERARCHY_PARENT))
                                  if _parent(node, HIERARCHY_PARENT) else -1 for node in HIERARCHY_NODES])
        self.classes["hierarchy_node"] = deepest
        self.classes["hierarchy_parent"] = torch.where(deepest >= 0, parent_of[deepest.clamp_min(0)], -1)
        for task in ("polarity", "entity", "hierarchy_node", "hierarchy_parent"):
            self.class_scopes[task] = TOKEN
        self.class_names["hierarchy_node"] = self.class_names["hierarchy_parent"] = list(HIERARCHY_NODES)
        for name in GENERATOR_CLASSES:
            key = name + GENERATOR_SUFFIX if name in self.classes else name
            self.classes[key] = generator_labels[name][d, p]
            self.class_names[key] = list(SCHEMA[name].names)
            self.class_scopes[key] = DOCUMENT
        self._check()

    def _check(self) -> None:
        n = self.acts.shape[0]
        if self.acts.ndim != 2:
            raise InterpError(f"acts must be [n, d], got shape {list(self.acts.shape)}")
        for name, t in (("tokens", self.tokens), ("doc", self.doc), ("position", self.position),
                        *self.labels.items(), *self.classes.items()):
            if t.shape != (n,):
                raise InterpError(f"{name!r} has shape {list(t.shape)} but there are {n} rows; give one value per row")
        bad = [s for s in list(self.scopes.values()) + list(self.class_scopes.values()) if s not in SCOPES]
        if bad:
            raise InterpError(f"scope {bad[0]!r} is not one of {', '.join(SCOPES)}")
        if self.windows is not None and n:
            if self.doc.max() >= self.windows.shape[0] or self.position.max() >= self.windows.shape[1]:
                raise InterpError("doc/position point outside the windows; they must index windows[doc, position]")
            if not torch.equal(self.windows[self.doc, self.position], self.tokens):
                raise InterpError("tokens differ from windows[doc, position]; the rows and windows are misaligned")


class _WindowStore:
    """The two calls :class:`WorldTokenLabels` makes of a store, answered from in-memory windows."""

    def __init__(self, windows: torch.Tensor, doc: torch.Tensor, position: torch.Tensor) -> None:
        self.windows, self.doc, self.position = windows, doc, position

    def locate(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        return self.doc[rows], self.position[rows]

    def tokens_for(self, row: int) -> SimpleNamespace:
        return SimpleNamespace(tokens=self.windows[int(self.doc[row])])


def _column(name: str, value: Any, n: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(value).reshape(-1)
    if t.shape[0] != n:
        raise InterpError(f"{name!r} has {t.shape[0]} values but acts has {n} rows; give one value per row")
    return t.bool() if dtype == torch.bool else t.to(dtype)


def _keep_mask(model: Any, windows: torch.Tensor, mask: torch.Tensor, exclude_bos: bool) -> torch.Tensor:
    keep = mask.bool().clone()
    bos = getattr(model, "bos_token_id", None)
    if exclude_bos and bos is not None:
        keep[:, 0] &= windows[:, 0] != bos
    return keep


def _positions(model: Any) -> int | None:
    config = getattr(getattr(model, "hf_model", None), "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _cut(doc: Any, width: int) -> Any:
    """A document cut to its first ``width`` tokens (labels cut alike)."""
    if len(doc) <= width:
        return doc
    return replace(doc, tokens=doc.tokens[:width], labels=doc.labels[:width])


def _parent(node: str, parents: Mapping[str, str | None]) -> str | None:
    from interp.world.lexicon import MEMBER_PARENT

    return MEMBER_PARENT.get(node) or parents.get(node)


def _depth(node: str, parents: Mapping[str, str | None]) -> int:
    depth, p = 0, _parent(node, parents)
    while p is not None and depth < 16:
        depth, p = depth + 1, _parent(p, parents)
    return depth


def world_eval_set(hook: str = "blocks.2.hook_resid_post", n_docs: int = 256, seed: int = 1,
                   context_length: int | None = None, model: Any = None) -> tuple[Any, LabelledActivations]:
    """``(model, set)``: the shipped world model (loaded unless given) and its labelled
    evaluation set at ``hook``; the model is what the splice (CE / KL) runs."""
    if model is None:
        from interp.model.loading import load

        model = load("world")
    return model, LabelledActivations.from_world(model, hook, n_docs=n_docs, seed=seed, context_length=context_length)


def bootstrap_docs(values: torch.Tensor, doc: torch.Tensor, *, weights: torch.Tensor | None = None,
                   n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: a ratio-of-sums estimate over rows with a percentile bootstrap
    that resamples whole documents (rows of one document move together, since tokens of one
    text are not independent).

    The estimate is ``sum(values) / sum(weights)`` (weights default to 1 per row: the mean of
    ``values``); each resample redraws documents with replacement and recomputes the ratio.
    For a ratio of two per-row sums (FVU: squared errors over squared deviations) pass the
    numerator terms as ``values`` and the denominator terms as ``weights``.

    >>> est, lo, hi = bootstrap_docs(torch.tensor([1.0, 1.0, 3.0, 3.0]), torch.tensor([0, 0, 1, 1]))
    >>> est, lo <= est <= hi
    (2.0, True)
    """
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    weights = torch.ones_like(values) if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    doc = torch.as_tensor(doc, dtype=torch.int64).reshape(-1)
    if values.numel() == 0 or float(weights.sum()) == 0:
        return math.nan, math.nan, math.nan
    uniq, inverse = doc.unique(return_inverse=True)
    num = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, values)
    den = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, weights)
    estimate = float(num.sum() / den.sum())
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(uniq), (n_boot, len(uniq)), generator=g)
    boot = num[pick].sum(1) / den[pick].sum(1).clamp_min(1e-300)
    lo, hi = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return estimate, lo, hi
