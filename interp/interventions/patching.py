"""Activation patching, attribution patching, subspace patching and the illusion check.

Patching runs a *base* prompt while replacing one activation with the one from a *source*
run and records a metric. The default direction is denoising: base = corrupted, source =
clean, so a cell's score says how much of the clean behaviour that one activation restores:
``(metric_patched − metric_corrupted) / (metric_clean − metric_corrupted)``.

>>> result = activation_patching(model, clean, corrupted, logit_diff(correct, wrong))
>>> heatmap(result).write_html("patching.html")
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [batch, pos, vocab] -> scalar


def logit_diff(correct: int | torch.Tensor, wrong: int | torch.Tensor, position: int = -1) -> Metric:
    """Mean over the batch of ``logit[correct] − logit[wrong]`` at ``position``."""
    correct_t, wrong_t = torch.as_tensor(correct), torch.as_tensor(wrong)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, position]
        rows = torch.arange(len(last), device=last.device)
        c = correct_t.to(last.device).expand(len(last))
        w = wrong_t.to(last.device).expand(len(last))
        return (last[rows, c] - last[rows, w]).mean()

    return metric


@dataclass
class PatchingResult:
    """Normalised scores ``[rows, cols]`` with their labels and the two reference metrics."""

    scores: torch.Tensor
    row_labels: list[str]
    col_labels: list[str]
    clean: float
    corrupted: float
    raw: torch.Tensor = field(repr=False, default=None)  # metric values before normalising
    title: str = "activation patching"


def _normalise(raw: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    gap = clean - corrupted
    if abs(gap) < 1e-12:
        raise ValueError("clean and corrupted runs give the same metric; patching has nothing to restore")
    return (raw - corrupted) / gap


def _check_pair(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean tokens have shape {tuple(clean.shape)} but corrupted ones {tuple(corrupted.shape)}; "
                         "patching needs prompts of the same length")


@torch.no_grad()
def activation_patching(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                        hook_template: str = "blocks.{layer}.hook_resid_pre", layers: Sequence[int] | None = None,
                        per_position: bool = True) -> PatchingResult:
    """Patch clean activations into the corrupted run over layer × position.

    With ``per_position=False`` the whole hook (every position) is patched per layer.
    ``hook_template`` names the hook per layer, e.g. ``blocks.{layer}.hook_attn_out``.
    """
    _check_pair(clean, corrupted)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    hooks = [hook_template.format(layer=layer) for layer in layers]
    clean_logits, cache = model.run_with_cache(clean, names=hooks)
    clean_m, corrupt_m = float(metric(clean_logits)), float(metric(model(corrupted)))
    positions = range(clean.shape[-1]) if per_position else [None]
    raw = torch.zeros(len(hooks), len(positions))
    for i, hook in enumerate(hooks):
        for j, pos in enumerate(positions):
            raw[i, j] = float(metric(_run_patched(model, corrupted, hook, cache[hook], pos)))
    cols = [f"{p}" for p in positions] if per_position else ["all"]
    return PatchingResult(_normalise(raw, clean_m, corrupt_m), hooks, cols, clean_m, corrupt_m, raw,
                          title=f"activation patching at {hook_template}")


def _run_patched(model: Any, tokens: torch.Tensor, hook: str, source: torch.Tensor, pos: int | None,
                 head: int | None = None) -> torch.Tensor:
    def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        index = (slice(None), slice(None) if pos is None else pos)
        if head is not None:
            index = (*index, head)
        x[index] = source.to(x.dtype)[index]
        return x

    with model.hooks([(hook, patch)]):
        return model(tokens)


@torch.no_grad()
def head_patching(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                  layers: Sequence[int] | None = None) -> PatchingResult:
    """Patch each attention head's output (``attn.hook_z``, all positions): [layers, heads]."""
    _check_pair(clean, corrupted)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    clean_logits, cache = model.run_with_cache(clean, names=hooks)
    clean_m, corrupt_m = float(metric(clean_logits)), float(metric(model(corrupted)))
    n_heads = cache[hooks[0]].shape[2]
    raw = torch.zeros(len(hooks), n_heads)
    for i, hook in enumerate(hooks):
        for h in range(n_heads):
            raw[i, h] = float(metric(_run_patched(model, corrupted, hook, cache[hook], None, head=h)))
    return PatchingResult(_normalise(raw, clean_m, corrupt_m), hooks, [f"H{h}" for h in range(n_heads)],
                          clean_m, corrupt_m, raw, title="head patching (attn.hook_z)")


