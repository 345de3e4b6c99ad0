"""Label interpretability: how many live latents a planted label explains.

In place of an LLM judge (SAEBench's autointerp), each live latent is scored as a detector
of every binary label of a :class:`~interp.evaluation.dataset.LabelledActivations` (the
world's planted word classes, topics, sentiment, hierarchy nodes...): its activation is the
score, the label the truth, and the AUROC (Mann-Whitney, ties counted one half, the same
statistic as :func:`saes.metrics.auroc`) says how well it separates them.

* A latent is **live** when it fires (non-zero) on at least ``min_fires`` rows of the set.
* A label is **supported** when it has at least ``min_support`` positive and as many
  negative rows.
* A live latent is **explained** when some supported label reaches AUROC >= ``threshold``
  (0.9 by default: the coverage bar of METHODS.md).

Reported: the explained share of live latents (the headline), per latent its best labels
(AUROC, and the precision ``P(label | latent fires)``), per label its best latent (the
coverage of :func:`saes.metrics.auroc_coverage`, over supported labels), and the explained
share by label scope (token labels, a function of the word, against document labels,
which need the context).

AUROCs are computed for all latents and labels at once: every latent's column is ranked
once (average ranks over ties), and the positives' rank sums of all labels are one matrix
product, ``AUROC = (R_pos - P(P+1)/2) / (P N)``; tests check it against
:func:`saes.metrics.auroc`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from saes import TopKSAE

from interp.errors import InterpError
from interp.evaluation.dataset import LabelledActivations


@dataclass
class LabelInterpResult:
    """What :func:`label_interpretability` measures."""

    explained_fraction: float          # explained live latents / live latents
    n_live: int
    n_explained: int
    threshold: float
    min_support: int
    min_fires: int
    label_coverage: float              # supported labels with some latent at AUROC >= threshold
    n_labels: int                      # supported labels
    explained_fraction_by_scope: dict[str, float]
    # The same measurement on a random dictionary of the same family and shape (see
    # random_control); None when not measured. Read the headline against it.
    random_explained_fraction: float | None = None
    per_latent: list[dict[str, Any]] = field(default_factory=list)   # live latents, best labels first
    per_label: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def auroc_matrix(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[c, n]`` AUROC of every column of ``scores [N, n]`` for every column of ``labels [N, c]``.

    Exact with ties (average ranks); NaN for a label that is all one class.
    """
    scores = scores.reshape(scores.shape[0], -1).double()
    y = labels.reshape(labels.shape[0], -1).double()
    n = scores.shape[0]
    ranks = _average_ranks(scores)                     # [N, n]
    n_pos = y.sum(0)                                   # [c]
    n_neg = n - n_pos
    r_pos = y.T @ ranks                                # [c, n]
    out = (r_pos - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]
    out[(n_pos == 0) | (n_neg == 0)] = float("nan")
    return out


