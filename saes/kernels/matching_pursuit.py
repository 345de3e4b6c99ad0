"""Matching pursuit: selection through the Gram matrix, values by a differentiable replay.

Matching pursuit over atoms ``D [n, d]`` scored by ``E [n, d]`` (``E = D`` when tied)::

    r_0 = r0;  for t: c = E r_{t-1};  j = argmax score(c);  v_t = f(c_j);  r_t = r_{t-1} - v_t D_j

with ``score = ReLU`` and ``f = ReLU`` (or ``|.|`` and identity for signed codes).

Two halves:

* **Selection** (no gradient): which atom each step picks. With the Gram matrix
  ``Gt = D E^T`` (row j holds ``E d_j``) the scores update as ``c <- c - v_t Gt[j]``, an
  exact rewrite costing O(n) per token and step after one dense product, instead of a
  ``[N, d] @ [d, n]`` product per step. Chosen when ``n^2`` fits in memory and building
  ``Gt`` (``2 n^2 d`` flops) is cheaper than the products it saves.
* **Values** (differentiable): given the indices, the chain is replayed in O(N k d) by
  :class:`MPReplay`, whose backward walks the steps in reverse and writes only the rows
  of ``E`` and ``D`` that were picked. Gradients flow through the coefficients and the
  residual chain; the argmax is a constant, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from saes.kernels.autograd import sparse_decode
from saes.kernels.torch_ref import mp_pick as _pick

# The Gram matrix may take this many bytes (float32) on the CPU; on CUDA, a quarter of the
# free memory.
GRAM_CPU_BYTES = 4 << 30


@dataclass
class PursuitOutput:
    """``values/indices [N, steps]`` (stopped tokens get value 0), ``residual [N, d]``
    (the final ``r``) and, when asked for, ``norms [N, steps + 1]`` (``||r_0||`` first)."""

    values: torch.Tensor
    indices: torch.Tensor
    residual: torch.Tensor
    norms: torch.Tensor | None = None


def gram_fits(n: int, device: torch.device) -> bool:
    """Whether an ``[n, n]`` float32 Gram matrix fits the memory budget on ``device``."""
    need = 4 * n * n
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need <= free // 4
    return need <= GRAM_CPU_BYTES


def use_gram(gram: bool | str, n: int, N: int, steps: int, device: torch.device) -> bool:
    """Decide the Gram update: forced by ``gram=True/False``; "auto" takes it when
    ``n^2`` fits and building it (``2 n^2 d``) costs less than the ``steps - 1`` dense
    score products (``2 N n d`` each) it replaces, i.e. ``n < (steps - 1) * N``."""
    if gram != "auto":
        return bool(gram)
    return steps >= 2 and n < (steps - 1) * N and gram_fits(n, device)


# ------------------------------------------------------------------ Gram cache


class _GramCache:
    """The last Gram matrix, keyed by the storage and version of ``E`` and ``D``, so
    repeated encodes with unchanged weights build it once. A training step bumps the
    weights' version and the next call rebuilds it. :func:`clear_gram_cache` frees it."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def get(self, E: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        key = (E.data_ptr(), E._version, tuple(E.shape), tuple(E.stride()),
               D.data_ptr(), D._version, tuple(D.shape), E.device)
        if key != self.key or self.value is None:
            self.value = None  # free the old one before building the new one
            with torch.no_grad(), torch.autocast(device_type=E.device.type, enabled=False):
                # Float32 even under bf16 autocast: scores are updated k times in place and
                # rounding would pile up in them.
                self.value = D.detach().float() @ E.detach().float().T  # [n, n], row j = E d_j
            self.key = key
        return self.value


_GRAM = _GramCache()


def clear_gram_cache() -> None:
    """Drop the cached Gram matrix (it can be large: ``4 n^2`` bytes)."""
    _GRAM.key, _GRAM.value = None, None


# ------------------------------------------------------------------ selection


