"""What the sparsity-penalised families share: L1 ("standard"), JumpReLU and Gated SAEs.

These families get sparse codes from a penalty in the loss rather than from a fixed number
of active latents, so early in training most latents fire: their codes are computed and
decoded densely (as SAELens does), and handed to the trainer as ``values [batch, d_sae]``
with ``indices`` the identity (zero values are padding, as everywhere).

Loss normalisation and coefficients. The trainer's reconstruction loss is the MSE divided
by the batch variance ``V = mean ||x - mean(x)||^2``. Each family divides its penalties by
the same ``V``, so the whole loss is SAELens's loss on the same inputs divided by ``V``:
a coefficient here means what it means in SAELens (``l1_coefficient``,
``l0_coefficient``), and the gradients differ only by the per-batch factor ``1 / V``,
which Adam's normalisation all but cancels. As in SAELens, a coefficient's effect still
depends on the input scale (L1 codes scale with ``x``, the L0 penalty does not); train
with ``normalize_input=True`` (inputs scaled so that ``E||x - mean||^2 = d_in``, the scale
SAELens's ``expected_average_only_in`` normalisation gives) to make coefficients carry
across models and layers.

Shared settings:

* ``coefficient_warmup_frac``: the sparsity coefficient rises linearly from 0 over this
  fraction of the run's tokens (SAELens's ``l1_warm_up_steps`` / ``l0_warm_up_steps`` in
  tokens instead of steps). The trainer reports progress before each step
  (:meth:`SAE.set_training_progress`), so a resumed run warms up exactly as an
  uninterrupted one.
* ``unit_norm_decoder``: keep decoder rows at unit norm (the trainer projects and
  re-normalises them). False frees them; rows then start at norm ``decoder_init_norm``
  with the encoder tied to them (Anthropic's April 2024 initialisation, SAELens's
  ``decoder_init_norm``).

AuxK is not used (``supports_auxk = False``): none of these papers uses it. TopK needs it
because a latent outside the top k gets no gradient at all; here the penalty is the
sparsity mechanism, and the JumpReLU threshold's straight-through gradient and the
Gated gate's auxiliary loss keep latents near their threshold trainable.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from saes.architectures.base import SAE, StepOutput, jump_codes, normalized_mse
from saes.errors import ConfigError


def check_setting(value: Any, name: str, *, positive: bool = False, at_most: float | None = None,
                  fix: str = "") -> float:
    """``value`` as a finite float, non-negative (or positive), or a one-line ConfigError
    naming the setting and what to give instead."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number{'; ' + fix if fix else ''}")
    value = float(value)
    if (positive and not value > 0) or value < 0:
        raise ConfigError(f"{name}={value} must be {'positive' if positive else 'at least 0'}"
                          f"{'; ' + fix if fix else ''}")
    if at_most is not None and value > at_most:
        raise ConfigError(f"{name}={value} must be at most {at_most}{'; ' + fix if fix else ''}")
    return value


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be True or False")
    return value


def warmup_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up of a coefficient: ``min(1, progress / warmup_frac)`` (1 without warm-up).

    >>> warmup_factor(0.01, 0.05), warmup_factor(0.5, 0.05), warmup_factor(0.0, 0.0)
    (0.2, 1.0, 1.0)
    """
    if warmup_frac <= 0:
        return 1.0
    return min(1.0, max(0.0, progress) / warmup_frac)


class PenalisedSAE(SAE):
    """Base of the families trained with a sparsity penalty on dense codes.

    Subclasses supply :meth:`dense_codes` (inference codes ``z [batch, d_sae]``) and
    :meth:`training_forward`; this class holds the shared settings (see the module
    docstring), the coefficient warm-up and the dense step output.
    """

    supports_auxk = False

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        coefficient_warmup_frac: float = 0.0,
        unit_norm_decoder: bool = True,
        decoder_init_norm: float = 0.1,
        **kwargs: Any,
    ):
        self.coefficient_warmup_frac = check_setting(
            coefficient_warmup_frac, "coefficient_warmup_frac", at_most=1.0,
            fix="give the fraction of the run's tokens over which the coefficient rises from 0, in [0, 1]")
        self.unit_norm_decoder = check_flag(unit_norm_decoder, "unit_norm_decoder")
        self.decoder_init_norm = check_setting(
            decoder_init_norm, "decoder_init_norm", positive=True,
            fix="give the norm free decoder rows start at (SAELens and Anthropic: 0.1)")
        # Fraction of the run trained once the current step ends; 1 (no warm-up in effect)
        # outside a training run.
        self.progress = 1.0
        super().__init__(d_in, d_sae, **kwargs)

    def arch_config(self) -> dict[str, Any]:
        return {**super().arch_config(), "coefficient_warmup_frac": self.coefficient_warmup_frac,
                "unit_norm_decoder": self.unit_norm_decoder, "decoder_init_norm": self.decoder_init_norm}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """As :meth:`SAE.reset_parameters`; free decoder rows (and the tied encoder) are
        scaled to ``decoder_init_norm``."""
        super().reset_parameters(generator)
        if not self.unit_norm_decoder:  # the encoder stays tied (the transpose, for an SAE) at the same norm
            self.W_dec.mul_(self.decoder_init_norm)
            self.W_enc.mul_(self.decoder_init_norm)

    def set_training_progress(self, fraction: float) -> None:
        self.progress = float(fraction)

    def coefficient(self, value: float) -> float:
        """``value`` scaled by the warm-up at the current progress."""
        return value * warmup_factor(self.progress, self.coefficient_warmup_frac)

    # -------------------------------------------------------------- codes

    def dense_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes ``z [batch, d_sae]`` of flat ``x [batch, d_in]``."""
        raise NotImplementedError

    def _encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return jump_codes(self.dense_codes(x), 0.0)

    def dense_output(self, x: torch.Tensor, z: torch.Tensor, variance: torch.Tensor, target: torch.Tensor | None,
                     penalties: dict[str, torch.Tensor], metrics: dict[str, Any]) -> StepOutput:
        """The step output for dense codes ``z [batch, d_sae]`` of ``x``: decoded with one
        product, the reconstruction loss (against ``target``, a transcoder's output hook, or
        ``x``) beside ``penalties`` (already weighted and divided by ``variance``)."""
        x_hat = self.add_skip(z @ self.W_dec + self.b_dec, x)
        indices = torch.arange(self.d_sae, device=z.device).expand(z.shape[0], -1)
        losses = {"mse": normalized_mse(x_hat, x if target is None else target, variance), **penalties}
        return StepOutput(x_hat, z, indices, None, losses, metrics=metrics, fired=(z.detach() != 0).any(0))
