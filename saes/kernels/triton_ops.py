"""Triton backend of the SAE kernels (CUDA; the CPU interpreter with ``TRITON_INTERPRET=1``).

Same primitives and signatures as :mod:`saes.kernels.torch_ref`:

* :func:`encode_topk`: the pre-activation GEMM fused with a per-tile top-k. Each
  ``[BM, BN]`` tile of ``h`` lives only in registers: the kernel keeps its ``KT`` largest
  entries per row and writes those candidates (``N * n/BN * KT`` of them, a small
  fraction of ``h``). A torch top-k over the candidates finishes the selection. It is
  exact: a row whose true top-k could have more than ``KT`` entries in one tile shows it
  (that tile's ``KT``-th candidate reaches the row's k-th value) and is recomputed
  densely, which random and trained dictionaries almost never need.
* :func:`segment_sum`: bag sums ``out[b] = sum_e w[e] src[rows[e]]`` (decoder forward,
  weight gradients with bags = latents, input gradient), written through any strides so
  the ``[d_in, d_sae]`` encoder gradient needs no transpose.
* :func:`entry_dot`: ``out[e] = <A[a[e]], B[b[e]]>`` (gradient of code values).
* :func:`gram_steps`: matching-pursuit steps through the Gram matrix, one pass over
  the scores per step fusing the update ``c -= v Gt[j]`` with the next argmax and its
  runner-up (for the exact near-tie check).

Products accumulate in float32 whatever the input dtype.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from saes.kernels import torch_ref
from saes.kernels.backends import interpreter_on

# Rows the fused encoder had to recompute densely (a tile held more of a row's top k than
# it kept); read by the tests and benchmarks.
stats = {"dense_rows": 0}


def _pow2(x: int, lo: int = 1, hi: int | None = None) -> int:
    p = max(lo, 1 << max(0, math.ceil(math.log2(max(x, 1)))))
    return min(p, hi) if hi is not None else p


# ------------------------------------------------------------------ fused encoder


@triton.jit
def _encode_tiles_kernel(
    x_ptr, w_ptr, b_ptr, cv_ptr, ci_ptr,
    N, D, n,
    s_xn, s_xd, s_wd, s_wn, s_cn,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, BN)
    rn = pid_n * BN + cols
    rk = tl.arange(0, BK)
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + rk
        a = tl.load(x_ptr + rm64[:, None] * s_xn + kk[None, :] * s_xd,
                    mask=(rm[:, None] < N) & (kk[None, :] < D), other=0.0)
        w = tl.load(w_ptr + kk[:, None].to(tl.int64) * s_wd + rn64[None, :] * s_wn,
                    mask=(kk[:, None] < D) & (rn[None, :] < n), other=0.0)
        if UPCAST:
            # The interpreter's dot mis-reads bf16 operands; float32 operands give the
            # same products (bf16 x bf16 is exact in float32) and float32 accumulation.
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc += tl.dot(a, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=rn < n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    acc = tl.where(rn[None, :] < n, acc, float("-inf"))
    # Tile-local top-KT by repeated max: KT passes over registers, negligible next to
    # the D-long dot products above.
    out = rm64 * s_cn + pid_n * KT
    for t in tl.static_range(KT):
        m = tl.max(acc, axis=1)
        am = tl.argmax(acc, axis=1)
        tl.store(cv_ptr + out + t, m, mask=rm < N)
        tl.store(ci_ptr + out + t, pid_n * BN + am, mask=rm < N)
        acc = tl.where(cols[None, :] == am[:, None], float("-inf"), acc)


def _encode_blocks(N: int, D: int, n: int, k: int) -> tuple[int, int, int]:
    if interpreter_on():  # tiny blocks: the interpreter runs each program in numpy
        return 16, 32, 16
    return 64, 128, 32


def tiles_per_row(n: int, BN: int, k: int) -> int:
    """Candidates kept per tile: about four times a tile's expected share of the top k
    (``k * BN / n``), at least 8, at most ``min(k, BN)``.

    The floor matters at real sizes: a row is recomputed densely when any of its ``n / BN``
    tiles holds ``KT`` or more of its top k, and with 128 tiles a floor of 2 sent 58-100% of
    random rows (n = 16,384-65,536, k = 32-64) to the dense path; 8 sends none. Writing 8
    candidates per tile is still a small fraction of ``h`` (1/16 at BN = 128).
    """
    expect = k * BN / max(n, 1)
    return int(min(k, BN, max(8, _pow2(math.ceil(4 * expect)))))


def encode_topk(
    xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, k: int,
    *, blocks: tuple[int, int, int] | None = None, kt: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """``(values [N, k], indices [N, k], None)``: top-k of ``xc @ W + b`` per row.

    ``blocks = (BM, BN, BK)`` and ``kt`` (candidates per tile) override the defaults
    (the tests use them to force partial tiles and the dense fallback).
    """
    N, D = xc.shape
    n = W.shape[1]
    BM, BN, BK = blocks or _encode_blocks(N, D, n, k)
    T = triton.cdiv(n, BN)
    KT = int(kt or tiles_per_row(n, BN, k))
    while KT * T < k:  # enough candidates for k picks
        KT *= 2
    KT = min(KT, BN)
    cand_v = torch.empty(N, T * KT, dtype=torch.float32, device=xc.device)
    cand_i = torch.empty(N, T * KT, dtype=torch.int32, device=xc.device)
    ieee = xc.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    _encode_tiles_kernel[(triton.cdiv(N, BM), T)](
        xc, W, b if b is not None else xc, cand_v, cand_i,
        N, D, n,
        xc.stride(0), xc.stride(1), W.stride(0), W.stride(1), cand_v.stride(0),
        HAS_BIAS=b is not None, IEEE=ieee, UPCAST=interpreter_on(), BM=BM, BN=BN, BK=BK, KT=KT,
    )
    values, pos = torch.topk(cand_v, k, dim=-1, sorted=False)
    indices = cand_i.gather(1, pos).long()
    # Exactness check: a tile with more than KT columns may hide entries at or above the
    # row's k-th value only if its KT-th candidate reaches that value.
    theta = values.min(dim=1).values
    kth = cand_v.view(N, T, KT)[:, :, KT - 1]
    widths = torch.clamp(n - torch.arange(T, device=xc.device) * BN, max=BN)
    could_hide = (widths > KT)[None, :] & (kth >= theta[:, None])
    redo = could_hide.any(dim=1) | ~torch.isfinite(theta)
    if bool(redo.any()):
        rows = redo.nonzero().squeeze(1)
        stats["dense_rows"] += int(rows.numel())
        h = xc[rows].float() @ W.float()
        if b is not None:
            h += b.float()
        v2, i2 = torch.topk(h, k, dim=-1, sorted=False)
        values[rows] = v2
        indices[rows] = i2
    return values.to(xc.dtype), indices, None


# ------------------------------------------------------------------ bag sums


@triton.jit
def _segment_sum_kernel(
    src_ptr, rows_ptr, w_ptr, offs_ptr, out_ptr,
    Dd, s_sr, s_sd, s_ob, s_od,
    BE: tl.constexpr, BD: tl.constexpr,
):
    bag = tl.program_id(0)
    rd = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = rd < Dd
    start = tl.load(offs_ptr + bag)
    end = tl.load(offs_ptr + bag + 1)
    acc = tl.zeros((BD,), dtype=tl.float32)
    for e0 in range(start, end, BE):
        re = e0 + tl.arange(0, BE)
        emask = re < end
        r = tl.load(rows_ptr + re, mask=emask, other=0).to(tl.int64)
        w = tl.load(w_ptr + re, mask=emask, other=0.0).to(tl.float32)
        vals = tl.load(src_ptr + r[:, None] * s_sr + rd[None, :] * s_sd,
                       mask=emask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(vals * w[:, None], axis=0)
    tl.store(out_ptr + bag.to(tl.int64) * s_ob + rd * s_od, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def segment_sum(
    src: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    offsets: torch.Tensor,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``out[b] = sum_{e in [offsets[b], offsets[b+1])} weights[e] * src[rows[e]]`` (see
    :func:`saes.kernels.torch_ref.segment_sum`); ``out`` may have any strides."""
    B = offsets.numel()
    d = src.shape[1]
    if out is None:
        out = torch.empty(B, d, dtype=out_dtype or src.dtype, device=src.device)
    if B == 0:
        return out
    bounds = torch.cat([offsets, offsets.new_tensor([rows.numel()])])
    BD = min(128, _pow2(d, lo=16))
    BE = 16
    _segment_sum_kernel[(B, triton.cdiv(d, BD))](
        src, rows, weights, bounds, out,
        d, src.stride(0), src.stride(1), out.stride(0), out.stride(1),
        BE=BE, BD=BD,
    )
    return out


