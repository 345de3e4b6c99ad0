"""Probe every layer: where does the model represent a labelled variable?"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from probes.linear import LinearProbe, ProbeResult


def probe_hooks(acts: dict[str, torch.Tensor], labels: torch.Tensor, groups: torch.Tensor | None = None,
                **probe_kwargs: Any) -> dict[str, ProbeResult]:
    """Fit one probe per hook on ``acts[hook]`` [n, d] with shared ``labels`` [n]."""
    return {hook: LinearProbe(**probe_kwargs).fit(x, labels, groups) for hook, x in acts.items()}


def collect(model: Any, tokens: torch.Tensor, hooks: Sequence[str], keep: torch.Tensor,
            batch_size: int = 32, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Activations [n_kept, d] at ``hooks`` for the positions where ``keep`` [batch, pos] is true.

    Pass ``attention_mask`` [batch, pos] (1 on real tokens) when ``tokens`` are padded, e.g. a
    world batch's ``batch.attention_mask``.
    """
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for start in range(0, len(tokens), batch_size):
        mask = None if attention_mask is None else attention_mask[start:start + batch_size]
        _, cache = model.run_with_cache(tokens[start:start + batch_size], names=list(hooks), return_logits=False,
                                        device="cpu", attention_mask=mask)
        mask = keep[start:start + batch_size].bool()
        for h in hooks:
            out[h].append(cache[h][mask].flatten(1).float())
    return {h: torch.cat(v) for h, v in out.items()}


def layer_sweep(model: Any, tokens: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                hook_template: str = "blocks.{layer}.hook_resid_post", attention_mask: torch.Tensor | None = None,
                **probe_kwargs: Any) -> dict[str, Any]:
    """Probe accuracy and AUROC at every layer, plus a plotly figure of them by layer.

    ``labels`` and ``keep`` are [batch, pos]: the label of each token and which tokens to
    use. Tokens of one sequence are kept on the same side of the split. ``attention_mask``
    marks the real tokens of padded ``tokens`` (see :func:`collect`).

    >>> sweep = layer_sweep(model, batch.tokens, batch.labels["topic"], batch.labels["topic"] >= 0,
    ...                     attention_mask=batch.attention_mask)
    >>> sweep["figure"].show()
    """
    hooks = [hook_template.format(layer=layer) for layer in range(model.n_layers)]
    acts = collect(model, tokens, hooks, keep, attention_mask=attention_mask)
    keep = keep.bool()
    groups = torch.arange(len(tokens))[:, None].expand_as(keep)[keep]
    results = probe_hooks(acts, labels[keep], groups, **probe_kwargs)
    return {"results": {h: asdict(r) for h, r in results.items()}, "figure": accuracy_figure(results)}


def accuracy_figure(results: dict[str, ProbeResult], title: str = "Probe accuracy by layer") -> Any:
    """A plotly line chart of held-out accuracy and AUROC per hook."""
    import plotly.graph_objects as go

    names = list(results)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=names, y=[results[n].accuracy for n in names], mode="lines+markers", name="accuracy"))
    fig.add_trace(go.Scatter(x=names, y=[results[n].auroc for n in names], mode="lines+markers", name="AUROC"))
    fig.update_layout(title=title, xaxis_title="hook", yaxis_title="held-out score", yaxis_range=[0, 1.05])
    return fig
