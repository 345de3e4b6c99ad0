"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical").

The encoder unrolls matching pursuit over the decoder's unit atoms ``d_i`` (rows of
``W_dec``)::

    r_0 = x - b_dec
    for t in 1..k:  c = D r_{t-1};  j = argmax_i ReLU(c_i);  z_j += c_j;  r_t = r_{t-1} - c_j d_j
    x_hat = z @ W_dec + b_dec

Defaults follow the paper: fixed k in training, ReLU codes, an atom may be chosen again,
tied dictionary (the same D selects and decodes). Options: ``signed=True`` (argmax of
``|c|``, signed codes), ``reselect=False`` (each atom at most once), ``tied=False`` (a
separate ``W_enc`` scores atoms; the coefficient is its score), and at inference a
different number of steps ``k`` or per-token stopping once ``||r|| < threshold``.

With unit atoms and ``c_j = <r, d_j> >= 0`` the residual obeys
``||r_t||^2 = ||r_{t-1}||^2 - c_j^2``: it never grows, so running more steps than in
training can only lower the error.

Gradients flow through the chosen coefficients and the residual chain; the argmax index is
a constant. ``gram=True`` updates the scores with the Gram matrix ``G = D D^T``
(``c <- c - c_j G[:, j]``, O(d_sae) per step after one dense product): an exact rewrite
that pays off where ``d_sae^2`` fits in memory and k is not tiny; ``"auto"`` decides by
cost and memory (:func:`saes.kernels.matching_pursuit.use_gram`). Either way the coefficients are then
recomputed along the chosen atoms by a differentiable replay whose backward touches only
the picked rows (:mod:`saes.kernels.matching_pursuit`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saes import kernels
from saes.architectures.base import SAE, StepOutput, as_count, check_k, flatten_rows, normalized_mse
from saes.architectures.registry import register
from saes.errors import ConfigError


@dataclass
class PursuitResult:
    """Outcome of :meth:`MPSAE.pursuit` for ``x [batch, d_in]``.

    Attributes:
        values, indices: ``[batch, steps]`` coefficient and atom of each step (an atom may
            appear more than once; stopped tokens get value 0).
        residual: ``[batch, d_in]`` final residual ``r_steps``.
        norms: ``[batch, steps + 1]`` residual norms ``||r_0|| ... ||r_steps||`` (only when
            asked for with ``record_norms=True``).
    """

    values: torch.Tensor
    indices: torch.Tensor
    residual: torch.Tensor
    norms: torch.Tensor | None = None


@register(cli_name="mp")
class MPSAE(SAE):
    """Matching-pursuit encoder over a unit-norm dictionary.

    Args:
        d_in, d_sae: widths.
        k: pursuit steps in training (and the default at inference).
        tied: the decoder atoms also score (paper default). False adds a ``W_enc``.
        signed: pick by ``|c|`` and keep signed coefficients (default: ReLU).
        reselect: allow an atom to be picked again (paper default).
        gram: "auto", True or False: update scores through ``G = D D^T``.
        residual_threshold: default per-token stopping threshold at inference (None: off).
        max_iterations: default step cap at inference (None: ``k``, or ``d_in`` when
            stopping by threshold).
        stop_on_duplicate_support: stop a token once a step adds no new atom (SAELens's
            option; off by default).

    Example:
        >>> import torch, saes
        >>> sae = saes.MPSAE(16, 64, k=4)
        >>> x = torch.randn(3, 16)
        >>> r = sae.pursuit(x, k=8, record_norms=True)
        >>> bool((r.norms[:, 1:] <= r.norms[:, :-1] + 1e-5).all())
        True
        >>> sae.encode(x, threshold=0.5).shape
        torch.Size([3, 64])
    """

    architecture = "mp"
    supports_auxk = False
    can_transcode = False  # the pursuit subtracts decoder rows from the input

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int,
        *,
        tied: bool = True,
        signed: bool = False,
        reselect: bool = True,
        gram: bool | str = "auto",
        residual_threshold: float | None = None,
        max_iterations: int | None = None,
        stop_on_duplicate_support: bool = False,
        **kwargs: Any,
    ):
        self.k = check_k(k, as_count(d_sae, "d_sae"))
        if gram not in ("auto", True, False):
            raise ConfigError(f"gram must be 'auto', True or False, got {gram!r}")
        self.tied = bool(tied)
        self.signed = bool(signed)
        self.reselect = bool(reselect)
        self.gram = gram
        self.residual_threshold = None if residual_threshold is None else float(residual_threshold)
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.stop_on_duplicate_support = bool(stop_on_duplicate_support)
        super().__init__(d_in, d_sae, **kwargs)

    @property
    def saelens_architecture(self) -> str:  # type: ignore[override]
        """SAELens's "matching_pursuit" is the paper's variant (tied, ReLU codes, atoms picked
        again); the others are written as "mp", which only this package reads."""
        return "matching_pursuit" if self.tied and not self.signed and self.reselect else "mp"

    def _build_encoder(self, dtype: torch.dtype, device: torch.device) -> None:
        if not self.tied:
            # Registered directly: the class-level W_enc property would make
            # register_parameter believe the name is taken.
            self._parameters["W_enc"] = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dtype, device=device))

    @property
    def W_enc(self) -> torch.Tensor:  # type: ignore[override]
        """``[d_in, d_sae]``: ``W_dec.T`` when tied, else the separate scoring matrix."""
        p = self._parameters.get("W_enc")
        return self.W_dec.T if p is None else p

    @property
    def b_enc(self) -> torch.Tensor:  # type: ignore[override]
        """Matching pursuit has no encoder bias: zeros ``[d_sae]``."""
        return torch.zeros(self.d_sae, dtype=self.dtype, device=self.device)

    def arch_config(self) -> dict[str, Any]:
        return {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "k": self.k,
            "tied": self.tied,
            "signed": self.signed,
            "reselect": self.reselect,
            "gram": self.gram,
            "residual_threshold": self.residual_threshold,
            "max_iterations": self.max_iterations,
            "stop_on_duplicate_support": self.stop_on_duplicate_support,
        }

    # ------------------------------------------------------------ pursuit

    def pursuit(
        self,
        x: torch.Tensor,
        k: int | None = None,
        threshold: float | None = None,
        *,
        record_norms: bool = False,
    ) -> PursuitResult:
        """Run matching pursuit on ``x [batch, d_in]`` (flat).

        Args:
            k: number of steps (default: ``max_iterations``, else the trained k, or
                ``d_in`` when stopping by threshold).
            threshold: stop a token once ``||r|| < threshold`` (default
                ``residual_threshold``).
            record_norms: also return every step's residual norm.
        """
        x, _ = flatten_rows(x, self.d_in, "MPSAE.pursuit")
        threshold = self.residual_threshold if threshold is None else float(threshold)
        if threshold is not None and threshold <= 0:
            threshold = None
        if k is None:
            k = self.max_iterations or (max(self.d_in, self.k) if threshold is not None else self.k)
        steps = int(k)
        if steps < 1:
            raise ConfigError(f"k={k} pursuit steps: use at least 1")
        D = self.W_dec
        E = self.W_enc.T  # [d_sae, d_in] scoring atoms (D itself when tied)
        r = x.to(D.dtype)
        if self.apply_b_dec_to_input:
            r = r - self.b_dec
        # Selection (Gram update where it pays) and the differentiable replay of the
        # chosen steps live in the kernels.
        out = kernels.pursuit(
            r, E, D, steps, signed=self.signed, reselect=self.reselect, threshold=threshold,
            stop_on_duplicate_support=self.stop_on_duplicate_support, record_norms=record_norms, gram=self.gram,
        )
        return PursuitResult(out.values, out.indices, out.residual, out.norms)

    def _encode_sparse(self, x: torch.Tensor, k: int | None = None, threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` steps (default: as trained) or per-token stopping at ``threshold``."""
        res = self.pursuit(x, k=k, threshold=threshold)
        return res.values, res.indices

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = super().decode_sparse(values, indices)
        return out if self.apply_b_dec_to_input else out - self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = super().decode(z)
        return out if self.apply_b_dec_to_input else out - self.b_dec

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor) -> StepOutput:
        # Training always runs the fixed k steps; stopping thresholds are for inference.
        res = self.pursuit(x, k=self.k, threshold=0.0)
        x_hat = self.decode_sparse(res.values, res.indices)
        return StepOutput(x_hat, res.values, res.indices, None, {"mse": normalized_mse(x_hat, x, variance)})

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        # Pursuit is homogeneous in r: on raw x every coefficient shrinks by 1/scale and
        # the atoms stay unit vectors, so only b_dec moves (and the stopping threshold).
        self.b_dec.div_(scale)
        if self.residual_threshold is not None:
            self.residual_threshold /= scale
