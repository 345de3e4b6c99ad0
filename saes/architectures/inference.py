"""Inference-only architectures that exist here to read other libraries' files.

* :class:`ReLUSAE`: SAELens "standard", ``z = ReLU(h)``.
* :class:`JumpReLUSAE`: SAELens "jumprelu", ``z = ReLU(h) * 1[h > threshold]`` with one
  threshold per latent (BatchTopK SAEs saved by SAELens arrive as this).

They encode and decode like every :class:`~saes.SAE`, but the trainer refuses them: this
package trains TopK, BatchTopK, Matryoshka and MP SAEs.
"""
from __future__ import annotations

from typing import Any

import torch

from saes.architectures.base import SAE, jump_codes
from saes.architectures.registry import register


@register()
class ReLUSAE(SAE):
    """``z = ReLU((x - b_dec) @ W_enc + b_enc)`` (SAELens "standard")."""

    architecture = "relu"
    saelens_architecture = "standard"
    trainable = False

    def _encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return jump_codes(self.pre_acts(x), 0.0)


@register()
class JumpReLUSAE(SAE):
    """``z = ReLU(h) * 1[h > threshold]`` with ``threshold [d_sae]`` (SAELens "jumprelu")."""

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    trainable = False

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any):
        super().__init__(d_in, d_sae, **kwargs)
        self.register_buffer("threshold", torch.zeros(self.d_sae, dtype=self.dtype, device=self.device))

    def _encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pre_acts(x)
        return jump_codes(h, self.threshold.to(h.dtype))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)  # thresholds compare pre-activations: unchanged