def _average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks within each column, ties sharing their average rank."""
    sorted_t, order = scores.T.contiguous().sort(dim=1)              # [n, N]
    lo = torch.searchsorted(sorted_t, sorted_t, right=False)
    hi = torch.searchsorted(sorted_t, sorted_t, right=True)
    ranks_t = torch.empty_like(sorted_t).scatter_(1, order, (lo + hi + 1).to(sorted_t.dtype) / 2)
    return ranks_t.T


@torch.no_grad()
def encode_dense(sae: Any, acts: torch.Tensor, batch_size: int = 4096, latents: torch.Tensor | None = None) -> torch.Tensor:
    """Dense codes ``[N, d_sae]`` (or only the columns ``latents``) in float32, batch by batch."""
    device = getattr(sae, "device", torch.device("cpu"))
    cols = None if latents is None else torch.as_tensor(latents, dtype=torch.int64)
    parts = []
    for a in range(0, acts.shape[0], batch_size):
        v, i = sae.encode_sparse(acts[a: a + batch_size].to(device, torch.float32))
        z = torch.zeros(v.shape[0], sae.d_sae).scatter_add_(1, i.cpu(), v.float().cpu())
        parts.append(z if cols is None else z[:, cols])
    if not parts:
        raise InterpError("the evaluation set has no rows; build it from at least one document")
    return torch.cat(parts)


@torch.no_grad()
def random_control(sae: Any, k: int, seed: int = 0) -> Any:
    """The chance level for ``sae``: a TopK dictionary of its shape at ``k`` latents per token
    (its mean L0), with the weights a training run starts from (random unit decoder rows,
    the encoder their transpose) drawn from ``seed``, and ``sae``'s decoder bias, so both
    centre the data alike. A TopK control fits every family: a random JumpReLU or BatchTopK
    threshold has no meaning before training.

    Residual-stream latents track token identity, so even random directions separate some
    token labels: label interpretability means something only above this control.
    """
    control = TopKSAE(sae.d_in, sae.d_sae, k=max(1, min(int(k), sae.d_sae - 1)))
    control.reset_parameters(torch.Generator().manual_seed(seed))
    control.b_dec.copy_(torch.as_tensor(sae.b_dec).detach().float().cpu())
    control.apply_b_dec_to_input = bool(getattr(sae, "apply_b_dec_to_input", True))
    return control


def label_interpretability(
    sae: Any,
    data: LabelledActivations,
    *,
    threshold: float = 0.9,
    min_support: int = 20,
    min_fires: int = 5,
    top_n: int = 3,
    labels: list[str] | None = None,
    codes: torch.Tensor | None = None,
    chunk: int = 512,
    random_control_seed: int | None = None,
) -> LabelInterpResult:
    """The share of live latents some planted label explains (AUROC >= ``threshold``).

    Args:
        sae: the dictionary (``encode_sparse``, ``d_sae``); not used when ``codes`` is given.
        data: the labelled set; its binary ``labels`` are the candidate explanations.
        threshold: the AUROC a label must reach to explain a latent.
        min_support: positives (and negatives) a label needs to count.
        min_fires: rows a latent must fire on to count as live.
        top_n: best labels kept per latent.
        labels: restrict to these label names (default: all).
        codes: precomputed dense codes ``[N, d_sae]`` of ``data.acts``.
        chunk: latents ranked at once (bounds memory to ``N x chunk`` ranks).
        random_control_seed: also measure :func:`random_control` of ``sae`` at its mean L0 on
            ``data``, drawn from this seed (``random_explained_fraction``); None skips it.
    """
    y, names = data.label_matrix(labels)
    pos = y.sum(0)
    supported = (pos >= min_support) & (len(data) - pos >= min_support)
    y, names = y[:, supported], [n for n, s in zip(names, supported.tolist()) if s]
    if not names:
        raise InterpError(f"no label has {min_support} positive and negative rows; lower min_support or use a "
                          "larger evaluation set")
    z = encode_dense(sae, data.acts) if codes is None else torch.as_tensor(codes).float()
    if z.shape[0] != len(data):
        raise InterpError(f"codes have {z.shape[0]} rows but the set has {len(data)}; encode data.acts")
    fires = (z != 0).sum(0)
    live = (fires >= min_fires).nonzero()[:, 0]
    best_auc = torch.full((len(names),), float("nan"), dtype=torch.float64)
    best_lat = torch.full((len(names),), -1, dtype=torch.int64)
    per_latent: list[dict[str, Any]] = []
    scopes = [data.scopes.get(n, "given") for n in names]
    explained_scope: dict[str, int] = {}
    yd = y.double()
    for a in range(0, len(live), chunk):
        cols = live[a: a + chunk]
        auc = auroc_matrix(z[:, cols], y)                                    # [c, k]
        on = (z[:, cols] != 0).double()
        precision = (yd.T @ on) / on.sum(0).clamp_min(1)                    # [c, k]
        a_fill = auc.nan_to_num(-1.0)
        col_best, col_arg = a_fill.max(1)
        better = col_best > best_auc.nan_to_num(-1.0)
        best_auc[better], best_lat[better] = col_best[better], cols[col_arg[better]]
        top = a_fill.topk(min(top_n, len(names)), dim=0)
        for k, latent in enumerate(cols.tolist()):
            best = [{"label": names[int(c)], "auroc": float(auc[c, k]), "precision": float(precision[c, k]),
                     "scope": scopes[int(c)]} for c in top.indices[:, k].tolist()]
            explained = best[0]["auroc"] >= threshold
            if explained:
                explained_scope[best[0]["scope"]] = explained_scope.get(best[0]["scope"], 0) + 1
            per_latent.append({"latent": latent, "density": float(fires[latent]) / len(data), "explained": explained,
                               "best": best})
    n_live, n_exp = len(live), sum(p["explained"] for p in per_latent)
    per_label = {n: {"best_latent": int(best_lat[c]), "auroc": float(best_auc[c]), "positives": int(pos[supported][c]),
                     "scope": scopes[c]} for c, n in enumerate(names)}
    chance = None
    if random_control_seed is not None:
        l0 = round(float((z != 0).sum(1).float().mean()))
        chance = label_interpretability(random_control(sae, l0, random_control_seed), data, threshold=threshold,
                                        min_support=min_support, min_fires=min_fires, top_n=1, labels=labels,
                                        chunk=chunk).explained_fraction
    return LabelInterpResult(
        explained_fraction=n_exp / n_live if n_live else float("nan"), n_live=n_live, n_explained=n_exp,
        random_explained_fraction=chance,
        threshold=threshold, min_support=min_support, min_fires=min_fires,
        label_coverage=float((best_auc.nan_to_num(0.0) >= threshold).double().mean()), n_labels=len(names),
        explained_fraction_by_scope={s: c / n_live for s, c in sorted(explained_scope.items())} if n_live else {},
        per_latent=sorted(per_latent, key=lambda p: -p["best"][0]["auroc"]), per_label=per_label,
    )
