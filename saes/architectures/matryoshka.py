"""Matryoshka SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025).

Latents are ordered and split into groups with prefix ends ``m_1 < ... < m_L = d_sae``.
Codes are computed once over all latents (TopK or BatchTopK); every prefix must then
reconstruct on its own: ``x_hat_l = b_dec + sum_{i < m_l} z_i d_i``. Small prefixes learn
general (parent) features and later groups specific (child) ones, which reduces feature
absorption.

The prefix reconstructions are decoded incrementally, one group at a time onto a running
sum, never once per prefix.

Weighting of the L prefix losses (implementations differ; ``weighting=``):

* ``"mean"`` (default): ``1/L`` each, so the loss is on the scale of a plain SAE's and the
  same learning rate and AuxK weight apply;
* ``"sum"``: weight 1 each (SAELens);
* ``"mean_with_bias"``: ``1/(L+1)`` each, with an extra level ``x_hat_0 = b_dec``;
* a list of L floats: explicit weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from saes import kernels
from saes.architectures.base import SAE, StepOutput, as_count, check_k, jump_codes, normalized_mse
from saes.architectures.batchtopk import LearntThreshold, batch_topk_codes
from saes.architectures.registry import register
from saes.errors import ConfigError

WEIGHTINGS = ("mean", "sum", "mean_with_bias")


def doubling_groups(d_sae: int, levels: int = 5) -> list[int]:
    """Group sizes whose prefix widths double: ``d/16, d/16, d/8, d/4, d/2`` for 5 levels.

    >>> doubling_groups(1024)
    [64, 64, 128, 256, 512]
    """
    ends = [max(1, d_sae >> (levels - 1 - i)) for i in range(levels)]
    ends[-1] = d_sae
    sizes, prev = [], 0
    for e in ends:
        if e > prev:
            sizes.append(e - prev)
            prev = e
    return sizes


@register(cli_name="matryoshka")
class MatryoshkaSAE(LearntThreshold, SAE):
    """Nested-prefix SAE with TopK or BatchTopK codes.

    Args:
        d_in: activation width.
        group_sizes: latents per group, in order; they sum to ``d_sae``. None uses
            :func:`doubling_groups` of ``d_sae``.
        k: active latents per token (the average, with ``batch_topk``).
        batch_topk: BatchTopK codes in training and a learnt JumpReLU threshold at
            inference (default); False uses per-token TopK throughout.
        d_sae: optional; when given, ``group_sizes`` must sum to it.
        weighting: how the prefix losses combine (see the module docstring).
        threshold_momentum: EMA momentum of the inference threshold (BatchTopK only).

    Example:
        >>> import torch, saes
        >>> sae = saes.MatryoshkaSAE(16, group_sizes=[8, 24, 32], k=4)
        >>> sae.d_sae, sae.prefix_ends
        (64, [8, 32, 64])
    """

    architecture = "matryoshka"

    def __init__(
        self,
        d_in: int,
        group_sizes: Sequence[int] | None = None,
        k: int = 32,
        *,
        batch_topk: bool = True,
        d_sae: int | None = None,
        weighting: str | Sequence[float] = "mean",
        threshold_momentum: float = 0.99,
        **kwargs: Any,
    ):
        if group_sizes is None:
            if d_sae is None:
                raise ConfigError("MatryoshkaSAE needs group_sizes or d_sae (for the default doubling groups)")
            group_sizes = doubling_groups(as_count(d_sae, "d_sae"))
        if isinstance(group_sizes, (str, bytes)) or not hasattr(group_sizes, "__iter__"):
            raise ConfigError(f"group_sizes={group_sizes!r} must be a list of positive integers")
        sizes = [as_count(g, "each of group_sizes") for g in group_sizes]
        if not sizes or any(g < 1 for g in sizes):
            raise ConfigError(f"group_sizes must be positive integers, got {list(group_sizes)}")
        total = sum(sizes)
        if d_sae is not None and total != as_count(d_sae, "d_sae"):
            raise ConfigError(
                f"group_sizes {sizes} sum to {total} but d_sae={d_sae}; make the groups sum to "
                f"d_sae, e.g. group_sizes={doubling_groups(int(d_sae))}"
            )
        if isinstance(weighting, str):
            if weighting not in WEIGHTINGS:
                raise ConfigError(f"weighting={weighting!r} is unknown; use one of {WEIGHTINGS} or a list of floats")
        else:
            weighting = [float(w) for w in weighting]
            if len(weighting) != len(sizes):
                raise ConfigError(
                    f"weighting has {len(weighting)} weights for {len(sizes)} groups; give one per group"
                )
        self.group_sizes = sizes
        self.k = check_k(k, total)
        self.batch_topk = bool(batch_topk)
        self.weighting = weighting
        self.threshold_momentum = float(threshold_momentum)
        super().__init__(d_in, total, **kwargs)
        if self.batch_topk:  # the inference threshold exists only for BatchTopK codes
            self._init_threshold()

    @property
    def saelens_architecture(self) -> str:  # type: ignore[override]
        return "jumprelu" if self.batch_topk else "topk"

    @property
    def prefix_ends(self) -> list[int]:
        ends, acc = [], 0
        for g in self.group_sizes:
            acc += g
            ends.append(acc)
        return ends

    def arch_config(self) -> dict[str, Any]:
        return {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "group_sizes": list(self.group_sizes),
            "k": self.k,
            "batch_topk": self.batch_topk,
            "weighting": self.weighting,
            "threshold_momentum": self.threshold_momentum,
            **self.transcoder_config(),
        }

    def _level_weights(self) -> tuple[float, list[float]]:
        """(weight of the b_dec-only level, weight per prefix)."""
        L = len(self.group_sizes)
        if isinstance(self.weighting, list):
            return 0.0, list(self.weighting)
        if self.weighting == "sum":
            return 0.0, [1.0] * L
        if self.weighting == "mean":
            return 0.0, [1.0 / L] * L
        return 1.0 / (L + 1), [1.0 / (L + 1)] * L

    # -------------------------------------------------------------- codes

    def _select(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_topk:
            values, indices = batch_topk_codes(h, self.k)
            if self.training:
                self._update_threshold(values.detach())
            return values, indices
        values, indices = kernels.topk(h, self.k)
        return values.clamp_min(0), indices

    def _encode_sparse(self, x: torch.Tensor, k: int | None = None, threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` (TopK codes) or ``threshold`` (BatchTopK codes) override the trained values."""
        h = self.pre_acts(x)
        if self.batch_topk and k is None:
            theta = self.threshold if threshold is None else torch.tensor(float(threshold))
            if theta >= 0:
                return jump_codes(h, theta.to(h.dtype))
        values, indices = kernels.topk(h, check_k(k, self.d_sae) if k is not None else self.k)
        return values.clamp_min(0), indices

    # ------------------------------------------------------------ training

    def _train_codes(self, x: torch.Tensor) -> kernels.Encoded:
        enc = kernels.encode(x, *self._encoder_args(), self.k, batch_topk=self.batch_topk)
        if self.batch_topk and self.training:
            self._update_threshold(enc.values.detach())
        return enc

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor,
                         target: torch.Tensor | None = None) -> StepOutput:
        enc = self._train_codes(x)
        values, indices = enc.values, enc.indices
        w_bias, weights = self._level_weights()
        # All prefix reconstructions from one pass over the sparse code: group sums, then
        # a running sum over groups (each code is read once, whatever the number of levels).
        prefixes = kernels.prefix_decode(values, indices, self.W_dec, self.prefix_ends)  # [N, L, d]
        y = x if target is None else target  # a transcoder's every prefix reconstructs its target
        base = self.add_skip(self.b_dec.expand_as(y), x)
        x_hat = base
        total = normalized_mse(x_hat, y, variance) * w_bias if w_bias else x.new_zeros(())
        level_losses: dict[str, float] = {}
        for level, w in enumerate(weights):
            x_hat = prefixes[:, level] + base
            loss = normalized_mse(x_hat, y, variance)
            total = total + w * loss
            level_losses[f"fvu_prefix{level}"] = loss.detach()
        return StepOutput(
            x_hat, values, indices, enc.pre_acts, {"mse": total}, metrics=level_losses, aux_codes=self._aux_codes(x)
        )
