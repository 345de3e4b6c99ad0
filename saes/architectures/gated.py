"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"), SAELens "gated".

Two paths share the encoder ``W_enc``; with ``xc = x - b_dec``::

    π_gate = xc @ W_enc + b_gate                      which latents fire
    π_mag  = xc @ (W_enc * exp(r_mag)) + b_mag        how strongly (a per-latent rescale)
    z      = 1[π_gate > 0] * ReLU(π_mag)

The gate is a step, so the sparsity penalty and an auxiliary reconstruction act on
``ReLU(π_gate)`` instead::

    loss = ||x - x_hat||^2 / V
         + c(t) * l1_coefficient * sum_i ReLU(π_gate)_i ||d_i|| / V
         + ||x - (ReLU(π_gate) @ W_dec + b_dec)||^2 / V        (the auxiliary loss)

(SAELens's formulas; ``V`` is the batch variance, see :mod:`saes.architectures.penalised`).
The paper computes the auxiliary reconstruction with frozen copies of the decoder, so that
it trains the gate only: ``frozen_aux_decoder=True`` (default) stops its gradient at
``W_dec`` and ``b_dec``; False lets it flow there too, as SAELens does. Decoder rows are
kept at unit norm by default (the paper); ``unit_norm_decoder=False`` frees them as
SAELens does, the penalty then weighted by their norms.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saes.architectures.base import StepOutput
from saes.architectures.penalised import PenalisedSAE, check_flag, check_setting
from saes.architectures.registry import register


@register(cli_name="gated")
class GatedSAE(PenalisedSAE):
    """Gated SAE: parameters ``W_enc [d_in, d_sae]``, ``b_gate``, ``r_mag``, ``b_mag [d_sae]``,
    ``W_dec``, ``b_dec`` (SAELens's names; no ``b_enc``).

    Args:
        d_in, d_sae: activation width and number of latents.
        l1_coefficient: weight of the penalty on ``ReLU(π_gate)`` (SAELens's ``l1_coefficient``).
        frozen_aux_decoder: the auxiliary reconstruction does not train the decoder (the paper).
        coefficient_warmup_frac, unit_norm_decoder, decoder_init_norm: see
            :mod:`saes.architectures.penalised`.

    Example:
        >>> import torch, saes
        >>> sae = saes.GatedSAE(16, 64)
        >>> sorted(n for n, _ in sae.named_parameters())
        ['W_dec', 'W_enc', 'b_dec', 'b_gate', 'b_mag', 'r_mag']
        >>> sae.encode(torch.randn(3, 16)).shape
        torch.Size([3, 64])
    """

    architecture = "gated"
    saelens_architecture = "gated"

    b_gate: nn.Parameter
    r_mag: nn.Parameter
    b_mag: nn.Parameter

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l1_coefficient: float = 1.0,
        frozen_aux_decoder: bool = True,
        coefficient_warmup_frac: float = 0.0,
        unit_norm_decoder: bool = True,
        decoder_init_norm: float = 0.1,
        **kwargs: Any,
    ):
        self.l1_coefficient = check_setting(
            l1_coefficient, "l1_coefficient", fix="give the gate penalty's weight (0 switches it off)")
        self.frozen_aux_decoder = check_flag(frozen_aux_decoder, "frozen_aux_decoder")
        super().__init__(d_in, d_sae, coefficient_warmup_frac=coefficient_warmup_frac,
                         unit_norm_decoder=unit_norm_decoder, decoder_init_norm=decoder_init_norm, **kwargs)

    def _build_encoder(self, dtype: torch.dtype, device: torch.device) -> None:
        self.W_enc = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dtype, device=device))
        for name in ("b_gate", "r_mag", "b_mag"):
            setattr(self, name, nn.Parameter(torch.zeros(self.d_sae, dtype=dtype, device=device)))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        for p in (self.b_gate, self.r_mag, self.b_mag):
            p.zero_()

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "l1_coefficient": self.l1_coefficient,
                "frozen_aux_decoder": self.frozen_aux_decoder}

    def _paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(π_gate, π_mag) [batch, d_sae]`` from one product with ``W_enc``
        (``xc @ (W_enc * exp(r_mag)) = (xc @ W_enc) * exp(r_mag)``)."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        shared = x @ self.W_enc
        return shared + self.b_gate, shared * self.r_mag.exp() + self.b_mag

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """The magnitude path's pre-activations ``π_mag [batch, d_sae]`` (SAELens's hook_sae_acts_pre)."""
        return self._paths(x)[1]

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        gate, mag = self._paths(x)
        return (gate > 0).to(mag.dtype) * torch.relu(mag)

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor,
                         target: torch.Tensor | None = None) -> StepOutput:
        gate, mag = self._paths(x)
        z = (gate > 0).to(mag.dtype) * torch.relu(mag)
        gate_acts = torch.relu(gate)
        coefficient = self.coefficient(self.l1_coefficient)
        l1 = (gate_acts * self.W_dec.norm(dim=1)).sum(-1).mean()
        frozen = self.frozen_aux_decoder
        W_dec, b_dec = (self.W_dec.detach(), self.b_dec.detach()) if frozen else (self.W_dec, self.b_dec)
        # A skip-transcoder's skip path is part of every reconstruction, the gate's too (frozen alike).
        skip = self.add_skip(x.new_zeros(()), x)
        via_gate = gate_acts @ W_dec + b_dec + (skip.detach() if frozen else skip)
        aux = (via_gate - (x if target is None else target)).pow(2).sum(-1).mean()
        return self.dense_output(x, z, variance, target, {"l1": coefficient * l1 / variance, "aux": aux / variance},
                                 {"l1_coefficient": coefficient, "aux_fvu": (aux / variance).detach()})