def attribution_patching(model: Any, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric,
                         hook_template: str = "blocks.{layer}.hook_resid_pre",
                         layers: Sequence[int] | None = None) -> PatchingResult:
    """The gradient approximation: ``(a_clean − a_corrupt) · ∂metric/∂a`` at the corrupted run.

    One forward and one backward pass instead of one run per cell; compare with
    :func:`activation_patching` before trusting it on a new model.
    """
    _check_pair(clean, corrupted)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    hooks = [hook_template.format(layer=layer) for layer in layers]
    clean_logits, clean_cache = model.run_with_cache(clean, names=hooks)
    acts: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> torch.Tensor:
        if not x.requires_grad:  # frozen weights: make the first hooked activation a leaf
            x = x.detach().requires_grad_(True)
        acts[hook.name] = x
        return x

    with torch.enable_grad(), model.hooks([(h, keep) for h in hooks]):
        corrupt_value = metric(model(corrupted))
        # autograd.grad, not backward(): nothing accumulates in the model's parameters.
        grads = torch.autograd.grad(corrupt_value, [acts[h] for h in hooks])
    clean_m, corrupt_m = float(metric(clean_logits)), corrupt_value.item()
    raw = torch.stack([((clean_cache[h] - acts[h].detach()) * g).flatten(2).sum(-1).sum(0)
                       for h, g in zip(hooks, grads)]) + corrupt_m
    return PatchingResult(_normalise(raw, clean_m, corrupt_m), hooks, [f"{p}" for p in range(clean.shape[-1])],
                          clean_m, corrupt_m, raw, title=f"attribution patching at {hook_template}")


def heatmap(result: PatchingResult, tokens: Sequence[str] | None = None) -> Any:
    """A plotly heat map of the normalised scores (rows: hooks, columns: positions or heads)."""
    import plotly.graph_objects as go

    cols = list(tokens) if tokens is not None else result.col_labels
    if tokens is not None:
        cols = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=result.scores.tolist(), x=cols, y=result.row_labels, colorscale="RdBu",
                               zmid=0, colorbar={"title": "restored"}))
    fig.update_layout(title=f"{result.title} (clean {result.clean:.3g}, corrupted {result.corrupted:.3g})",
                      yaxis={"autorange": "reversed"})
    return fig


