"""L1 ("standard") SAE: ReLU codes and an L1 penalty (SAELens "standard").

``z = ReLU((x - b_dec) @ W_enc + b_enc)``, ``x_hat = z @ W_dec + b_dec``, loss::

    ||x - x_hat||^2 / V  +  c(t) * l1_coefficient * sum_i z_i ||d_i|| / V

with ``d_i`` the decoder rows, ``V`` the batch variance and ``c(t)`` the warm-up (see
:mod:`saes.architectures.penalised` for the normalisation and how it relates to SAELens's
coefficient: the same number means the same on the same inputs).

Default: Anthropic's April 2024 update (what SAELens's ``StandardTrainingSAE`` trains):
free decoder rows whose norms weight the penalty (so shrinking codes by growing rows buys
nothing), rows starting at norm 0.1 with the encoder tied to them, and the coefficient
warmed up over the first 5 % of tokens. ``unit_norm_decoder=True`` gives the older
variant: rows kept at unit norm (the weights are then 1 and the penalty is ``sum_i z_i``).
"""
from __future__ import annotations

from typing import Any

import torch

from saes.architectures.base import StepOutput
from saes.architectures.penalised import PenalisedSAE, check_setting
from saes.architectures.registry import register


@register(cli_name="l1")
class ReLUSAE(PenalisedSAE):
    """``z = ReLU((x - b_dec) @ W_enc + b_enc)`` trained with an L1 penalty (SAELens "standard").

    Args:
        d_in, d_sae: activation width and number of latents.
        l1_coefficient: weight of the penalty ``sum_i z_i ||d_i||`` (SAELens's
            ``l1_coefficient``; Anthropic used about 5 on inputs normalised to
            ``E||x||^2 = d_in``).
        coefficient_warmup_frac: fraction of the run's tokens over which the coefficient
            rises linearly from 0 (Anthropic: 0.05).
        unit_norm_decoder: False (default): free decoder rows, penalty weighted by their
            norms; True: rows kept at unit norm.
        decoder_init_norm: norm of the free decoder rows at initialisation.

    Files written as SAELens "standard" load there and encode identically; files read
    from SAELens, sparsify's ReLU dictionaries or dictionary_learning's ``AutoEncoder``
    load as this class.

    Example:
        >>> import torch, saes
        >>> sae = saes.ReLUSAE(16, 64, l1_coefficient=2.0)
        >>> z = sae.encode(torch.randn(3, 16))
        >>> bool((z >= 0).all()), float(sae.W_dec.norm(dim=1).mean())   # free rows start at 0.1
        (True, 0.1)
    """

    architecture = "relu"
    saelens_architecture = "standard"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l1_coefficient: float = 5.0,
        coefficient_warmup_frac: float = 0.05,
        unit_norm_decoder: bool = False,
        decoder_init_norm: float = 0.1,
        **kwargs: Any,
    ):
        self.l1_coefficient = check_setting(
            l1_coefficient, "l1_coefficient", fix="give the L1 penalty's weight (0 switches it off)")
        super().__init__(d_in, d_sae, coefficient_warmup_frac=coefficient_warmup_frac,
                         unit_norm_decoder=unit_norm_decoder, decoder_init_norm=decoder_init_norm, **kwargs)

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "l1_coefficient": self.l1_coefficient}

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_acts(x))

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor,
                         target: torch.Tensor | None = None) -> StepOutput:
        z = self.dense_codes(x)
        coefficient = self.coefficient(self.l1_coefficient)
        l1 = (z * self.W_dec.norm(dim=1)).sum(-1).mean()
        return self.dense_output(x, z, variance, target, {"l1": coefficient * l1 / variance},
                                 {"l1_coefficient": coefficient, "l1_norm": l1.detach()})
