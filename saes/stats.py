"""Per-latent statistics over a whole stream of activations, in one bounded-memory pass.

What a feature dashboard shows next to each latent (its largest activation, its mean when
active, how often it fires), computed batch by batch from the sparse codes: memory is a
few ``[d_sae]`` vectors plus one batch, whatever the length of the stream, so a store many
times larger than RAM goes through.

>>> import torch, saes
>>> sae = saes.TopKSAE(8, 32, k=2)
>>> s = saes.stats.latent_stats(sae, [torch.randn(64, 8) for _ in range(3)])
>>> s.tokens, s.max.shape, int(s.count.sum())
(192, torch.Size([32]), 384)
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from saes.architectures.base import SAE
from saes.training.data import as_rows


@dataclass
class LatentStats:
    """Per latent, over ``tokens`` rows.

    Attributes:
        max: ``[d_sae]`` largest activation (0 where the latent never fired).
        sum: ``[d_sae]`` sum of its activations (float64).
        count: ``[d_sae]`` tokens on which it fired (int64).
        tokens: rows seen.
    """

    max: torch.Tensor
    sum: torch.Tensor
    count: torch.Tensor
    tokens: int

    @property
    def mean(self) -> torch.Tensor:
        """``[d_sae]`` mean activation over all tokens."""
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def mean_when_active(self) -> torch.Tensor:
        return (self.sum / self.count.clamp_min(1)).float()

    @property
    def frequency(self) -> torch.Tensor:
        """``[d_sae]`` fraction of tokens on which the latent fired."""
        return self.count.double().div(max(self.tokens, 1)).float()


@torch.no_grad()
def latent_stats(sae: SAE, batches: Iterable[Any], **encode_options: Any) -> LatentStats:
    """Stream ``batches`` (``[batch, d_in]`` tensors, e.g. ``store.batches(4096, shuffle=False)``)
    through ``sae`` and accumulate per-latent max, sum and firing count."""
    d = sae.d_sae
    dev = sae.device
    mx = torch.zeros(d, dtype=torch.float32, device=dev)
    total = torch.zeros(d, dtype=torch.float64, device=dev)
    count = torch.zeros(d, dtype=torch.int64, device=dev)
    tokens = 0
    for i, raw in enumerate(batches):
        x = as_rows(raw, sae.d_in, i).to(device=dev, dtype=sae.dtype)
        values, indices = sae.encode_sparse(x, **encode_options)
        values = values.float()
        active = values != 0
        idx, val = indices[active], values[active]
        mx.scatter_reduce_(0, idx, val, reduce="amax")
        total.index_add_(0, idx, val.double())
        count.index_add_(0, idx, torch.ones_like(idx))
        tokens += x.shape[0]
    return LatentStats(mx.cpu(), total.cpu(), count.cpu(), tokens)
