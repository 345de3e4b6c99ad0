"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"), SAELens "jumprelu".

``z_i = h_i * 1[h_i > θ_i]`` with a learnt threshold ``θ [d_sae]`` per latent, where
``h = (x - b_dec) @ W_enc + b_enc``. The step ``1[h > θ]`` has no useful derivative in θ,
so training uses straight-through estimators with a rectangle kernel
``K(u) = 1[|u| < 1/2]`` of bandwidth ε (:class:`JumpReLUStep`, SAELens's formulas)::

    d z_i / d θ_i      = -(θ_i / ε) K((h_i - θ_i) / ε)     (reconstruction through the jump)
    d 1[h_i > θ_i]/d θ_i = -(1 / ε) K((h_i - θ_i) / ε)     (the L0 penalty)
    d z_i / d h_i      = 1[h_i > θ_i]                       (no estimator towards the encoder)

Loss: ``||x - x_hat||^2 / V + c(t) * l0_coefficient * L0 / V`` with the L0 penalty
``sum_i 1[h_i > θ_i]`` ("step", the paper's), or SAELens's "tanh" option
``sum_i tanh(tanh_scale * z_i * ||d_i||)`` (Anthropic's January 2025 penalty). ``V`` is
the batch variance; see :mod:`saes.architectures.penalised` for how coefficients relate to
SAELens's (they are the same numbers).

θ is a parameter trained directly, not through ``log θ`` (as SAELens 6 does: Adam moves a
parameter by about the learning rate per step, so a log parameterisation barely moves a
small θ), projected onto ``θ >= 0`` before each training forward. Decoder rows are kept
at unit norm by default (the L0 penalty ignores their norms, so free rows would only add a
scale to the thresholds); ``unit_norm_decoder=False`` frees them as SAELens does.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saes.architectures.base import StepOutput
from saes.architectures.penalised import PenalisedSAE, check_setting
from saes.architectures.registry import register
from saes.errors import ConfigError

SPARSITY_LOSSES = ("step", "tanh")


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``1[-1/2 < u < 1/2]`` in ``u``'s dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUStep(torch.autograd.Function):
    """``(h * 1[h > θ], 1[h > θ])`` for ``h [batch, d_sae]``, ``θ [d_sae]``: the codes and the
    step, with SAELens's straight-through gradients (``JumpReLU`` and ``Step`` there, without
    the estimator towards ``h``). One function for both, so that the comparison and the
    kernel are computed once per step instead of once per use."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        ctx.set_materialize_grads(False)  # the tanh penalty never uses the step
        step = (h > threshold).to(h.dtype)
        return h * step, step

    @staticmethod
    def backward(ctx: Any, grad_codes: torch.Tensor | None,
                 grad_step: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        h, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # d z / d θ = -(θ / ε) K((h - θ) / ε) and d step / d θ = -(1 / ε) K((h - θ) / ε).
        weight = (grad_codes * threshold if grad_codes is not None else 0) + (grad_step if grad_step is not None else 0)
        if not isinstance(weight, torch.Tensor):
            return None, None, None
        grad_threshold = -(rectangle((h - threshold) / eps) * weight).sum(0) / eps
        grad_h = (h > threshold).to(grad_codes.dtype) * grad_codes if grad_codes is not None else None
        return grad_h, grad_threshold, None


@register(cli_name="jumprelu")
class JumpReLUSAE(PenalisedSAE):
    """``z = ReLU(h) * 1[h > threshold]`` with ``threshold [d_sae]`` (SAELens "jumprelu").

    Args:
        d_in, d_sae: activation width and number of latents.
        l0_coefficient: weight of the sparsity penalty (SAELens's ``l0_coefficient``).
        init_threshold: every θ_i at initialisation (SAELens's ``jumprelu_init_threshold``).
        bandwidth: ε of the rectangle kernel (SAELens's ``jumprelu_bandwidth``), in the
            units of the pre-activations, like θ.
        sparsity_loss: "step" (L0, the paper's) or "tanh" (SAELens's
            ``jumprelu_sparsity_loss_mode="tanh"``).
        tanh_scale: the scale inside tanh ("tanh" only; SAELens's ``jumprelu_tanh_scale``).
        coefficient_warmup_frac, unit_norm_decoder, decoder_init_norm: see
            :mod:`saes.architectures.penalised`.

    ``init_threshold`` and ``bandwidth`` are in pre-activation units, so they assume a
    scale of the training inputs: the defaults (SAELens's) suit inputs scaled to
    ``E||x - mean||^2 = d_in``, which ``TrainConfig(normalize_input=True)`` gives.

    Files from SAELens (JumpReLU, and BatchTopK saved as JumpReLU), Gemma Scope and
    dictionary_learning load as this class.

    Example:
        >>> import torch, saes
        >>> sae = saes.JumpReLUSAE(16, 64, init_threshold=0.5)
        >>> z = sae.encode(torch.randn(3, 16))
        >>> bool(((z == 0) | (z > 0.5)).all())
        True
    """

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"

    threshold: nn.Parameter

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float = 1.0,
        init_threshold: float = 0.01,
        bandwidth: float = 0.05,
        sparsity_loss: str = "step",
        tanh_scale: float = 4.0,
        coefficient_warmup_frac: float = 0.0,
        unit_norm_decoder: bool = True,
        decoder_init_norm: float = 0.1,
        **kwargs: Any,
    ):
        self.l0_coefficient = check_setting(
            l0_coefficient, "l0_coefficient", fix="give the sparsity penalty's weight (0 switches it off)")
        self.init_threshold = check_setting(
            init_threshold, "init_threshold", fix="give the thresholds' starting value, e.g. 0.01")
        self.bandwidth = check_setting(
            bandwidth, "bandwidth", positive=True,
            fix="give the width ε of the straight-through kernel in pre-activation units, e.g. 0.05")
        if sparsity_loss not in SPARSITY_LOSSES:
            raise ConfigError(f"sparsity_loss={sparsity_loss!r} is unknown; use one of {SPARSITY_LOSSES}")
        self.sparsity_loss = sparsity_loss
        self.tanh_scale = check_setting(tanh_scale, "tanh_scale", positive=True,
                                        fix="give the scale inside the tanh penalty, e.g. 4")
        super().__init__(d_in, d_sae, coefficient_warmup_frac=coefficient_warmup_frac,
                         unit_norm_decoder=unit_norm_decoder, decoder_init_norm=decoder_init_norm, **kwargs)

    def _build_encoder(self, dtype: torch.dtype, device: torch.device) -> None:
        super()._build_encoder(dtype, device)
        self.threshold = nn.Parameter(torch.zeros(self.d_sae, dtype=dtype, device=device))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        self.threshold.fill_(self.init_threshold)

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "l0_coefficient": self.l0_coefficient,
                "init_threshold": self.init_threshold, "bandwidth": self.bandwidth,
                "sparsity_loss": self.sparsity_loss, "tanh_scale": self.tanh_scale}

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_acts(x)
        return torch.relu(h) * (h > self.threshold.to(h.dtype)).to(h.dtype)

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor,
                         target: torch.Tensor | None = None) -> StepOutput:
        with torch.no_grad():  # θ >= 0, projected rather than clamped in the graph (a clamp would pin θ at 0)
            self.threshold.clamp_(min=0.0)
        h = self.pre_acts(x)
        threshold = self.threshold.to(h.dtype)
        z, step = JumpReLUStep.apply(h, threshold, self.bandwidth)
        if self.sparsity_loss == "step":
            penalty = step.sum(-1).mean()
        else:
            penalty = torch.tanh(self.tanh_scale * z * self.W_dec.norm(dim=1)).sum(-1).mean()
        coefficient = self.coefficient(self.l0_coefficient)
        return self.dense_output(x, z, variance, target, {"sparsity": coefficient * penalty / variance},
                                 {"l0_coefficient": coefficient, "threshold_mean": self.threshold.detach().mean()})

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)  # thresholds compare pre-activations: unchanged