# -- subspaces -------------------------------------------------------------------------------
def subspace_patch(h_base: torch.Tensor, h_source: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``h_base + U Uᵀ (h_source − h_base)`` for ``U`` [d, r] (orthonormalised here)."""
    Q = torch.linalg.qr(U.reshape(U.shape[0], -1).to(h_base.dtype)).Q
    return h_base + (h_source - h_base) @ Q @ Q.T


@torch.no_grad()
def patch_subspace(model: Any, base: torch.Tensor, source: torch.Tensor, hook: str, U: torch.Tensor,
                   metric: Metric, position: int | None = -1) -> float:
    """The metric of the base run with the source's projection onto ``U`` patched in at ``hook``."""
    _check_pair(base, source)
    _, cache = model.run_with_cache(source, names=[hook], return_logits=False)
    source_acts = cache[hook]

    def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x = x.clone()
        index = (slice(None), slice(None) if position is None else position)
        x[index] = subspace_patch(x[index], source_acts.to(x.dtype)[index], U)
        return x

    with model.hooks([(hook, patch)]):
        return float(metric(model(base)))


@dataclass
class IllusionReport:
    """The figures behind the verdict of :func:`illusion_check`."""

    verdict: str  # "faithful", "illusory" or "inconclusive"
    reasons: list[str]
    effect_direction: float  # metric change from patching along v
    effect_rowspace: float  # ... along v's rowspace part only
    effect_nullspace: float  # ... along v's nullspace part only
    effect_component: float  # ... patching the whole activation
    rowspace_fraction: float  # ‖v_row‖ / ‖v‖
    rowspace_coordinate_gap: float  # mean |(h_src − h_base) · v_row/‖v_row‖|
    nullspace_coordinate_gap: float
    rowspace_effect_ratio: float  # effect_rowspace / effect_direction; faithful near 1 (nan if no effect)


def illusion_check(run: Callable[[torch.Tensor], torch.Tensor], h_base: torch.Tensor, h_source: torch.Tensor,
                   v: torch.Tensor, readout: torch.Tensor, tolerance: float = 0.25,
                   effect_tolerance: float = 0.5) -> IllusionReport:
    """Is the effect of patching along ``v`` real, or the subspace-patching illusion?

    ``run(h) -> metric`` finishes the forward pass from activations ``h`` [n, d];
    ``readout`` [k, d] is what downstream reads of ``h`` (e.g. ``W_out`` for MLP neurons, as
    rows), so its rowspace is what can matter and its nullspace is dormant. Following Makelov
    et al. (2024), ``v`` is split into ``v_row + v_null`` and each part is patched alone.

    A faithful direction's rowspace part reproduces the direction's effect: neither far less
    (the effect came from the nullspace part activating a dormant pathway) nor far more (the
    rowspace part picks up a real feature that ``v`` itself only half touches, so the whole
    does something different from its readable part). The test is two-sided: the ratio
    ``effect_rowspace / effect_direction`` must lie within ``[1/(1 + effect_tolerance),
    1 + effect_tolerance]`` (default 0.5: between 2/3 and 1.5, same sign). A direction that is
    entirely in the rowspace has ratio 1; under a linear read-out, one whose nullspace part is
    constant in the data has ratio ‖v‖²/‖v_row‖², so the default admits such a part up to 58% of
    ‖v‖ (rowspace fraction ≥ 0.82). Also flagged, at ``tolerance``: a rowspace coordinate that
    barely differs between source and base (against the nullspace one), and a large direction
    effect where patching the whole component does little.
    """
    v = v.reshape(-1).to(h_base.dtype)
    P_row = torch.linalg.pinv(readout.to(h_base.dtype)) @ readout.to(h_base.dtype)  # projector onto rowspace
    v_row, v_null = P_row @ v, v - P_row @ v
    base = float(run(h_base))

    def effect(direction: torch.Tensor) -> float:
        if float(direction.norm()) < 1e-8:
            return 0.0
        return float(run(subspace_patch(h_base, h_source, direction[:, None]))) - base

    def gap(direction: torch.Tensor) -> float:
        if float(direction.norm()) < 1e-8:
            return 0.0
        return float(((h_source - h_base) @ (direction / direction.norm())).abs().mean())

    e_dir, e_row, e_null = effect(v), effect(v_row), effect(v_null)
    e_comp = float(run(h_source)) - base
    row_gap, null_gap = gap(v_row), gap(v_null)
    scale = max(abs(e_dir), 1e-12)
    ratio = e_row / e_dir if abs(e_dir) >= 1e-6 else float("nan")
    reasons = []
    if ratio < 1 / (1 + effect_tolerance):
        reasons.append(f"patching only the rowspace part keeps {ratio:.0%} of the effect "
                       f"({e_row:.3g} vs {e_dir:.3g}); the rest comes from the nullspace part")
    elif ratio > 1 + effect_tolerance:
        reasons.append(f"patching only the rowspace part does {ratio:.0%} of the effect ({e_row:.3g} vs "
                       f"{e_dir:.3g}): the readable part carries more than the direction patches")
    if row_gap < tolerance * max(row_gap, null_gap, 1e-12):
        reasons.append(f"the rowspace coordinate barely differs between source and base ({row_gap:.3g} vs "
                       f"{null_gap:.3g} in the nullspace)")
    if abs(e_comp) < tolerance * scale:
        reasons.append(f"patching the whole component moves the metric by {e_comp:.3g}, the direction by {e_dir:.3g}")
    if abs(e_dir) < 1e-6:
        verdict, reasons = "inconclusive", ["patching along the direction has no effect to explain"]
    else:
        verdict = "illusory" if reasons else "faithful"
    return IllusionReport(verdict, reasons, e_dir, e_row, e_null, e_comp, float(v_row.norm() / v.norm()), row_gap,
                          null_gap, ratio)
