"""Seeded ground-truth activations for checking SAEs.

* :func:`superposition`: ``m`` features in ``d < m`` dimensions, each present with a
  power-law frequency and a random magnitude.
* :func:`tree`: a feature hierarchy. Each parent is present whenever one of its mutually
  exclusive children is (and sometimes alone); child directions are correlated with their
  parent's (``child_parent_cos``), hence with each other.
* :func:`mlp_factors`: SNMF's ground truth, MLP activations ``A = Y Z`` with sparse
  mixed-sign features ``Z`` and sparse non-negative coefficients ``Y``.

Both return :class:`SyntheticData` with activations ``x [N, d]``, unit directions
``[m, d]``, magnitudes ``codes [N, m]`` and presence ``labels [N, m]``, so recovery can be
scored with :mod:`saes.metrics`.

>>> from saes import synthetic
>>> data = synthetic.superposition(n_features=64, d=16, n_samples=1000, seed=0)
>>> data.x.shape, data.directions.shape, data.labels.shape
(torch.Size([1000, 16]), torch.Size([64, 16]), torch.Size([1000, 64]))
>>> t = synthetic.tree(n_parents=2, children_per_parent=3, d=16, n_samples=500, seed=0)
>>> bool((t.labels[:, t.children_of(0)].sum(-1) <= 1).all())     # children exclusive
True
>>> bool(t.labels[t.labels[:, t.children_of(0)].any(-1), 0].all())  # child => parent
True
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saes.errors import ConfigError


@dataclass
class SyntheticData:
    """Planted activations and their ground truth.

    Attributes:
        x: ``[N, d]`` activations ``codes @ directions (+ noise)``.
        directions: ``[m, d]`` unit feature directions.
        codes: ``[N, m]`` magnitudes (0 where absent).
        labels: ``[N, m]`` bool presence.
        frequencies: ``[m]`` how often each feature is present (superposition: the exact
            probability; tree: the empirical frequency in this sample).
        hierarchy: parent -> children (trees only; empty otherwise).
    """

    x: torch.Tensor
    directions: torch.Tensor
    codes: torch.Tensor
    labels: torch.Tensor
    frequencies: torch.Tensor
    hierarchy: dict[int, list[int]] = field(default_factory=dict)

    def children_of(self, parent: int) -> list[int]:
        return self.hierarchy[parent]

    @property
    def parents(self) -> list[int]:
        return list(self.hierarchy)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _magnitudes(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def superposition(
    n_features: int = 256,
    d: int = 64,
    n_samples: int = 50_000,
    *,
    seed: int = 0,
    mean_active: float = 4.0,
    exponent: float = 0.5,
    magnitude: tuple[float, float] = (0.5, 1.5),
    noise: float = 0.0,
) -> SyntheticData:
    """``n_features`` random unit directions in ``d`` dims with power-law frequencies.

    Args:
        mean_active: expected number of features present per sample.
        exponent: feature ``i`` is present with probability proportional to
            ``(i + 1) ** -exponent`` (clipped to 1), scaled so the expected count is
            ``mean_active``.
        magnitude: present features get a magnitude uniform in this range.
        noise: standard deviation of isotropic Gaussian noise added to ``x``.
    """
    if n_features < 1 or d < 1 or n_samples < 1:
        raise ConfigError("n_features, d and n_samples must be positive")
    if not 0 < mean_active <= n_features:
        raise ConfigError(f"mean_active={mean_active} must be in (0, n_features={n_features}]")
    g = torch.Generator().manual_seed(seed)
    directions = _unit(torch.randn(n_features, d, generator=g))
    raw = (torch.arange(n_features, dtype=torch.float64) + 1) ** -exponent
    p = (raw * mean_active / raw.sum()).clamp(max=1.0).float()
    labels = torch.rand(n_samples, n_features, generator=g) < p
    codes = _magnitudes((n_samples, n_features), *magnitude, g) * labels
    x = codes @ directions
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    return SyntheticData(x, directions, codes, labels, p)


def tree(
    n_parents: int = 8,
    children_per_parent: int = 4,
    d: int = 64,
    n_samples: int = 50_000,
    *,
    seed: int = 0,
    parent_prob: float = 0.15,
    child_given_parent: float = 0.8,
    child_parent_cos: float = 0.5,
    magnitude: tuple[float, float] = (0.5, 1.5),
    noise: float = 0.0,
) -> SyntheticData:
    """Two-level hierarchies: parent ``p`` with mutually exclusive children.

    Features ``0 .. n_parents-1`` are the parents; parent ``p``'s children follow in
    blocks (``hierarchy[p]``). Per sample and tree: the parent is present with
    ``parent_prob``; given the parent, one child (uniformly) is present with
    ``child_given_parent``, else none. So a child never appears without its parent and
    siblings never co-occur.

    Child directions are ``c = child_parent_cos * d_parent + sqrt(1 - cos^2) * u`` with
    ``u`` a random unit vector orthogonal to ``d_parent``: children of one parent share
    the parent component (siblings have cosine about ``cos^2``) and differ in
    ``u``. Parents are random unit directions.
    """
    if n_parents < 1 or children_per_parent < 1:
        raise ConfigError("n_parents and children_per_parent must be positive")
    if not -1 < child_parent_cos < 1:
        raise ConfigError(f"child_parent_cos={child_parent_cos} must be in (-1, 1)")
    if not (0 <= parent_prob <= 1 and 0 <= child_given_parent <= 1):
        raise ConfigError("parent_prob and child_given_parent are probabilities in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    parents = _unit(torch.randn(n_parents, d, generator=g))
    m = n_parents * (1 + children_per_parent)
    directions = torch.empty(m, d)
    directions[:n_parents] = parents
    hierarchy: dict[int, list[int]] = {}
    nxt = n_parents
    for p in range(n_parents):
        u = torch.randn(children_per_parent, d, generator=g)
        u = _unit(u - (u @ parents[p])[:, None] * parents[p])  # orthogonal to the parent
        s = (1 - child_parent_cos**2) ** 0.5
        directions[nxt : nxt + children_per_parent] = child_parent_cos * parents[p] + s * u
        hierarchy[p] = list(range(nxt, nxt + children_per_parent))
        nxt += children_per_parent
    labels = torch.zeros(n_samples, m, dtype=torch.bool)
    parent_on = torch.rand(n_samples, n_parents, generator=g) < parent_prob
    labels[:, :n_parents] = parent_on
    has_child = parent_on & (torch.rand(n_samples, n_parents, generator=g) < child_given_parent)
    which = torch.randint(children_per_parent, (n_samples, n_parents), generator=g)
    for p in range(n_parents):
        rows = has_child[:, p].nonzero().squeeze(1)
        cols = torch.tensor(hierarchy[p])[which[rows, p]]
        labels[rows, cols] = True
    codes = _magnitudes((n_samples, m), *magnitude, g) * labels
    x = codes @ directions
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    freq = labels.float().mean(0)
    return SyntheticData(x, directions, codes, labels, freq, hierarchy)


def mlp_factors(n_tokens: int = 600, d: int = 64, rank: int = 6, *, support: int = 8, seed: int = 0,
                p_active: float = 0.3, noise: float = 0.01) -> SyntheticData:
    """Token-major activations ``x = codes @ features + noise`` as SNMF models MLP neurons.

    Each of the ``rank`` features touches ``support`` random neurons with mixed signs and
    magnitudes in ``[0.5, 1.5)``; each token's coefficient on a feature is uniform in
    ``[0, 1)`` with probability ``p_active``, else 0. ``directions`` are the features
    themselves (not unit norm: SNMF fixes the scale on the coefficients' side).
    """
    if support > d:
        raise ConfigError(f"support={support} neurons per feature, but d={d}")
    g = torch.Generator().manual_seed(seed)
    features = torch.zeros(rank, d)
    for j in range(rank):
        rows = torch.randperm(d, generator=g)[:support]
        features[j, rows] = torch.randn(support, generator=g).sign() * (0.5 + torch.rand(support, generator=g))
    codes = (torch.rand(rank, n_tokens, generator=g) * (torch.rand(rank, n_tokens, generator=g) < p_active)).T
    x = codes @ features + noise * torch.randn(d, n_tokens, generator=g).T
    labels = codes > 0
    return SyntheticData(x.contiguous(), features, codes.contiguous(), labels, labels.float().mean(0))
