"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, then ReLU."""
from __future__ import annotations

from typing import Any

import torch

from saes import kernels
from saes.architectures.base import SAE, as_count, check_k
from saes.architectures.registry import register


@register(cli_name="topk")
class TopKSAE(SAE):
    """``z = ReLU(TopK_k(h))`` per token.

    Args:
        d_in: activation width.
        d_sae: number of latents.
        k: active latents per token (``1 <= k < d_sae``).

    Example:
        >>> import torch, saes
        >>> sae = saes.TopKSAE(16, 64, k=4)
        >>> values, indices = sae.encode_sparse(torch.randn(3, 16))
        >>> values.shape, indices.shape
        (torch.Size([3, 4]), torch.Size([3, 4]))
        >>> sae.encode(torch.randn(3, 16), k=8).count_nonzero(-1).max().item() <= 8
        True
    """

    architecture = "topk"
    saelens_architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, **kwargs: Any):
        self.k = check_k(k, as_count(d_sae, "d_sae"))
        super().__init__(d_in, d_sae, **kwargs)

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "k": self.k}

    def _select(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = kernels.topk(h, self.k)
        return values.clamp_min(0), indices

    def _train_codes(self, x: torch.Tensor) -> kernels.Encoded:
        # Fused GEMM + top-k with a backward over the selected latents only.
        return kernels.encode(x, *self._encoder_args(), self.k)

    def _encode_sparse(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` overrides the trained k at inference."""
        enc = kernels.encode(x, *self._encoder_args(), check_k(k, self.d_sae) if k is not None else self.k)
        return enc.values, enc.indices
