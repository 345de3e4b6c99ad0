"""Metrics for SAEs: reconstruction, sparsity, and ground-truth recovery.

* :func:`fvu`, :func:`l0`, :func:`dead_fraction`, :func:`evaluate`: what every SAE reports;
  :class:`ReconstructionStats` streams the same numbers over batches.
* :func:`mmcs`, :func:`hungarian_cosine`: recovery of known directions (planted data).
* :func:`absorption_rate`: how often a parent feature's latent stays silent when one of
  its children is present (feature absorption), against a known hierarchy.
* :func:`auroc`, :func:`auroc_coverage`: single-latent detection of labelled concepts.
* :func:`linear_sum_assignment`: an exact Hungarian solver (no scipy needed).

All functions take tensors and return Python floats or small dataclasses.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saes.architectures.base import SAE
from saes.errors import ShapeMismatchError

# ------------------------------------------------------------ reconstruction


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.

    >>> import torch
    >>> x = torch.randn(100, 4)
    >>> fvu(x, x), round(fvu(x, x.mean(0).expand_as(x)), 6)
    (0.0, 1.0)
    """
    x = x.detach().reshape(-1, x.shape[-1]).double()
    x_hat = x_hat.detach().reshape(-1, x_hat.shape[-1]).double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-30))


def _dense(codes: torch.Tensor | tuple[torch.Tensor, torch.Tensor], d_sae: int | None = None) -> torch.Tensor:
    if isinstance(codes, tuple):
        values, indices = codes
        n = d_sae if d_sae is not None else int(indices.max()) + 1
        z = torch.zeros(values.shape[0], n, dtype=torch.float32, device=values.device)
        return z.scatter_add(1, indices, values.float())
    return codes.reshape(-1, codes.shape[-1])


