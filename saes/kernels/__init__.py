"""The one dispatch point for the SAE hot paths.

Every architecture goes through these functions for its sparse work:

* :func:`encode`: pre-activation GEMM + bias, then per-token top-k (or BatchTopK), ReLU:
  codes ``(values, indices) [N, k]`` with a backward that touches only the selected
  latents (no ``[N, d_sae]`` matrix is kept for it);
* :func:`sparse_decode`: ``sum_j values[n, j] * W_dec[indices[n, j]]`` (no bias), reading
  only the k selected decoder rows per token, forward and backward;
* :func:`prefix_decode`: Matryoshka prefix reconstructions from the same sparse code,
  each entry read once and the prefixes formed by a running sum over groups;
* :func:`pursuit`: matching pursuit, through the Gram matrix (``c <- c - c_j G[:, j]``)
  where ``d_sae^2`` fits in memory, and a differentiable replay of the chosen steps;
* :func:`topk`: plain top-k selection of a dense matrix (AuxK, inference helpers).

Backends: the torch path (:mod:`saes.kernels.torch_ref`, any device) and the Triton path
(:mod:`saes.kernels.triton_ops`, CUDA). Triton is used automatically for CUDA tensors
when it is importable; ``SAES_KERNELS=torch`` or ``SAES_KERNELS=triton`` overrides that
(``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``, the Triton interpreter, which
is how the tests compare the two paths without a GPU).

>>> import torch
>>> from saes import kernels
>>> W = torch.eye(3)
>>> kernels.sparse_decode(torch.tensor([[2.0, 1.0]]), torch.tensor([[0, 2]]), W)
tensor([[2., 0., 1.]])
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from saes.kernels import autograd, matching_pursuit, torch_ref
from saes.kernels.autograd import Selection
from saes.kernels.backends import BACKENDS, ENV, backend, interpreter_on, triton_importable
from saes.kernels.matching_pursuit import PursuitOutput

__all__ = [
    "backend", "topk", "batch_topk", "encode", "Encoded", "sparse_decode", "prefix_decode", "pursuit",
    "PursuitOutput", "BACKENDS", "ENV", "interpreter_on", "triton_importable",
]


def _ops(t: torch.Tensor) -> ModuleType:
    if backend(t) == "triton":
        from saes.kernels import triton_ops  # imported lazily: triton is optional

        return triton_ops
    return torch_ref


# ------------------------------------------------------------------ selection


def topk(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``h [N, d_sae]`` along the last dim: ``(values [N, k], indices [N, k])``.

    Values are the raw entries (no ReLU), differentiable; order within a row is
    unspecified. Exact (ties aside), and faster than ``torch.topk`` on wide rows.
    """
    return torch_ref.topk(h, k)


def batch_topk(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopK selection on dense ``h [N, d_sae]``: the ``k * N`` largest positive
    entries of the batch as padded ``(indices, keep) [N, k']`` (``keep`` False on padding,
    k' the largest per-row count)."""
    return torch_ref.batch_topk_select(h, k)


# ------------------------------------------------------------------ encoder


@dataclass
class Encoded:
    """Sparse codes from :func:`encode`.

    Attributes:
        values: ``[N, k']`` ReLU codes (0 on BatchTopK padding), differentiable.
        indices: ``[N, k']`` latent of each code (int64).
        pre_acts: a zero-argument function giving the dense pre-activations
            ``[N, d_sae]``, differentiable (its gradient also reaches only the entries
            it is non-zero on). Free on the torch path, which computed them anyway; the
            Triton path computes them on request.
    """

    values: torch.Tensor
    indices: torch.Tensor
    pre_acts: Callable[[], torch.Tensor]


def encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor | None,
    b_dec: torch.Tensor | None,
    k: int,
    *,
    batch_topk: bool = False,
    columns: torch.Tensor | None = None,
) -> Encoded:
    """Fused encoder: ``h = (x - b_dec) @ W_enc + b_enc``, top-k, ReLU.

    Args:
        x: ``[N, d_in]`` activations; ``b_dec`` None skips the centring.
        W_enc, b_enc: ``[d_in, d_sae]`` and ``[d_sae]`` (``b_enc`` may be None).
        k: latents per token, or the average per token with ``batch_topk`` (the
            ``k * N`` largest positive pre-activations of the batch; rows are padded to
            the largest count with zero values).
        columns: choose only among these latents (e.g. the dead ones for AuxK);
            indices still refer to all ``d_sae`` latents.
    """
    ops = _ops(x)
    sel = Selection("batch_topk" if batch_topk else "topk", int(k), columns, keep_pre_acts=columns is None)
    values, indices, h = autograd.SparseEncode.apply(x, W_enc, b_enc, b_dec, sel, ops)

    if h.numel():
        def pre_acts() -> torch.Tensor:
            return h
    else:
        def pre_acts() -> torch.Tensor:
            if columns is not None:
                raise ValueError("pre_acts() is not available for codes chosen among a subset of latents")
            return autograd.DensePreActs.apply(x, W_enc, b_enc, b_dec, ops)

    return Encoded(values, indices, pre_acts)


# ------------------------------------------------------------------ decoders


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``[N, d_in]`` reconstruction (no bias) from codes ``values/indices [N, k]``.

    Repeated indices in a row add up (matching pursuit may pick an atom twice).
    Differentiable in ``values`` and ``W_dec``; the backward reads and writes only the
    selected decoder rows.
    """
    return autograd.sparse_decode(values, indices, W_dec, _ops(W_dec))


def prefix_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, ends: list[int]) -> torch.Tensor:
    """Matryoshka prefix reconstructions ``[N, L, d_in]`` (no bias).

    Level ``l`` sums the codes whose latent is below ``ends[l]`` (``ends`` increasing,
    the last one ``d_sae``). Each code is read once, whatever L.
    """
    return autograd.prefix_decode(values, indices, W_dec, list(ends), _ops(W_dec))


# ------------------------------------------------------------------ matching pursuit


def pursuit(
    r0: torch.Tensor,
    E: torch.Tensor,
    D: torch.Tensor,
    steps: int,
    **options,
) -> PursuitOutput:
    """Matching pursuit of ``r0 [N, d]`` over atoms ``D [n, d]`` scored by ``E [n, d]``.

    See :func:`saes.kernels.matching_pursuit.pursuit` for the options (signed codes, no re-selection,
    threshold stopping, duplicate-support stopping, residual norms, Gram update).
    """
    return matching_pursuit.pursuit(r0, E, D, steps, ops=_ops(r0), **options)
