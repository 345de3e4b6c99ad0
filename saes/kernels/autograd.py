"""Differentiable sparse encoder and decoder, built on a backend's primitives.

``ops`` is :mod:`saes.kernels.torch_ref` or :mod:`saes.kernels.triton_ops`; both provide
``encode_topk``, ``segment_sum`` and ``entry_dot`` with the same signatures. The
functions here own the autograd bookkeeping so that both backends have the same
backward, which touches only the selected latents:

* encoder: ``dW_enc[:, j] = sum_t g[t, j] xc[t]`` and ``db_enc[j] = sum_t g[t, j]`` over
  the tokens that selected j; ``db_dec = -W_enc @ db_enc`` (a GEMV, no per-token
  input gradient unless ``x`` itself needs one);
* decoder: ``dW_dec[j] = sum_t v[t, j] dout[t]`` and ``dv[t, s] = <dout[t], W_dec[j]>``.

Neither keeps the ``[N, d_sae]`` pre-activations for the backward pass: the encoder
saves the centred input, the indices and the values.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from saes.kernels import torch_ref


class _SharedOrder:
    """The latent-sorted order of one code's entries, shared between backward passes.

    A training step decodes the very indices the encoder produced; both backward passes
    sort those entries by latent. The decoder's (which runs first) leaves its result
    here and the encoder's picks it up, checked by identity and version of the index
    tensor, so a reused memory address can never hand out a stale order.
    """

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._key: tuple = ()
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def put(self, owner: torch.Tensor | None, n: int, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        if owner is None:
            return
        self._ref, self._key, self._value = weakref.ref(owner), (owner._version, n), value

    def get(self, owner: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if owner is None or self._ref is None or self._ref() is not owner or self._key != (owner._version, n):
            return None
        value, self._ref, self._value = self._value, None, None  # used once per step
        return value


_ORDER = _SharedOrder()


def _owner(t: torch.Tensor) -> torch.Tensor | None:
    """The tensor a plain reshape of ``t`` was taken from (the encoder's index output),
    or None when ``t`` does not list that tensor's entries in the same order."""
    base = t._base if t._base is not None else t
    same = base.is_contiguous() and t.is_contiguous() and base.data_ptr() == t.data_ptr() and base.numel() == t.numel()
    return base if same else None


@dataclass(frozen=True)
class Selection:
    """How the encoder picks latents.

    Attributes:
        kind: "topk" (k per token) or "batch_topk" (k * N over the batch, padded).
        k: the k of either.
        columns: optional subset of latents ``[m]`` to choose from (AuxK over dead
            latents); indices are returned in the full latent space.
        keep_pre_acts: also return the dense pre-activations (a differentiable output;
            only the torch path has them at no extra cost).
    """

    kind: str
    k: int
    columns: torch.Tensor | None = None
    keep_pre_acts: bool = False


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the heavy products run in: the autocast dtype when autocast is on for
    the tensors' device, else the first tensor's dtype."""
    t = tensors[0]
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class SparseEncode(torch.autograd.Function):
    """``h = (x - b_dec) @ W_enc + b_enc``, selection, ReLU: ``(values, indices, h)``.

    ``h`` is an empty tensor unless ``Selection.keep_pre_acts``. Gradients reach only the
    selected latents; a gradient arriving on ``h`` (AuxK computed from the dense
    pre-activations) is turned into entries by its non-zeros and joins them.
    """

    @staticmethod
    def forward(ctx: Any, x, W, b, b_dec, sel: Selection, ops: ModuleType):  # type: ignore[override]
        dt = compute_dtype(W, x)
        dev = x.device.type
        with torch.autocast(device_type=dev, enabled=False):
            xc = x.to(dt) if b_dec is None else (x - b_dec).to(dt)
            Wc, bc = W.to(dt), (None if b is None else b.to(dt))
            if sel.columns is not None:
                Wc = Wc.index_select(1, sel.columns)
                bc = None if bc is None else bc.index_select(0, sel.columns)
            h = None
            if sel.kind == "topk":
                raw, idx, h = ops.encode_topk(xc, Wc, bc, sel.k)
                values = raw.clamp_min(0)
            elif sel.kind == "batch_topk":
                h = torch_ref.pre_acts(xc, Wc, bc)
                idx, keep = torch_ref.batch_topk_select(h, sel.k)
                values = h.gather(1, idx).clamp_min(0) * keep
            else:
                raise ValueError(f"unknown selection {sel.kind!r}")
            if sel.columns is not None:
                idx = sel.columns[idx]
        if not sel.keep_pre_acts or h is None or sel.columns is not None:
            h = values.new_empty(0)
            ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(xc, Wc if sel.columns is None else W.to(dt), idx, values)
        ctx.idx_owner = weakref.ref(idx)
        ctx.ops = ops
        ctx.param_dtypes = (x.dtype, W.dtype, None if b is None else b.dtype, None if b_dec is None else b_dec.dtype)
        return values, idx, h

    @staticmethod
    def backward(ctx: Any, g_values, _g_idx, g_h):  # type: ignore[override]
        xc, W, idx, values = ctx.saved_tensors
        N, k = idx.shape
        rows, cols, w = [], [], []
        shared = None
        if g_values is not None and (g_h is None or not g_h.numel()):
            shared = _ORDER.get(ctx.idx_owner(), W.shape[1])
        if g_values is not None:
            bag, _ = torch_ref.token_bags(N, k, idx.device)
            rows.append(bag)
            cols.append(idx.reshape(-1))
            w.append((g_values * (values > 0)).reshape(-1))
        if g_h is not None and g_h.numel():
            r, c = g_h.nonzero(as_tuple=True)
            rows.append(r)
            cols.append(c)
            w.append(g_h[r, c])
        grads = encoder_grads(ctx, xc, W, rows, cols, w, order=shared)
        return (*grads, None, None)


def encoder_grads(ctx: Any, xc, W, rows, cols, w, order: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple:
    """Gradients of ``(x, W_enc, b_enc, b_dec)`` from entries ``(token, latent, grad)``."""
    x_dt, W_dt, b_dt, bdec_dt = ctx.param_dtypes
    need_x, need_W, need_b, need_bdec = ctx.needs_input_grad[:4]
    if not rows:
        return None, None, None, None
    rows = torch.cat(rows) if len(rows) > 1 else rows[0]
    cols = torch.cat(cols) if len(cols) > 1 else cols[0]
    w = torch.cat(w) if len(w) > 1 else w[0]
    d, n = W.shape
    ops = ctx.ops
    gW = gb = gbdec = gx = None
    if need_W:
        order, offsets = order if order is not None else torch_ref.by_latent(cols, n)
        # In the parameter's dtype (float32 under autocast), written through the transposed
        # view: latent j's gradient is column j.
        gW = torch_ref.BUFFERS.get((d, n), W_dt, W.device)
        ops.segment_sum(xc, rows[order], w[order], offsets, out=gW.t())
    if need_b or need_bdec:
        gb_full = torch_ref.scatter_sum(cols, w, n, torch.float32)
        if need_bdec:
            # d/db_dec of (x - b_dec) @ W summed over tokens: -W @ (sum of latent grads).
            gbdec = -(W.float() @ gb_full).to(bdec_dt)
        gb = gb_full.to(b_dt) if need_b else None
    if need_x:
        order = torch.argsort(rows, stable=True)
        counts = torch.bincount(rows, minlength=xc.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        gx = ops.segment_sum(W.t(), cols[order], w[order], offsets).to(x_dt)
    return gx, gW, gb, gbdec


class SparseDecode(torch.autograd.Function):
    """``out[b] = sum_{e in bag b} values[e] * W_dec[indices[e]]`` with a sparse backward.

    ``values/indices`` are ``[N, k]`` (bag = row) or flat ``[E]`` with ``offsets [B]``
    (bags contiguous, as :func:`prefix_decode` builds them).
    """

    @staticmethod
    def forward(ctx: Any, values, indices, W, offsets, ops: ModuleType):  # type: ignore[override]
        dt = compute_dtype(W, values)
        with torch.autocast(device_type=W.device.type, enabled=False):
            Wc = W.to(dt)
            v = values.reshape(-1).to(dt)
            cols = indices.reshape(-1)
            if offsets is None:
                bag, offsets = torch_ref.token_bags(indices.shape[0], indices.shape[1], indices.device)
            else:
                counts = torch.diff(offsets, append=offsets.new_tensor([cols.numel()]))
                bag = torch.repeat_interleave(torch.arange(offsets.numel(), device=offsets.device), counts)
            out = ops.segment_sum(Wc, cols, v, offsets)
        ctx.save_for_backward(v, cols, bag, Wc)
        owner = _owner(indices) if indices.dim() == 2 else None
        ctx.idx_owner = weakref.ref(owner) if owner is not None else None
        ctx.ops = ops
        ctx.shapes = (values.shape, values.dtype, W.dtype)
        return out

    @staticmethod
    def backward(ctx: Any, g_out):  # type: ignore[override]
        v, cols, bag, W = ctx.saved_tensors
        vshape, v_dt, W_dt = ctx.shapes
        ops = ctx.ops
        g_out = g_out.to(W.dtype)
        gv = gW = None
        order, offsets = torch_ref.by_latent(cols, W.shape[0])
        if ctx.idx_owner is not None:
            _ORDER.put(ctx.idx_owner(), W.shape[0], (order, offsets))
        bag_s = bag[order]
        if ctx.needs_input_grad[0]:
            # Visited latent by latent, each decoder row is read once from memory and
            # reused for all its tokens (token order would fetch rows at random).
            dots = ops.entry_dot(g_out, bag_s, W, cols[order])
            gv = torch.empty_like(dots).index_copy_(0, order, dots).to(v_dt).reshape(vshape)
        if ctx.needs_input_grad[2]:
            gW = ops.segment_sum(g_out, bag_s, v[order], offsets, out_dtype=W_dt)
        return gv, None, gW, None, None


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, ops: ModuleType) -> torch.Tensor:
    """``[N, d]`` reconstruction (no bias) from codes ``values/indices [N, k]`` on ``ops``
    (see :func:`saes.kernels.sparse_decode`); no codes decode to zeros."""
    if indices.shape[-1] == 0:
        return W.new_zeros(indices.shape[0], W.shape[1])
    return SparseDecode.apply(values, indices, W, None, ops)


def prefix_decode(values: torch.Tensor, indices: torch.Tensor, W: torch.Tensor, ends: list[int], ops: ModuleType) -> torch.Tensor:
    """Prefix reconstructions ``[N, L, d]`` (no bias) of nested latent groups.

    ``ends`` are the prefix ends ``m_1 < ... < m_L``; level l sums the codes of latents
    below ``m_l``. Each entry is read once: entries are sorted by latent within their
    row, so every (token, group) pair is one contiguous bag; the L group sums come from
    one sparse decode and the prefixes from a running sum over groups.
    """
    N, k = indices.shape
    L = len(ends)
    sidx, perm = torch.sort(indices, dim=1)
    svals = values.gather(1, perm)
    bounds = torch.tensor(ends, device=indices.device, dtype=indices.dtype)
    group = torch.bucketize(sidx, bounds, right=True).clamp_max(L - 1)
    bags = (torch.arange(N, device=indices.device)[:, None] * L + group).reshape(-1)
    counts = torch.bincount(bags, minlength=N * L)
    offsets = torch.cumsum(counts, 0) - counts
    groups = SparseDecode.apply(svals.reshape(-1), sidx.reshape(-1), W, offsets, ops)
    return groups.view(N, L, -1).cumsum(dim=1)


class DensePreActs(torch.autograd.Function):
    """Dense ``(x - b_dec) @ W_enc + b_enc`` whose backward only visits non-zero
    gradient entries (for AuxK on a path that did not keep the pre-activations)."""

    @staticmethod
    def forward(ctx: Any, x, W, b, b_dec, ops: ModuleType):  # type: ignore[override]
        dt = compute_dtype(W, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.to(dt) if b_dec is None else (x - b_dec).to(dt)
            Wc = W.to(dt)
            h = torch_ref.pre_acts(xc, Wc, None if b is None else b.to(dt), reuse=False)
        ctx.save_for_backward(xc, Wc)
        ctx.ops = ops
        ctx.param_dtypes = (x.dtype, W.dtype, None if b is None else b.dtype, None if b_dec is None else b_dec.dtype)
        return h

    @staticmethod
    def backward(ctx: Any, g_h):  # type: ignore[override]
        xc, W = ctx.saved_tensors
        r, c = g_h.nonzero(as_tuple=True)
        grads = encoder_grads(ctx, xc, W, [r], [c], [g_h[r, c]])
        return (*grads, None)
