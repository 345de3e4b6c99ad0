"""The attribution graph, its pruning and its scores (circuit-tracer's definitions).

Nodes, in order: active features (by layer, position, index), error nodes (layer-major,
``n_layers * n_pos``), token embeddings (``n_pos``), logits (most probable first);
``adjacency[target, source]`` is the direct effect of the source on the target's input (a
feature's pre-activation; a logit's value less the mean logit).

* Influence: with ``Â`` the adjacency's absolute values, each row normalised to sum 1, a
  node's influence on the output is ``w Â + w Â² + ...`` with ``w`` the logit nodes'
  probabilities (circuit-tracer's ``compute_influence``).
* Pruning (:meth:`AttributionGraph.prune`): keep the nodes carrying ``node_threshold`` of
  the total influence (tokens and logits always), then the edges carrying
  ``edge_threshold`` of the edge influence among them; drop feature and error nodes left
  without an outgoing edge, and features without an incoming one, until nothing changes.
* Scores (:meth:`AttributionGraph.scores`): the replacement score (the share of the
  tokens-to-logits influence that does not end in an error node) and the completeness
  score (each node's non-error share of its input, weighted by its influence).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.errors import InterpError

GRAPH_FILE = "graph.json"
TENSOR_FILE = "graph.safetensors"


def normalize_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """``|matrix|`` with each row scaled to sum to 1 (rows of zeros stay zero)."""
    normalized = matrix.abs()
    return normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``w A + w A² + ...`` for a nilpotent ``A`` (a DAG's), summed until a term is zero."""
    current = logit_weights @ A
    influence = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return influence
        current = current @ A
        influence += current
    raise RuntimeError(f"influence did not converge after {max_iter} steps: the adjacency is not a DAG's")


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score above which the largest scores sum to ``threshold`` of the total."""
    ranked = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ranked, 0) / torch.sum(ranked)
    index = min(int(torch.searchsorted(cumulative, threshold).item()), len(cumulative) - 1)
    return ranked[index]


class PruneResult(NamedTuple):
    node_mask: torch.Tensor          # [n_nodes] bool
    edge_mask: torch.Tensor          # [n_nodes, n_nodes] bool
    cumulative_scores: torch.Tensor  # [n_nodes] each node's place in the cumulative influence (0..1)


@dataclass
class GraphScores:
    replacement: float
    completeness: float


@dataclass
class AttributionGraph:
    """An attribution graph of one prompt (see the module docstring for the node order).

    ``node_inputs`` holds each feature's pre-activation and each logit's demeaned value
    (zero for errors and tokens, which have no inputs); ``constants`` the part of it no node
    accounts for (biases, position embeddings, the left-out BOS position). So, with every
    error node in the graph, ``adjacency.sum(1) + constants == node_inputs`` exactly (up to
    float error): :meth:`input_residual` measures it.
    """

    prompt: str
    tokens: list[int]
    token_strings: list[str]
    n_layers: int
    active_features: torch.Tensor        # [n_features, 3] long: layer, position, feature index
    activations: torch.Tensor            # [n_features]
    logit_tokens: list[int]
    logit_strings: list[str]
    logit_probabilities: torch.Tensor    # [n_logits]
    adjacency: torch.Tensor              # [n_nodes, n_nodes]: target row, source column
    node_inputs: torch.Tensor            # [n_nodes]
    constants: torch.Tensor              # [n_nodes]
    model_name: str = ""
    scan: str | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_replacement(cls, rm: Any, adjacency: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor,
                         seconds: float = 0.0, features: torch.Tensor | None = None) -> AttributionGraph:
        """Package the rows :func:`~interp.circuits.attribution.attribute` computed, with each
        node's input and constant part measured on the frozen system. ``features``: the indices
        of the active features that are nodes (None: all of them)."""
        vecs = rm.unembedding()[ids] - rm.unembedding().mean(0, keepdim=True)
        with torch.no_grad():
            own = rm.run(stop=True)
            zero = rm.run(torch.zeros_like(rm.activations), torch.zeros_like(rm.errors),
                          torch.zeros_like(rm.embed), stop=True)
        keep = torch.arange(rm.n_features) if features is None else features.cpu()
        n_f, n = len(keep), adjacency.shape[0]
        inputs, constants = torch.zeros(n), torch.zeros(n)
        for out, run in ((inputs, own), (constants, zero)):
            out[:n_f] = rm.feature_inputs(run.x_in)[0].detach().float().cpu()[keep]
            out[n - len(ids):] = (run.final[0, -1] @ vecs.T).detach().float().cpu()
        tok = rm.model.tokenizer
        tokens = rm.tokens.tolist()
        return cls(
            prompt=tok.decode(tokens) if tok is not None else "", tokens=tokens,
            token_strings=[tok.decode([t]) for t in tokens] if tok is not None else [str(t) for t in tokens],
            n_layers=rm.n_layers,
            active_features=torch.stack([rm.feature_layer, rm.feature_pos, rm.feature_index], 1).cpu()[keep],
            activations=rm.activations.detach().float().cpu()[keep],
            logit_tokens=ids.tolist(),
            logit_strings=[tok.decode([t]) for t in ids.tolist()] if tok is not None else [str(t) for t in ids.tolist()],
            logit_probabilities=probs.detach().float().cpu(),
            adjacency=adjacency, node_inputs=inputs, constants=constants,
            model_name=getattr(rm.model, "name", ""), seconds=seconds,
            meta={} if features is None else {"active_features": rm.n_features},
        )

    # ------------------------------------------------------------------ nodes
    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def node(self, i: int) -> dict[str, Any]:
        """What node ``i`` is: ``{"kind": "feature" | "error" | "token" | "logit", ...}``."""
        if not 0 <= i < self.n_nodes:
            raise InterpError(f"node {i} is outside the graph's {self.n_nodes} nodes")
        if i < self.error_start:
            layer, pos, feature = self.active_features[i].tolist()
            return {"kind": "feature", "layer": layer, "pos": pos, "feature": feature,
                    "activation": float(self.activations[i])}
        if i < self.token_start:
            layer, pos = divmod(i - self.error_start, self.n_pos)
            return {"kind": "error", "layer": layer, "pos": pos}
        if i < self.logit_start:
            pos = i - self.token_start
            return {"kind": "token", "pos": pos, "token": self.tokens[pos], "string": self.token_strings[pos]}
        j = i - self.logit_start
        return {"kind": "logit", "pos": self.n_pos - 1, "token": self.logit_tokens[j],
                "string": self.logit_strings[j], "probability": float(self.logit_probabilities[j])}

    def feature_node(self, layer: int, pos: int, feature: int) -> int:
        """The node index of an active feature (an InterpError if it is not active there)."""
        hit = ((self.active_features == torch.tensor([layer, pos, feature])).all(1)).nonzero()
        if not len(hit):
            if "active_features" in self.meta:
                raise InterpError(f"feature {feature} of layer {layer} at position {pos} is not among this graph's "
                                  f"{self.n_features} feature nodes (max_feature_nodes kept the most influential of "
                                  f"{self.meta['active_features']} active features; raise it to keep more)")
            raise InterpError(f"feature {feature} of layer {layer} is not active at position {pos} of this prompt")
        return int(hit[0, 0])

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes)
        w[self.logit_start:] = self.logit_probabilities
        return w

    # ------------------------------------------------------------------ measures
    def input_residual(self) -> float:
        """Largest ``|adjacency.sum(1) + constants - node_inputs|`` over feature and logit
        nodes, relative to the largest input: float error when the graph is exact."""
        rows = torch.cat([torch.arange(self.n_features), torch.arange(self.logit_start, self.n_nodes)])
        gap = self.adjacency[rows].sum(1) + self.constants[rows] - self.node_inputs[rows]
        return float(gap.abs().max() / self.node_inputs[rows].abs().max().clamp_min(1e-12)) if len(rows) else 0.0

    def node_influence(self) -> torch.Tensor:
        """``[n_nodes]`` each node's influence on the logits (see the module docstring)."""
        return compute_influence(normalize_matrix(self.adjacency), self.logit_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's ``prune_graph`` (see the module docstring)."""
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InterpError(f"{name} must be between 0 and 1, got {value}")
        weights = self.logit_weights()
        influence = self.node_influence()
        node_mask = influence >= find_threshold(influence, node_threshold)
        keep_always = self.token_start
        node_mask[keep_always:] = True
        pruned = self.adjacency.clone()
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
        normalized = normalize_matrix(pruned)
        edge_scores = normalized * (compute_influence(normalized, weights) + weights)[:, None]
        edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)
        before = node_mask.clone()
        node_mask[:keep_always] &= edge_mask[:, :keep_always].any(0)   # features and errors need an outgoing edge
        node_mask[:self.n_features] &= edge_mask[:self.n_features].any(1)  # features an incoming one
        while not torch.equal(node_mask, before):  # each removal can strand more nodes
            before = node_mask.clone()
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[:keep_always] &= edge_mask[:, :keep_always].any(0)
            node_mask[:self.n_features] &= edge_mask[:self.n_features].any(1)
        ranked, order = torch.sort(influence, descending=True)
        cumulative = torch.zeros_like(influence)
        cumulative[order] = torch.cumsum(ranked, 0) / torch.sum(ranked)
        return PruneResult(node_mask, edge_mask, cumulative)

    def scores(self) -> GraphScores:
        """circuit-tracer's replacement and completeness scores (see the module docstring)."""
        weights = self.logit_weights()
        normalized = normalize_matrix(self.adjacency)
        influence = compute_influence(normalized, weights)
        errors = slice(self.error_start, self.token_start)
        token_influence = influence[self.token_start:self.logit_start].sum()
        error_influence = influence[errors].sum()
        replacement = token_influence / (token_influence + error_influence)
        non_error = 1 - normalized[:, errors].sum(-1)
        output_influence = influence + weights
        completeness = (non_error * output_influence).sum() / output_influence.sum()
        return GraphScores(float(replacement), float(completeness))

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> Path:
        """``graph.json`` (everything but the tensors) and ``graph.safetensors``, atomically."""
        from saes.formats.durable import (
            atomic_save_tensors,
            atomic_write_text,
            ensure_directory,
        )

        d = Path(directory)
        ensure_directory(d)
        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS}
        atomic_save_tensors(d / TENSOR_FILE, tensors)
        meta = {k: getattr(self, k) for k in _FIELDS}
        atomic_write_text(d / GRAPH_FILE, json.dumps({"format": "interp-attribution-graph", "version": 1, **meta}))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttributionGraph:
        from saes.formats import schema
        from saes.formats.durable import read_tensors

        d = Path(directory)
        if not (d / GRAPH_FILE).is_file() or not (d / TENSOR_FILE).is_file():
            raise InterpError(f"{d} holds no saved attribution graph ({GRAPH_FILE} and {TENSOR_FILE})")
        meta = schema.read_json(d / GRAPH_FILE, InterpError)
        if not isinstance(meta, dict) or meta.get("format") != "interp-attribution-graph":
            raise InterpError(f"{d / GRAPH_FILE} is not an attribution graph saved by AttributionGraph.save")
        tensors, _ = read_tensors(d / TENSOR_FILE)
        missing = [k for k in (*_FIELDS, *_TENSORS) if k not in meta and k not in tensors]
        if missing:
            raise InterpError(f"{d}: the saved graph lacks {missing}")
        return cls(**{k: meta[k] for k in _FIELDS}, **{k: tensors[k] for k in _TENSORS})


_TENSORS = ("active_features", "activations", "logit_probabilities", "adjacency", "node_inputs", "constants")
_FIELDS = ("prompt", "tokens", "token_strings", "n_layers", "logit_tokens", "logit_strings", "model_name", "scan",
           "seconds", "meta")