def l0(codes: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean number of non-zero latents per token, from dense ``z [N, d_sae]`` or (values, indices)."""
    z = _dense(codes)
    return float((z != 0).sum(-1).float().mean())


def dead_fraction(z: torch.Tensor) -> float:
    """Fraction of latents that never fire on the codes ``z [N, d_sae]``."""
    z = z.reshape(-1, z.shape[-1])
    return float(((z != 0).sum(0) == 0).float().mean())


class ReconstructionStats:
    """FVU, MSE, L0 and dead fraction accumulated batch by batch, in float64 sums.

    One pass over any number of batches with memory of one ``[d_in]`` and one ``[d_sae]``
    vector: :func:`evaluate` feeds it a tensor's batches, model-level evaluation feeds it
    the activations it splices.
    """

    def __init__(self, d_sae: int) -> None:
        self.err = 0.0  # summed squared reconstruction error
        self.sum_sq = 0.0  # summed squared activations
        self.sum_x: torch.Tensor | None = None  # [d_in] float64: summed activations
        self.nnz = 0.0  # non-zero codes
        self.fired = torch.zeros(d_sae, dtype=torch.bool)
        self.rows = 0

    @torch.no_grad()
    def add(self, sae: Any, x: torch.Tensor, target: torch.Tensor | None = None, **encode_options: Any) -> None:
        """Encode and decode the rows ``x [n, d_in]`` (float32, on the dictionary's device) and
        add them to the sums. ``sae`` is any dictionary with ``encode_sparse``/``decode_sparse``.
        A transcoder's output (its skip path included) is compared with ``target [n, d_out]``,
        the output hook's rows of the same tokens."""
        v, i = sae.encode_sparse(x, **encode_options)
        x_hat = sae.decode_sparse(v, i).float()
        if target is not None:
            x_hat, x = sae.add_skip(x_hat, x).float(), target
        self.err += float((x - x_hat).double().pow(2).sum())
        xs = x.double()
        self.sum_x = xs.sum(0) if self.sum_x is None else self.sum_x + xs.sum(0)
        self.sum_sq += float(xs.pow(2).sum())
        z = torch.zeros(x.shape[0], sae.d_sae, device=x.device).scatter_add_(1, i, v.float())
        self.nnz += float((z != 0).sum())
        self.fired |= (z != 0).any(0).cpu()
        self.rows += x.shape[0]

    def result(self) -> dict[str, float]:
        """``fvu``, ``mse``, ``l0``, ``dead_fraction`` (never fired on these rows), ``tokens``."""
        if self.rows == 0 or self.sum_x is None:
            raise ShapeMismatchError("no data rows were added; add at least one batch before asking for metrics")
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.rows
        return {
            "fvu": self.err / max(total_var, 1e-30),
            "mse": self.err / self.rows,
            "l0": self.nnz / self.rows,
            "dead_fraction": float((~self.fired).float().mean()),
            "tokens": float(self.rows),
        }


@torch.no_grad()
def evaluate(sae: SAE, data: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 4096, **encode_options: Any) -> dict[str, float]:
    """FVU, L0, dead fraction and MSE of ``sae`` over ``data`` (``[N, d_in]`` or batches).

    ``encode_options`` go to ``encode_sparse`` (e.g. ``k=`` or ``threshold=``). The dead
    fraction here means "never fired on this data".
    """
    if isinstance(data, torch.Tensor):
        data = data.reshape(-1, data.shape[-1])
        batches: Iterable[torch.Tensor] = (data[i : i + batch_size] for i in range(0, data.shape[0], batch_size))
    else:
        batches = data
    stats = ReconstructionStats(sae.d_sae)
    for x in batches:
        stats.add(sae, x.reshape(-1, sae.d_in).to(sae.device, torch.float32), **encode_options)
    if stats.rows == 0:
        raise ShapeMismatchError("evaluate() got no data rows")
    return stats.result()


# ------------------------------------------------------- direction recovery


def cosine_matrix(true_dirs: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``[m, n]`` cosine similarities of true directions ``[m, d]`` to decoder rows ``[n, d]``."""
    if true_dirs.shape[-1] != W_dec.shape[-1]:
        raise ShapeMismatchError(
            f"true directions are [m, {true_dirs.shape[-1]}] but decoder rows are [n, {W_dec.shape[-1]}]; "
            "both must live in the same d_in-dimensional space"
        )
    a = true_dirs.double()
    b = W_dec.detach().double()
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return (a @ b.T).cpu()


def mmcs(true_dirs: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean over true directions of the best cosine with any decoder row.

    >>> import torch
    >>> D = torch.eye(4)
    >>> mmcs(D[:2], D)
    1.0
    """
    return float(cosine_matrix(true_dirs, W_dec).max(dim=1).values.mean())


def linear_sum_assignment(cost: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimum-cost assignment (Hungarian method with potentials, O(r^2 c)).

    Same contract as ``scipy.optimize.linear_sum_assignment`` for a rectangular ``cost
    [r, c]``: returns ``(rows, cols)`` with ``min(r, c)`` pairs, rows ascending.

    >>> import numpy as np
    >>> linear_sum_assignment(np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]]))
    (array([0, 1, 2]), array([1, 0, 2]))
    """
    c = np.asarray(cost.detach().cpu().numpy() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    if c.ndim != 2:
        raise ShapeMismatchError(f"cost must be a 2-D matrix, got shape {list(c.shape)}")
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # 1-based arrays as in the classic formulation; column 0 is a virtual start.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row assigned to column j (0 = none)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = c[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            used_idx = np.nonzero(used)[0]
            u[p[used_idx]] += delta
            v[used_idx] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.nonzero(p[1:])[0]
    rows = p[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def hungarian_cosine(true_dirs: torch.Tensor, W_dec: torch.Tensor) -> float:
    """Mean cosine of the best one-to-one matching of true directions to decoder rows.

    Unlike :func:`mmcs`, two true features cannot both claim the same latent.
    """
    cos = cosine_matrix(true_dirs, W_dec).numpy()
    rows, cols = linear_sum_assignment(-cos)
    # Unmatched true directions (more true features than latents) count as 0.
    return float(cos[rows, cols].sum() / cos.shape[0])


# ---------------------------------------------------------------- absorption


@dataclass
class AbsorptionReport:
    """Result of :func:`absorption_rate`.

    Attributes:
        rate: over all tokens where some child is present, the fraction where its parent's
            latent is silent.
        per_parent: parent feature -> that parent's rate.
        parent_latents: parent feature -> the latent taken as its detector.
        tokens: tokens with a child present (the denominator).
    """

    rate: float
    per_parent: dict[int, float]
    parent_latents: dict[int, int]
    tokens: int


def absorption_rate(
    codes: torch.Tensor,
    labels: torch.Tensor,
    hierarchy: Mapping[int, Sequence[int]],
    *,
    W_dec: torch.Tensor | None = None,
    directions: torch.Tensor | None = None,
    parent_latents: Mapping[int, int] | None = None,
) -> AbsorptionReport:
    """How often each parent's latent stays silent when one of its children is present.

    Args:
        codes: ``[N, d_sae]`` dense SAE codes of the tokens.
        labels: ``[N, m]`` bool, which true features are present per token.
        hierarchy: parent feature -> its child features (indices into ``labels``).
        W_dec, directions: decoder rows ``[d_sae, d]`` and true directions ``[m, d]``;
            used to pick each parent's latent as the decoder row closest (cosine) to the
            parent's direction.
        parent_latents: or give parent feature -> latent explicitly.

    A parent whose latent fires with every child scores 0; a parent absorbed into its
    children (its latent fires only when the parent appears alone) scores near 1.
    """
    codes = codes.reshape(-1, codes.shape[-1])
    labels = labels.reshape(-1, labels.shape[-1]).bool()
    if codes.shape[0] != labels.shape[0]:
        raise ShapeMismatchError(f"codes have {codes.shape[0]} rows but labels {labels.shape[0]}; pass the same tokens")
    if parent_latents is None:
        if W_dec is None or directions is None:
            raise ShapeMismatchError("absorption_rate needs parent_latents, or W_dec and directions to find them")
        cos = cosine_matrix(directions[list(hierarchy)], W_dec)
        parent_latents = {p: int(cos[i].argmax()) for i, p in enumerate(hierarchy)}
    silent_total, present_total = 0, 0
    per_parent: dict[int, float] = {}
    for p, children in hierarchy.items():
        child_on = labels[:, list(children)].any(-1)
        n = int(child_on.sum())
        if n == 0:
            continue
        silent = int((codes[child_on, parent_latents[p]] <= 0).sum())
        per_parent[p] = silent / n
        silent_total += silent
        present_total += n
    rate = silent_total / present_total if present_total else float("nan")
    return AbsorptionReport(rate, per_parent, dict(parent_latents), present_total)


# --------------------------------------------------------------------- AUROC


def auroc(scores: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """AUROC of every column of ``scores [N, n]`` as a detector of ``labels [N]``.

    Exact with ties (ties count one half): Mann-Whitney U from average ranks. Returns
    ``[n]``; NaN when ``labels`` is all one class.

    >>> import torch
    >>> auroc(torch.tensor([[0.1], [0.4], [0.35], [0.8]]), torch.tensor([0, 0, 1, 1])).tolist()
    [0.75]
    """
    scores = scores.reshape(-1, scores.shape[-1]) if scores.ndim > 1 else scores[:, None]
    y = labels.reshape(-1).bool().cpu()
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    if n_pos == 0 or n_neg == 0:
        return out
    for a in range(0, scores.shape[1], chunk):
        s = scores[:, a : a + chunk].detach().double().cpu().T.contiguous()  # [c, N]
        sorted_s, _ = s.sort(dim=1)
        lo = torch.searchsorted(sorted_s, s, right=False)
        hi = torch.searchsorted(sorted_s, s, right=True)
        ranks = (lo + hi + 1).double() / 2  # average 1-based rank of each value
        r_pos = ranks[:, y].sum(1)
        out[a : a + chunk] = (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


@dataclass
class CoverageReport:
    """Result of :func:`auroc_coverage`.

    Attributes:
        coverage: fraction of concepts with some single latent at AUROC > threshold.
        best_auroc: ``[c]`` best single-latent AUROC per concept.
        best_latent: ``[c]`` the latent achieving it.
    """

    coverage: float
    best_auroc: torch.Tensor
    best_latent: torch.Tensor


def auroc_coverage(codes: torch.Tensor, labels: torch.Tensor, threshold: float = 0.9) -> CoverageReport:
    """Fraction of labelled concepts some single latent detects with AUROC > ``threshold``.

    Args:
        codes: ``[N, d_sae]`` SAE codes.
        labels: ``[N, c]`` bool, concept presence per token.
    """
    codes = codes.reshape(-1, codes.shape[-1])
    labels = labels.reshape(codes.shape[0], -1).bool()
    best = torch.empty(labels.shape[1], dtype=torch.float64)
    arg = torch.empty(labels.shape[1], dtype=torch.int64)
    for c in range(labels.shape[1]):
        a = auroc(codes, labels[:, c]).nan_to_num(0.0)
        best[c], arg[c] = a.max(), a.argmax()
    return CoverageReport(float((best > threshold).double().mean()), best, arg)
