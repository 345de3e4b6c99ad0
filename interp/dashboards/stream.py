"""Streaming per-latent statistics with bounded memory.

Codes arrive as chunks ``[rows, n_latents]`` (the chosen latents only) with the store row of
their first row. Two passes over the store, because histogram bins need the range first:

* :class:`FirstPass` — rows seen, rows firing (code != 0), min/max (of all codes and of the
  firing ones) and the top-k ``(value, row)`` per latent.
* :class:`SecondPass` — fixed-bin histogram of the firing values over ``[min, max]`` of the
  firing values; per histogram bin a uniform sample of up to ``m`` rows (random-key
  reservoir: keep the ``m`` smallest random keys, so the kept set is uniform without
  replacement whatever the chunking); per labelled concept, counts of positive rows per
  ordered value slot, from which AUROC follows.

Memory is ``O(n_latents * (k + bins * m + concepts * slots))``, independent of the row
count: no pass keeps a code it has finished with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# AUROC is computed from counts in ordered value slots: AUROC_BINS equal-width bins over
# [min(0, lo), max(0, hi)], each split three ways (below zero, exactly zero, above zero) so
# the mass of exact zeros (most rows, for a sparse latent) is never tied with firing rows.
AUROC_BINS = 128


@dataclass
class FirstPassResult:
    """Per latent ``[L]``: counts and ranges; ``top_values/top_rows [L, k]`` (best first, -1 pads)."""

    n_rows: int
    n_fire: torch.Tensor
    min_all: torch.Tensor
    max_all: torch.Tensor
    min_fire: torch.Tensor
    max_fire: torch.Tensor
    top_values: torch.Tensor
    top_rows: torch.Tensor


class FirstPass:
    def __init__(self, n_latents: int, k: int) -> None:
        self.k = k
        self.n_rows = 0
        self.n_fire = torch.zeros(n_latents, dtype=torch.int64)
        self.min_all = torch.full((n_latents,), float("inf"), dtype=torch.float64)
        self.max_all = torch.full((n_latents,), float("-inf"), dtype=torch.float64)
        self.min_fire = self.min_all.clone()
        self.max_fire = self.max_all.clone()
        self.top_values = torch.full((n_latents, k), float("-inf"), dtype=torch.float64)
        self.top_rows = torch.full((n_latents, k), -1, dtype=torch.int64)

    def update(self, codes: torch.Tensor, first_row: int) -> None:
        codes = codes.double()
        rows = codes.shape[0]
        if rows == 0:
            return
        self.n_rows += rows
        fire = codes != 0
        self.n_fire += fire.sum(0)
        self.min_all = torch.minimum(self.min_all, codes.min(0).values)
        self.max_all = torch.maximum(self.max_all, codes.max(0).values)
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        self.min_fire = torch.minimum(self.min_fire, torch.where(fire, codes, inf).min(0).values)
        self.max_fire = torch.maximum(self.max_fire, torch.where(fire, codes, -inf).max(0).values)
        # Top-k of (kept so far ∪ this chunk): only firing rows qualify as examples.
        k = min(self.k, rows)
        values, idx = torch.where(fire, codes, -inf).T.topk(k, dim=1)  # [L, k]
        all_values = torch.cat([self.top_values, values], dim=1)
        all_rows = torch.cat([self.top_rows, idx + first_row], dim=1)
        best, pick = all_values.topk(self.k, dim=1)
        self.top_values, self.top_rows = best, all_rows.gather(1, pick)

    def result(self) -> FirstPassResult:
        rows = torch.where(torch.isfinite(self.top_values), self.top_rows, -1)
        return FirstPassResult(self.n_rows, self.n_fire, self.min_all, self.max_all, self.min_fire,
                               self.max_fire, self.top_values, rows)


def histogram_edges(lo: float, hi: float, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` equal-width float64 edges over ``[lo, hi]`` (numpy.histogram's edges)."""
    if not hi > lo:  # one distinct value, or none: a bin of width one ulp-safe unit around it
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return np.linspace(lo, hi, n_bins + 1)


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each value: ``edges[b] <= v < edges[b + 1]``, the last bin closed (as numpy)."""
    return torch.bucketize(values, edges[1:-1].contiguous(), right=True)


@dataclass
class SecondPassResult:
    """Per latent: histogram edges ``[L, B+1]`` and counts ``[L, B]`` of firing values; the
    sampled rows/values ``[L, B, m]`` per bin (-1 pads); AUROC ``[L, C]`` and positives ``[C]``."""

    edges: torch.Tensor
    counts: torch.Tensor
    sample_rows: torch.Tensor
    sample_values: torch.Tensor
    auroc: torch.Tensor | None
    positives: torch.Tensor | None


class SecondPass:
    def __init__(self, first: FirstPassResult, n_bins: int, per_bin: int, n_concepts: int = 0,
                 seed: int = 0) -> None:
        n_latents = first.n_fire.shape[0]
        self.n_bins, self.per_bin, self.n_concepts = n_bins, per_bin, n_concepts
        lo = torch.where(first.n_fire > 0, first.min_fire, 0.0)
        hi = torch.where(first.n_fire > 0, first.max_fire, 0.0)
        self.edges = torch.from_numpy(np.stack([histogram_edges(float(a), float(b), n_bins)
                                                for a, b in zip(lo.tolist(), hi.tolist())]))
        self.counts = torch.zeros(n_latents, n_bins, dtype=torch.int64)
        groups = n_latents * n_bins
        self.keys = torch.full((groups, per_bin), float("inf"), dtype=torch.float64)
        self.rows = torch.full((groups, per_bin), -1, dtype=torch.int64)
        self.values = torch.zeros(groups, per_bin, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)
        # AUROC slots: ranges include 0 so zero codes sit in their own ordered slot.
        alo, ahi = first.min_all.clamp(max=0.0), first.max_all.clamp(min=0.0)
        self.auroc_edges = torch.from_numpy(np.stack([histogram_edges(float(a), float(b), AUROC_BINS)
                                                      for a, b in zip(alo.tolist(), ahi.tolist())]))
        self.n_slots = 3 * AUROC_BINS
        self.slot_total = torch.zeros(n_latents, self.n_slots, dtype=torch.int64)
        self.slot_pos = torch.zeros(n_latents * max(n_concepts, 1) * self.n_slots, dtype=torch.int64)
        self.positives = torch.zeros(max(n_concepts, 0), dtype=torch.int64)

    def update(self, codes: torch.Tensor, first_row: int, labels: torch.Tensor | None = None) -> None:
        """``codes [rows, L]``; ``labels [rows, C]`` bool (concept present) or None."""
        codes = codes.double()
        rows, n_latents = codes.shape
        if rows == 0:
            return
        bins = torch.stack([bin_index(codes[:, j].contiguous(), self.edges[j]) for j in range(n_latents)], 1)
        fire = codes != 0
        latent_of = torch.arange(n_latents).expand(rows, n_latents)
        group = (latent_of * self.n_bins + bins)[fire]
        self.counts.view(-1).add_(torch.bincount(group, minlength=self.counts.numel()))
        row_of = (torch.arange(rows) + first_row)[:, None].expand(rows, n_latents)[fire]
        self._sample(group, row_of, codes[fire])
        if labels is not None and self.n_concepts:
            self._count_labels(codes, labels)

    def _sample(self, group: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        keys = torch.rand(group.shape[0], generator=self.gen, dtype=torch.float64)
        held = self.rows.view(-1) >= 0
        g_old = torch.arange(self.keys.shape[0]).repeat_interleave(self.per_bin)[held]
        group = torch.cat([g_old, group])
        keys = torch.cat([self.keys.view(-1)[held], keys])
        rows = torch.cat([self.rows.view(-1)[held], rows])
        values = torch.cat([self.values.view(-1)[held], values])
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(group[order], stable=True)]  # by group, then by key
        group, keys, rows, values = group[order], keys[order], rows[order], values[order]
        sizes = torch.bincount(group, minlength=self.keys.shape[0])
        rank = torch.arange(group.shape[0]) - (torch.cumsum(sizes, 0) - sizes)[group]
        keep = rank < self.per_bin
        self.keys.fill_(float("inf"))
        self.rows.fill_(-1)
        self.values.zero_()
        where = (group[keep], rank[keep])
        self.keys[where], self.rows[where], self.values[where] = keys[keep], rows[keep], values[keep]

    def _count_labels(self, codes: torch.Tensor, labels: torch.Tensor) -> None:
        _rows, n_latents = codes.shape
        bins = torch.stack([bin_index(codes[:, j].contiguous(), self.auroc_edges[j]) for j in range(n_latents)], 1)
        slots = 3 * bins + (torch.sign(codes).long() + 1)  # ordered: below, at, above zero within a bin
        offset = torch.arange(n_latents) * self.n_slots
        self.slot_total.view(-1).add_(torch.bincount((slots + offset).flatten(), minlength=self.slot_total.numel()))
        r, c = labels.bool().nonzero(as_tuple=True)  # positives are sparse: count pairs, not a dense product
        self.positives += torch.bincount(c, minlength=self.n_concepts)
        keys = (offset[None, :] * self.n_concepts + c[:, None] * self.n_slots + slots[r]).flatten()
        self.slot_pos.add_(torch.bincount(keys, minlength=self.slot_pos.numel()))

    def result(self) -> SecondPassResult:
        n_latents = self.counts.shape[0]
        shape = (n_latents, self.n_bins, self.per_bin)
        auroc = None
        if self.n_concepts:
            pos = self.slot_pos.view(n_latents, self.n_concepts, self.n_slots).double()
            neg = self.slot_total[:, None, :].double() - pos
            neg_below = torch.cumsum(neg, dim=2) - neg
            n_pos, n_neg = pos.sum(2), neg.sum(2)
            # Mann-Whitney U from counts: a positive beats the negatives below its slot and
            # ties (counts half) with those in it.
            u = (pos * (neg_below + 0.5 * neg)).sum(2)
            auroc = torch.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg).clamp_min(1), float("nan"))
        return SecondPassResult(self.edges, self.counts, self.rows.view(shape), self.values.view(shape),
                                auroc, self.positives if self.n_concepts else None)


def quantile_groups(counts: torch.Tensor, n_groups: int) -> list[list[int]]:
    """Split histogram bins ``[B]`` into up to ``n_groups`` runs of about equal mass.

    A bin goes to the group its middle token falls in, so group edges are bin edges near
    the quantiles of the firing values. Empty groups are dropped.
    """
    total = int(counts.sum())
    if total == 0:
        return []
    cum = torch.cumsum(counts, 0) - counts
    mid = (cum.double() + counts.double() / 2) / total
    group = (mid * n_groups).long().clamp(max=n_groups - 1)
    out: list[list[int]] = [[] for _ in range(n_groups)]
    for b, g in enumerate(group.tolist()):
        if counts[b] > 0:
            out[g].append(b)
    return [bins for bins in out if bins]


def draw_from_bins(counts: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, bins: list[int], n: int,
                   gen: torch.Generator) -> list[tuple[int, float]]:
    """``n`` rows from the union of ``bins``, as a uniform draw over their tokens would.

    Each bin holds a uniform sample of its tokens; an item of bin b stands for
    ``counts[b] / held_b`` tokens, and the weighted draw without replacement uses
    Efraimidis-Spirakis keys ``u ** (1 / weight)``.
    """
    items, weights = [], []
    for b in bins:
        held = rows[b] >= 0
        n_held = int(held.sum())
        for r, v in zip(rows[b][held].tolist(), values[b][held].tolist()):
            items.append((r, v))
            weights.append(float(counts[b]) / n_held)
    if not items:
        return []
    u = torch.rand(len(items), generator=gen, dtype=torch.float64)
    keys = u.pow(1.0 / torch.tensor(weights, dtype=torch.float64))
    chosen = keys.topk(min(n, len(items))).indices.tolist()
    return sorted((items[i] for i in chosen), key=lambda item: -item[1])
