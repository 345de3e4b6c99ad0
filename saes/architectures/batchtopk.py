"""BatchTopK SAE (Bussmann et al. 2024): top ``k * batch`` pre-activations over a batch.

Training keeps the ``k * B`` largest positive pre-activations across the whole batch, so
the average L0 is k while single tokens may use more or fewer latents. Inference cannot
depend on the batch, so it uses a JumpReLU with one threshold θ: ``z = h * 1[h > θ]``.
During training θ is an exponential moving average of the smallest activation kept in
each training batch; at the end of training the trainer sets it from the trained weights
(:meth:`LearntThreshold.calibrate_threshold` on a sample of training rows), so that
inference keeps k latents per token on average whatever the length of the run. Saved files
store θ the way SAELens does (a JumpReLU with a ``threshold [d_sae]`` tensor filled with θ).
"""
from __future__ import annotations

from typing import Any

import torch

from saes import kernels
from saes.architectures.base import SAE, as_count, check_k, jump_codes
from saes.architectures.registry import register


def batch_topk_codes(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top ``k * batch`` positive entries of ``h [batch, d_sae]`` over the batch.

    Returns padded ``values/indices [batch, k']`` where ``k'`` is the largest per-row count;
    dropped entries have value 0 (and keep their gradient path, which carries no signal).
    """
    indices, keep = kernels.batch_topk(h, k)
    # Values from h so gradients flow to the selected pre-activations.
    return h.gather(1, indices) * keep, indices


class LearntThreshold:
    """The inference threshold θ of BatchTopK codes (BatchTopK and Matryoshka SAEs).

    θ is a 0-d float32 buffer, negative until the first training batch. Each training
    batch moves it towards that batch's smallest kept activation by an exponential moving
    average with ``threshold_momentum``; the first batch sets it outright, so θ does not
    crawl up from 0. That average trails the weights (it starts on untrained ones), so
    short runs would end with θ too high; :meth:`calibrate_threshold` replaces it with the
    value the final weights give, and the trainer calls it when a run finishes.
    """

    threshold: torch.Tensor
    threshold_momentum: float

    def _init_threshold(self) -> None:
        self.register_buffer(  # type: ignore[attr-defined]
            "threshold", torch.tensor(-1.0, dtype=torch.float32, device=self.device)  # type: ignore[attr-defined]
        )

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor) -> None:
        pos = values[values > 0]
        if pos.numel() == 0:
            return
        low = pos.min().float()
        if self.threshold < 0:
            self.threshold.copy_(low)  # first batch: start at the observed value, not 0
        else:
            m = self.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * low)

    @property
    def has_learnt_threshold(self) -> bool:
        """Whether these codes use θ (a Matryoshka SAE with TopK codes does not)."""
        return isinstance(getattr(self, "threshold", None), torch.Tensor)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor, chunk_elements: int = 1 << 24) -> float:
        """Set θ from the current weights so that inference keeps ``k`` latents per row of ``x``.

        BatchTopK over all of ``x [N, d_in]`` keeps its ``k * N`` largest positive
        pre-activations; θ becomes the midpoint between the smallest kept one and the
        largest dropped one (0 when fewer than ``k * N`` are positive), so ``h > θ`` keeps
        exactly those on ``x``: inference L0 is ``k`` on these rows. Rows are read in
        chunks of about ``chunk_elements`` pre-activations. Returns θ.
        """
        if not self.has_learnt_threshold:
            raise ValueError(f"{type(self).__name__} has no learnt threshold (it uses TopK codes)")
        x = x.reshape(-1, self.d_in)  # type: ignore[attr-defined]
        if x.shape[0] == 0:
            raise ValueError("calibrate_threshold needs at least one row")
        keep = self.k * x.shape[0]  # type: ignore[attr-defined]
        rows = max(1, chunk_elements // self.d_sae)  # type: ignore[attr-defined]
        best = torch.empty(0, dtype=torch.float32, device=self.device)  # type: ignore[attr-defined]
        for a in range(0, x.shape[0], rows):
            xs = x[a : a + rows].to(device=self.device, dtype=torch.float32)  # type: ignore[attr-defined]
            h = self.pre_acts(xs).float().flatten()  # type: ignore[attr-defined]
            cand = torch.cat([best, h[h > 0]])
            best = cand.topk(min(keep + 1, cand.numel()), sorted=True).values
        if best.numel() <= keep:  # every positive pre-activation is kept
            theta = 0.0
        else:
            theta = float((best[keep - 1] + best[keep]) / 2)
        self.threshold.fill_(theta)
        return theta


@register(cli_name="batchtopk")
class BatchTopKSAE(LearntThreshold, SAE):
    """BatchTopK in training, JumpReLU with the learnt threshold at inference.

    Args:
        d_in, d_sae, k: as :class:`TopKSAE`; k is the average L0 per token.
        threshold_momentum: EMA momentum of θ (SAELens's ``topk_threshold_lr`` is
            ``1 - threshold_momentum``).

    ``threshold`` is a buffer; it is negative until the first training step, and until
    then :meth:`encode` falls back to per-token TopK.

    Example:
        >>> import torch, saes
        >>> sae = saes.BatchTopKSAE(16, 64, k=4)
        >>> sae.encode(torch.randn(3, 16)).count_nonzero(-1).tolist()   # untrained: TopK
        [4, 4, 4]
    """

    architecture = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, d_in: int, d_sae: int, k: int, *, threshold_momentum: float = 0.99, **kwargs: Any):
        self.k = check_k(k, as_count(d_sae, "d_sae"))
        self.threshold_momentum = float(threshold_momentum)
        super().__init__(d_in, d_sae, **kwargs)
        self._init_threshold()

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "k": self.k, "threshold_momentum": self.threshold_momentum}

    @property
    def trained(self) -> bool:
        return bool(self.threshold >= 0)

    def _select(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = batch_topk_codes(h, self.k)
        if self.training:
            self._update_threshold(values.detach())
        return values, indices

    def _train_codes(self, x: torch.Tensor) -> kernels.Encoded:
        # Same sparse pieces as TopK: the batch selection, then a sparse backward.
        enc = kernels.encode(x, *self._encoder_args(), self.k, batch_topk=True)
        if self.training:
            self._update_threshold(enc.values.detach())
        return enc

    def _encode_sparse(self, x: torch.Tensor, threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``threshold`` overrides the learnt θ."""
        h = self.pre_acts(x)
        theta = self.threshold if threshold is None else torch.tensor(float(threshold))
        if theta < 0:
            values, indices = kernels.topk(h, self.k)
            return values.clamp_min(0), indices
        return jump_codes(h, theta.to(h.dtype))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        # θ compares pre-activations, which folding leaves unchanged.
        super().fold_input_scale(scale)