@triton.jit
def _entry_dot_kernel(
    A_ptr, a_ptr, B_ptr, b_ptr, out_ptr,
    E, Dd, s_ar, s_ad, s_br, s_bd,
    BE: tl.constexpr, BD: tl.constexpr,
):
    re = tl.program_id(0) * BE + tl.arange(0, BE)
    emask = re < E
    ra = tl.load(a_ptr + re, mask=emask, other=0).to(tl.int64)
    rb = tl.load(b_ptr + re, mask=emask, other=0).to(tl.int64)
    acc = tl.zeros((BE,), dtype=tl.float32)
    for d0 in range(0, Dd, BD):
        rd = d0 + tl.arange(0, BD)
        m = emask[:, None] & (rd[None, :] < Dd)
        va = tl.load(A_ptr + ra[:, None] * s_ar + rd[None, :] * s_ad, mask=m, other=0.0).to(tl.float32)
        vb = tl.load(B_ptr + rb[:, None] * s_br + rd[None, :] * s_bd, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(va * vb, axis=1)
    tl.store(out_ptr + re, acc.to(out_ptr.dtype.element_ty), mask=emask)


def entry_dot(A: torch.Tensor, a: torch.Tensor, B: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[e] = <A[a[e]], B[b[e]]>`` in ``B``'s dtype (float32 accumulation)."""
    E = a.numel()
    out = torch.empty(E, dtype=B.dtype, device=B.device)
    if E == 0:
        return out
    d = B.shape[1]
    BD = min(128, _pow2(d, lo=16))
    BE = 32
    _entry_dot_kernel[(triton.cdiv(E, BE),)](
        A, a, B, b, out, E, d, A.stride(0), A.stride(1), B.stride(0), B.stride(1), BE=BE, BD=BD,
    )
    return out


# ------------------------------------------------------------------ matching pursuit


@triton.jit
def _gram_step_kernel(
    c_ptr, g_ptr, j_ptr, v_ptr, out_j_ptr, out_best_ptr, out_second_ptr,
    n, s_c, s_g,
    SIGNED: tl.constexpr, UPDATE: tl.constexpr, BN: tl.constexpr,
):
    """One token per program: ``c -= v Gt[j]`` (previous pick), then the first argmax of
    the score (ReLU(c) or |c|) with the best and second-best score, in one pass."""
    row = tl.program_id(0)
    crow = c_ptr + row.to(tl.int64) * s_c
    j = tl.load(j_ptr + row).to(tl.int64)
    v = tl.load(v_ptr + row)
    best = float("-inf")
    second = float("-inf")
    best_idx = 0
    lane = tl.arange(0, BN)
    for n0 in range(0, n, BN):
        rn = n0 + lane
        m = rn < n
        c = tl.load(crow + rn, mask=m, other=0.0)
        if UPDATE:
            g = tl.load(g_ptr + j * s_g + rn, mask=m, other=0.0)
            c = c - v * g
            tl.store(crow + rn, c, mask=m)
        if SIGNED:
            score = tl.abs(c)
        else:
            score = c
        score = tl.where(m, score, float("-inf"))
        bm = tl.max(score, axis=0)
        bi = tl.argmax(score, axis=0)
        bs = tl.max(tl.where(lane == bi, float("-inf"), score), axis=0)
        take = bm > best  # strict: the first maximum wins, as in torch's argmax
        second = tl.where(take, tl.maximum(best, bs), tl.maximum(second, bm))
        best_idx = tl.where(take, n0 + bi, best_idx)
        best = tl.where(take, bm, best)
    tl.store(out_j_ptr + row, best_idx)
    tl.store(out_best_ptr + row, best)
    tl.store(out_second_ptr + row, second)


def gram_steps(
    r0: torch.Tensor, E: torch.Tensor, D: torch.Tensor, Gt: torch.Tensor, steps: int, signed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram pursuit of ``r0 [N, d]`` (float32): ``(values, indices) [N, steps]``.

    One kernel per step reads each token's scores once, applying the previous update and
    finding the next pick with its runner-up; near ties, the coefficient and the residual
    are then settled exactly as on the torch path (:func:`torch_ref.mp_step`).
    """
    N = r0.shape[0]
    n = E.shape[0]
    r = r0.clone()
    c = (r @ E.T).contiguous()
    Gt = Gt.contiguous()
    tau = torch_ref.NEAR_TIE * r.norm(dim=1)
    values = torch.empty(N, steps, dtype=torch.float32, device=r0.device)
    indices = torch.empty(N, steps, dtype=torch.int64, device=r0.device)
    j = torch.zeros(N, dtype=torch.int64, device=r0.device)
    v = torch.zeros(N, dtype=torch.float32, device=r0.device)
    best = torch.empty(N, dtype=torch.float32, device=r0.device)
    second = torch.empty_like(best)
    BN = 64 if interpreter_on() else min(4096, _pow2(n, lo=16))
    for t in range(steps):
        nj = torch.empty_like(j)
        _gram_step_kernel[(N,)](c, Gt, j, v, nj, best, second, n, c.stride(0), Gt.stride(0),
                                SIGNED=bool(signed), UPDATE=t > 0, BN=BN)
        j, v = torch_ref.mp_step(r, c, nj, best, second, E, D, signed, tau)
        values[:, t] = v
        indices[:, t] = j
    return values, indices


# Shared helpers the autograd layer calls on either backend.
pre_acts = torch_ref.pre_acts