def _select(
    r0: torch.Tensor, E: torch.Tensor, D: torch.Tensor, steps: int, *, signed: bool, reselect: bool,
    threshold: float | None, stop_on_duplicate_support: bool, record_norms: bool, gram: bool, ops: ModuleType,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """No-grad pursuit: ``(values, indices, active, residual, norms)``.

    ``active [N, S]`` marks the steps each token really took (None: all of them);
    ``residual`` is None when it was not tracked (the caller decodes it). Always float32:
    under bf16 autocast the score products would come out in bf16 beside a float32 Gram
    matrix (an index_select dtype error), and rounding would pile up over the steps.
    """
    with torch.autocast(device_type=r0.device.type, enabled=False):
        return _select_fp32(r0, E, D, steps, signed=signed, reselect=reselect, threshold=threshold,
                            stop_on_duplicate_support=stop_on_duplicate_support, record_norms=record_norms,
                            gram=gram, ops=ops)


def _select_fp32(
    r0: torch.Tensor, E: torch.Tensor, D: torch.Tensor, steps: int, *, signed: bool, reselect: bool,
    threshold: float | None, stop_on_duplicate_support: bool, record_norms: bool, gram: bool, ops: ModuleType,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    N, d = r0.shape
    n = D.shape[0]
    r0f, Ef, Df = r0.float(), E.float(), D.float()
    Gt = _GRAM.get(E, D) if gram else None
    plain_options = reselect and threshold is None and not stop_on_duplicate_support and not record_norms
    if gram and plain_options:
        # Tied atoms stay one tensor so the step gathers each picked row once.
        tied = E.data_ptr() == D.data_ptr() and E.shape == D.shape and E.stride() == D.stride() and E.dtype == D.dtype
        values, indices = ops.gram_steps(r0f, Ef, Ef if tied else Df, Gt, steps, signed)
        return values, indices, None, None, None

    # General loop: every option of the plain algorithm, scores either recomputed
    # (c = r E^T) or updated through the Gram matrix.
    r = r0f.clone()
    c = r @ Ef.T if gram else None
    done = torch.zeros(N, dtype=torch.bool, device=r0.device)
    if threshold is not None:
        done = r.norm(dim=-1) < threshold
    banned = None if reselect else torch.zeros(N, n, dtype=torch.bool, device=r0.device)
    support = torch.zeros(N, n, dtype=torch.bool, device=r0.device) if stop_on_duplicate_support else None
    rows = torch.arange(N, device=r0.device)
    vals, idxs, acts = [], [], []
    norms = [r.norm(dim=-1)] if record_norms else None
    for _ in range(steps):
        score = c if gram else r @ Ef.T
        if banned is not None:
            # Banned atoms score below every allowed one (-1 < 0 <= ReLU or |c|).
            score = (score.abs() if signed else score.clamp_min(0)).masked_fill(banned, -1.0)
            j = score.argmax(dim=-1)
            v = (c.gather(1, j[:, None]).squeeze(1) if gram else (r * Ef[j]).sum(-1))
            v = v if signed else v.clamp_min(0)
        else:
            j, v = _pick(score, signed)
            if not gram:
                v = (r * Ef[j]).sum(-1)
                v = v if signed else v.clamp_min(0)
        active = ~done
        v = v * active
        r = r - v[:, None] * Df[j]
        if gram:
            c = c - v[:, None] * Gt[j]
        vals.append(v)
        idxs.append(j)
        acts.append(active)
        if banned is not None:
            banned[rows, j] = True
        if support is not None:
            new = ~support[rows, j] & (v != 0)
            support[rows, j] |= v != 0
            done = done | ~new
        if threshold is not None:
            done = done | (r.norm(dim=-1) < threshold)
        if norms is not None:
            norms.append(r.norm(dim=-1))
        if (threshold is not None or support is not None) and bool(done.all()):
            break
    return (
        torch.stack(vals, 1), torch.stack(idxs, 1), torch.stack(acts, 1), r,
        torch.stack(norms, 1) if norms is not None else None,
    )


# ------------------------------------------------------------------ values


class MPReplay(torch.autograd.Function):
    """Coefficients and final residual of pursuit steps with fixed atoms.

    Forward: ``v_t = f(<r_{t-1}, E[j_t]>) * active_t``, ``r_t = r_{t-1} - v_t D[j_t]``.
    Backward walks the steps in reverse, rebuilding ``r_{t-1} = r_t + v_t D[j_t]`` rather
    than storing every residual, and accumulates only the picked rows of E and D.
    """

    @staticmethod
    def forward(ctx: Any, r0, E, D, indices, active, signed: bool):  # type: ignore[override]
        with torch.autocast(device_type=r0.device.type, enabled=False):
            r = r0.float().clone()
            Ef, Df = E.float(), D.float()
            S = indices.shape[1]
            values = torch.empty(r.shape[0], S, dtype=torch.float32, device=r.device)
            for t in range(S):
                j = indices[:, t]
                p = (r * Ef.index_select(0, j)).sum(-1)
                v = p if signed else p.clamp_min(0)
                if active is not None:
                    v = v * active[:, t]
                values[:, t] = v
                r.addcmul_(Df.index_select(0, j), v[:, None], value=-1.0)
        ctx.save_for_backward(r, E, D, indices, values, active)
        ctx.signed = signed
        ctx.dtypes = (r0.dtype, E.dtype, D.dtype)
        return values.to(r0.dtype), r.to(r0.dtype)

    @staticmethod
    def backward(ctx: Any, g_values, g_residual):  # type: ignore[override]
        r, E, D, indices, values, active = ctx.saved_tensors
        r0_dt, E_dt, D_dt = ctx.dtypes
        Ef, Df = E.float(), D.float()
        N, S = indices.shape
        g_r = torch.zeros_like(r) if g_residual is None else g_residual.float().clone()
        gv_in = None if g_values is None else g_values.float()
        need_E, need_D = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gE = torch.zeros_like(Ef) if need_E else None
        gD = torch.zeros_like(Df) if need_D else None
        for t in reversed(range(S)):
            j = indices[:, t]
            v = values[:, t]
            dj = Df.index_select(0, j)
            r_prev = r.addcmul(dj, v[:, None])
            gv = -(g_r * dj).sum(-1)
            if gv_in is not None:
                gv = gv + gv_in[:, t]
            if gD is not None:
                gD.index_add_(0, j, g_r * -v[:, None])
            # The coefficient's own derivative: 1 where it passed the ReLU (and the step ran).
            live = torch.ones_like(v, dtype=torch.bool) if ctx.signed else v > 0
            if active is not None:
                live = live & active[:, t]
            a = gv * live
            ej = Ef.index_select(0, j)
            g_r = g_r.addcmul(ej, a[:, None])
            if gE is not None:
                gE.index_add_(0, j, r_prev * a[:, None])
            r = r_prev
        return (
            g_r.to(r0_dt) if ctx.needs_input_grad[0] else None,
            None if gE is None else gE.to(E_dt),
            None if gD is None else gD.to(D_dt),
            None, None, None,
        )


# ------------------------------------------------------------------ entry point


def pursuit(
    r0: torch.Tensor,
    E: torch.Tensor,
    D: torch.Tensor,
    steps: int,
    *,
    ops: ModuleType,
    signed: bool = False,
    reselect: bool = True,
    threshold: float | None = None,
    stop_on_duplicate_support: bool = False,
    record_norms: bool = False,
    gram: bool | str = "auto",
) -> PursuitOutput:
    """Run ``steps`` pursuit steps on ``r0 [N, d]`` (the centred input).

    Args:
        E, D: ``[n, d]`` scoring atoms and decoding atoms (the same tensor when tied).
        ops: the backend (its ``gram_steps`` runs the plain-option Gram loop).
        signed: pick by ``|c|`` and keep signed coefficients (default ReLU).
        reselect: allow an atom to be picked again.
        threshold: stop a token once ``||r|| < threshold``.
        stop_on_duplicate_support: stop a token once a step adds no new atom.
        record_norms: also return every step's residual norm.
        gram: True, False or "auto" (:func:`use_gram`).

    Values and residual are differentiable in ``r0``, ``E`` and ``D`` when grad is on.
    """
    N = r0.shape[0]
    g = use_gram(gram, D.shape[0], N, steps, r0.device)
    with torch.no_grad():
        values, indices, active, residual, norms = _select(
            r0.detach(), E.detach(), D.detach(), steps, signed=signed, reselect=reselect, threshold=threshold,
            stop_on_duplicate_support=stop_on_duplicate_support, record_norms=record_norms, gram=g, ops=ops,
        )
    wants_grad = torch.is_grad_enabled() and (r0.requires_grad or E.requires_grad or D.requires_grad)
    if wants_grad:
        values, residual = MPReplay.apply(r0, E, D, indices, active, signed)
        return PursuitOutput(values, indices, residual, norms)
    if residual is None:
        residual = r0.float() - sparse_decode(values, indices, D.detach().float(), ops)
    return PursuitOutput(values.to(r0.dtype), indices, residual.to(r0.dtype), norms)
