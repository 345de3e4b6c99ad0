"""Scores for probes: accuracy and (one-vs-rest) AUROC.

The exact tie-aware AUROC lives in :mod:`saes.metrics` (SAE coverage uses it too); this
module adapts it to probe outputs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from saes.metrics import auroc as column_auroc
from saes.metrics import auroc_coverage as coverage  # noqa: F401  (re-exported as probes.coverage)


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC of ``scores`` [n] for boolean ``positive`` [n] (Mann-Whitney, ties counted half)."""
    return float(column_auroc(torch.as_tensor(scores).flatten()[:, None], torch.as_tensor(positive).flatten())[0])


def auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary AUROC from [n, 2] or [n] scores; macro one-vs-rest for more classes."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels).long()
    if logits.ndim == 1:
        return binary_auroc(logits, labels == 1)
    if logits.shape[1] == 2:
        return binary_auroc(logits[:, 1] - logits[:, 0], labels == 1)
    present = [c for c in range(logits.shape[1]) if (labels == c).any() and (labels != c).any()]
    return float(sum(binary_auroc(logits[:, c], labels == c) for c in present) / max(len(present), 1))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class (or positive score, for [n] scores) is right."""
    pred = logits.argmax(1) if logits.ndim == 2 else (logits > 0).long()
    return float((pred == labels).float().mean())


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]" if self.n else "n/a (no values)"


def mean_interval(values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                  method: str = "bootstrap") -> Interval:
    """The mean of ``values`` with an interval; NaNs are left out and ``n`` counts the rest.

    ``method="bootstrap"``: percentile bootstrap (``n_boot`` resamples, fixed ``seed``, so a
    rerun prints the same figures); it stays inside [0, 1] for shares near 0 or 1 and suits
    many values (prompts x samples). ``method="t"``: Student's t interval, for a handful of
    values such as one figure per training seed, where resampling three values means little.
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level}: an interval's coverage lies strictly between 0 and 1")
    if method not in ("bootstrap", "t"):
        raise ValueError(f"method={method!r}: use 'bootstrap' or 't'")
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    v = v[~v.isnan()]
    if len(v) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if method == "t":
        if level != 0.95:
            raise ValueError(f"level={level}: the t interval is tabulated for level=0.95 only; use the bootstrap")
        if len(v) < 2:
            return Interval(float(v.mean()), math.nan, math.nan, len(v))
        half = _t975(len(v) - 1) * float(v.std()) / math.sqrt(len(v))
        return Interval(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, len(v))
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(len(v), (n_boot, len(v)), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return Interval(float(v.mean()), lo, hi, len(v))


# Student's t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def _t975(df: int) -> float:
    """Two-sided 95% Student's t quantile (a table to 30, then z plus its first correction)."""
    return _T975[df - 1] if df <= len(_T975) else 1.95996 + 2.37 / df
