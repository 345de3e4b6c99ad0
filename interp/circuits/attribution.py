"""Attribution: the direct effect of every source node on every target node, by backward passes.

The algorithm is circuit-tracer's (``circuit_tracer/attribution/attribute.py``, after
Ameisen et al. 2025): the frozen linear system is run once on ``batch_size`` copies of the
prompt with its graph kept; each backward pass then gives ``batch_size`` rows of the
adjacency matrix at once, one target per copy. A target's gradient is injected where it
reads the residual stream (a feature: its encoder direction at its transcoder's input; a
logit: the demeaned unembedding column at the final norm's output) and read out at every
source (a feature or error: contracted with its decoder row times its code, or its error
vector, at its layer's MLP output; a token: with its embedding). Features are constants of
the frozen system, so every path found is direct: it runs through the residual stream,
frozen attention, frozen norms and skip paths, never through another feature.

Node order (circuit-tracer's, so graphs can be compared entry by entry): active features
(by layer, position, index), error nodes (layer-major, ``n_layers * pos``), token
embeddings (``pos``), logits (most probable first). ``adjacency[target, source]``.

>>> graph = attribute(model, transcoders, "the flag of the land whose capital is mip is")
>>> graph.adjacency.shape, graph.n_features
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.circuits.graph import AttributionGraph, normalize_matrix
from interp.circuits.replacement import ReplacementModel, Run, Transcoders
from interp.errors import InterpError


@dataclass
class CircuitConfig:
    """The settings of an attribution graph (the command line's options come from here)."""

    # metadata: the help of the command line's options (interp/cli/options.py).
    max_n_logits: int = field(default=10, metadata={
        "help": "at most this many logit nodes (the most probable next tokens)", "flag": "--max-logits",
        "positive": True, "maximum": 1000})
    desired_logit_prob: float = field(default=0.95, metadata={
        "help": "add logit nodes until their probabilities sum to this", "flag": "--logit-prob",
        "minimum": 0.0, "maximum": 1.0})
    batch_size: int = field(default=64, metadata={
        "help": "targets per backward pass (memory grows with it)", "positive": True, "maximum": 1 << 16})
    exclude_bos: bool = field(default=True, metadata={
        "help": "features and errors at a leading BOS are no nodes", "off_help": "make BOS's features and errors nodes too",
        "flag": "--keep-bos"})
    node_threshold: float = field(default=0.8, metadata={
        "help": "pruning keeps the nodes carrying this share of the influence on the logits",
        "minimum": 0.0, "maximum": 1.0})
    edge_threshold: float = field(default=0.98, metadata={
        "help": "pruning keeps the edges carrying this share of the edge influence", "minimum": 0.0, "maximum": 1.0})
    max_feature_nodes: int | None = field(default=None, metadata={
        "help": "attribute only this many features, the most influential first (long prompts)",
        "default_text": "every active feature", "positive": True})
    update_interval: int = field(default=4, metadata={
        "help": "with --max-feature-nodes: batches between re-rankings of the features by influence",
        "positive": True, "maximum": 1 << 16})


def logit_targets(rm: ReplacementModel, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                  tokens: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(token ids [k], probabilities [k], demeaned unembedding vectors [k, d_model])`` of the
    logit nodes: the given tokens, or the most probable next tokens until their probability
    sums to ``desired_logit_prob`` (at most ``max_n_logits``), as circuit-tracer picks them."""
    probs = torch.softmax(rm.logits[-1].float(), -1)
    if tokens is not None:
        ids = torch.as_tensor(list(tokens), dtype=torch.long, device=probs.device)
        if ids.numel() == 0 or bool(((ids < 0) | (ids >= probs.numel())).any()):
            raise InterpError(f"logit targets must be token ids in 0..{probs.numel() - 1}; got {ids.tolist()}")
    else:
        if max_n_logits < 1:
            raise InterpError(f"max_n_logits must be at least 1, got {max_n_logits}")
        top_p, top_i = torch.topk(probs, min(max_n_logits, probs.numel()))
        cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob))) + 1
        ids = top_i[:cutoff]
    unembed = rm.unembedding()
    vecs = unembed[ids] - unembed.mean(0, keepdim=True)
    return ids, probs[ids], vecs


class _Pass:
    """One forward pass of the frozen system on ``batch`` copies, graph kept, and the
    readout of adjacency rows from it."""

    def __init__(self, rm: ReplacementModel, batch: int) -> None:
        self.rm, self.batch = rm, batch
        self.run: Run = rm.run(grad=True, stop=True, activations=rm.activations.expand(batch, -1))
        # Source vectors: a feature's decoder row times its code; errors; embeddings.
        self.scaled_decoder = rm.decoder * rm.activations[:, None]
        # Features are sorted by (layer, position): per layer, the runs of one position, so each
        # run's edges are one small matrix product instead of a gather of [batch, n, d_model].
        self.runs: list[list[tuple[int, int, int]]] = [[] for _ in rm.layers]
        for i, (layer, pos) in enumerate(zip(rm.feature_layer.tolist(), rm.feature_pos.tolist())):
            runs = self.runs[layer]
            if runs and runs[-1][0] == pos:
                runs[-1] = (pos, runs[-1][1], i + 1)
            else:
                runs.append((pos, i, i + 1))
        self.n_cols = rm.n_features + (rm.n_layers + 1) * rm.n_pos

    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``[k, n_cols]`` adjacency rows of ``k <= batch`` targets, each reading the residual
        stream at ``(layer, position)`` along ``vectors[i]`` (layer ``n_layers``: the final
        norm's output)."""
        rm, run = self.rm, self.run
        outputs, grads = [], []
        for layer in layers.unique().tolist():
            at = (layers == layer).nonzero().squeeze(1)
            root = run.final if layer == rm.n_layers else run.x_in[layer]
            g = torch.zeros_like(root)
            g[at, positions[at]] = vectors[at].to(g.dtype)
            outputs.append(root)
            grads.append(g)
        inputs = [*run.rest, run.embed]
        got = torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True)
        row = vectors.new_zeros(self.batch, self.n_cols)
        err0 = rm.n_features
        for lt, g, runs in zip(rm.layers, got[:-1], self.runs):
            if g is None:
                continue
            for pos, a, b in runs:
                row[:, a:b] = g[:, pos] @ self.scaled_decoder[a:b].T
            start = err0 + lt.layer * rm.n_pos
            row[:, start:start + rm.n_pos] = torch.einsum("bpd,pd->bp", g, rm.errors[lt.layer])
        if got[-1] is not None:
            row[:, err0 + rm.n_layers * rm.n_pos:] = torch.einsum("bpd,pd->bp", got[-1], rm.embed)
        return row[:len(layers)]


def attribute(
    model: Any,
    transcoders: Transcoders | ReplacementModel,
    prompt: str | torch.Tensor | Sequence[int] | None = None,
    *,
    max_n_logits: int = CircuitConfig.max_n_logits,
    desired_logit_prob: float = CircuitConfig.desired_logit_prob,
    logit_tokens: Sequence[int] | None = None,
    batch_size: int = CircuitConfig.batch_size,
    exclude_bos: bool = CircuitConfig.exclude_bos,
    max_feature_nodes: int | None = CircuitConfig.max_feature_nodes,
    update_interval: int = CircuitConfig.update_interval,
    progress: bool = False,
) -> AttributionGraph:
    """The attribution graph of ``prompt`` (unpruned: every active feature, every edge).

    Args:
        model: a HookedModel (HF backend, GPT-2- or Llama-style blocks).
        transcoders: ``{layer: transcoder}``, a list, a directory (see
            :func:`~interp.circuits.replacement.load_transcoders`), or a ReplacementModel
            already built for the prompt (then ``prompt`` is not needed).
        prompt: text (BOS prepended where the tokenizer has one) or token ids.
        max_n_logits, desired_logit_prob: which logits become nodes (see :func:`logit_targets`).
        logit_tokens: these token ids as the logit nodes instead.
        batch_size: targets per backward pass (memory grows with it; time falls).
        exclude_bos: features and errors at a leading BOS are no nodes (circuit-tracer's rule).
        max_feature_nodes: keep only this many feature nodes (None: all). As circuit-tracer
            does, the logit rows come first; then, every ``update_interval`` batches, the
            unvisited features are ranked by their influence on the logits through the rows
            computed so far, and the most influential are attributed next. The graph holds the
            visited features only (in node order); the edges from the others are dropped, so
            :meth:`AttributionGraph.input_residual` then measures what they carried.
        update_interval: batches between those re-rankings.
        progress: show a progress bar.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(transcoders, ReplacementModel):
        rm = transcoders
    else:
        if prompt is None:
            raise InterpError("give the prompt to attribute")
        rm = ReplacementModel(model, transcoders, prompt, exclude_bos=exclude_bos)
    ids, probs, vecs = logit_targets(rm, max_n_logits, desired_logit_prob, logit_tokens)
    n_f, n_l = rm.n_features, len(ids)
    if max_feature_nodes is not None and max_feature_nodes < 1:
        raise InterpError(f"max_feature_nodes must be at least 1 (or None for every feature), got {max_feature_nodes}")
    if update_interval < 1:
        raise InterpError(f"update_interval must be at least 1, got {update_interval}")
    n_keep = n_f if max_feature_nodes is None else min(max_feature_nodes, n_f)
    batch = max(1, min(batch_size, max(n_f, n_l)))
    encoders = _encoder_vectors(rm)
    f_layers, f_pos = rm.feature_layer.to(rm.device), rm.feature_pos.to(rm.device)
    with rm.no_param_grads():
        readout = _Pass(rm, batch)
        n_cols = readout.n_cols
        # Rows in the order computed: logits first, then features as they are visited.
        edges = torch.zeros(n_l + n_keep, n_cols)
        row_node = torch.zeros(n_l + n_keep, dtype=torch.long)
        bar = tqdm(total=n_keep + n_l, desc="attribution", disable=not progress, leave=False)
        for i in range(0, n_l, batch):
            part = slice(i, min(i + batch, n_l))
            k = part.stop - part.start
            edges[part] = readout.rows(torch.full((k,), rm.n_layers, device=rm.device),
                                       torch.full((k,), rm.n_pos - 1, device=rm.device), vecs[part]).detach().float().cpu()
            row_node[part] = n_cols + torch.arange(part.start, part.stop)
            bar.update(k)
        visited = torch.zeros(n_f, dtype=torch.bool)
        done = n_l
        while done < n_l + n_keep:
            if n_keep == n_f:
                pending = torch.arange(n_f)
            else:
                influence = _partial_influence(edges[:done], row_node[:done], probs.detach().float().cpu(), n_cols)
                rank = torch.argsort(influence[:n_f], descending=True)
                pending = rank[~visited[rank]][:min(update_interval * batch, n_l + n_keep - done)]
            for i in range(0, len(pending), batch):
                idx = pending[i:i + batch]
                on = idx.to(rm.device)
                edges[done:done + len(idx)] = readout.rows(f_layers[on], f_pos[on], encoders[on]).detach().float().cpu()
                row_node[done:done + len(idx)] = idx
                visited[idx] = True
                done += len(idx)
                bar.update(len(idx))
        bar.close()
        del readout
    selected = visited.nonzero().squeeze(1)
    cols = torch.cat([selected, torch.arange(n_f, n_cols)])
    n_nodes = len(cols) + n_l
    adjacency = torch.zeros(n_nodes, n_nodes)
    feature_rows = edges[n_l:][torch.argsort(row_node[n_l:])]
    adjacency[:len(selected), :len(cols)] = feature_rows[:, cols]
    adjacency[len(cols):, :len(cols)] = edges[:n_l][:, cols]
    return AttributionGraph.from_replacement(rm, adjacency, ids, probs, seconds=time.perf_counter() - started,
                                             features=None if n_keep == n_f else selected)


def _partial_influence(rows: torch.Tensor, row_node: torch.Tensor, logit_probs: torch.Tensor, n_cols: int,
                       max_iter: int = 1000) -> torch.Tensor:
    """``[n_cols]`` each source's influence on the logits through the rows computed so far
    (``rows[i]`` is node ``row_node[i]``'s; logit nodes are numbered from ``n_cols``):
    circuit-tracer's ``compute_partial_influences``, the ranking that picks the next features."""
    normalized = normalize_matrix(rows)
    weight = torch.zeros(n_cols + len(logit_probs))
    weight[n_cols:] = logit_probs
    influence = torch.zeros(n_cols)
    for _ in range(max_iter):
        current = weight[row_node] @ normalized
        if not current.any():
            return influence
        influence += current
        weight = torch.zeros_like(weight)
        weight[:n_cols] = current
    raise RuntimeError(f"influence did not converge after {max_iter} steps: the rows are not a DAG's")


def _encoder_vectors(rm: ReplacementModel) -> torch.Tensor:
    """``[n, d_model]`` each active feature's input direction: the row of its transcoder's
    pre-activation map, read off ``pre_acts`` (affine) at the unit vectors, so every
    encoder family (a Gated SAE's rescaled magnitude path too) is read the same way."""
    out = torch.zeros(rm.n_features, rm.model.d_model, device=rm.device)
    for lt in rm.layers:
        sel = (rm.feature_layer == lt.layer).nonzero().squeeze(1)
        if not len(sel):
            continue
        with torch.no_grad():
            eye = torch.eye(rm.model.d_model, device=rm.device, dtype=lt.sae.dtype)
            cols = lt.sae.pre_acts(eye)[:, rm.feature_index[sel]] - lt.sae.pre_acts(torch.zeros_like(eye[:1]))[:, rm.feature_index[sel]]
        out[sel] = cols.T.to(out.dtype)
    return out


@torch.no_grad()
def reference_adjacency(rm: ReplacementModel, logit_ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The adjacency matrix by brute force: each source removed in turn from the frozen linear
    system (a feature's code, an error vector or a token embedding set to zero) and every
    target's input measured again; ``adjacency[t, s]`` = input_t(all) - input_t(without s).
    One forward pass per source (batched), no gradients: an independent check of
    :func:`attribute`, exact because the frozen system is affine in its sources."""
    vecs = rm.unembedding()[logit_ids] - rm.unembedding().mean(0, keepdim=True)
    n_f, n_l = rm.n_features, len(logit_ids)
    n_src = n_f + (rm.n_layers + 1) * rm.n_pos
    n = n_src + n_l

    def inputs(run: Run) -> torch.Tensor:
        return torch.cat([rm.feature_inputs(run.x_in), run.final[:, -1] @ vecs.T], 1).float().cpu()

    base = inputs(rm.run(stop=True))[0]
    adjacency = torch.zeros(n, n)
    for start in range(0, n_src, batch_size):
        src = torch.arange(start, min(start + batch_size, n_src))
        b = len(src)
        acts = rm.activations.expand(b, -1).clone()
        errs = rm.errors.expand(b, *rm.errors.shape).clone()
        emb = rm.embed.expand(b, *rm.embed.shape).clone()
        for j, s in enumerate(src.tolist()):
            if s < n_f:
                acts[j, s] = 0
            elif s < n_f + rm.n_layers * rm.n_pos:
                layer, pos = divmod(s - n_f, rm.n_pos)
                errs[j, layer, pos] = 0
            else:
                emb[j, s - n_f - rm.n_layers * rm.n_pos] = 0
        effect = base - inputs(rm.run(acts, errs, emb, stop=True))      # [b, n_f + n_l]
        adjacency[:n_f, src] = effect[:, :n_f].T
        adjacency[n_src:, src] = effect[:, n_f:].T
    return adjacency
