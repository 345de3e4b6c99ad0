"""Initialisation from data: geometric median for b_dec, the input normalisation scale."""
from __future__ import annotations

import math

import torch


def geometric_median(x: torch.Tensor, iters: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to the rows of ``x``.

    ``x [n, d]`` -> ``[d]``. Robust to outliers where the mean is not, which is why b_dec
    starts here (Gao et al.).

    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    >>> geometric_median(x).norm().item() < 1.0     # the outlier barely moves it
    True
    """
    x = x.detach().to(torch.float64)
    m = x.mean(0)
    for _ in range(iters):
        dist = (x - m).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        new = (w[:, None] * x).sum(0) / w.sum()
        moved = (new - m).norm()
        m = new
        if moved <= tol * max(1.0, float(m.norm())):
            break
    return m


def normalisation_scale(x: torch.Tensor) -> float:
    """The constant ``s`` with ``mean ||s (x - mean x)||^2 = d`` on the sample ``x [n, d]``.

    Measured from the rows' mean, not from zero: an offset shared by every row (b_dec takes
    it) would otherwise set the scale and squash what varies (rows offset by 1e6 would train
    at a spread of 1e-6). Rows that do not vary fall back on ``mean ||s x||^2 = d``. Kept
    within 1e-36..1e36, so that the scale and the weights it is folded into stay float32.
    """
    x = x.detach().to(torch.float64)
    ms = (x - x.mean(0)).pow(2).sum(-1).mean().item() if x.shape[0] > 1 else 0.0
    if not ms > 0:
        ms = x.pow(2).sum(-1).mean().item()
    if not ms > 0:
        return 1.0
    return min(max(math.sqrt(x.shape[-1] / ms), 1e-36), 1e36)
