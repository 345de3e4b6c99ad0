"""Torch backend of the SAE kernels: runs on any device, tuned for the CPU.

Every primitive here has a Triton twin in :mod:`saes.kernels.triton_ops` with the same
signature; :mod:`saes.kernels.autograd` builds the differentiable operations from either.

The sparse work is expressed on *entries*: flat lists ``(bag, row, weight)`` where ``row``
picks a row of a matrix, ``bag`` the output row it is summed into. Decoding a code
``values/indices [N, k]`` is one list (bag = token, row = latent); the weight gradient of
an encoder or decoder is the same list sorted by latent (bag = latent, row = token). Two
primitives then cover every pass:

* :func:`segment_sum`: ``out[b] = sum_{e in bag b} w[e] * src[row[e]]`` (bags contiguous),
  which is ``embedding_bag``: it reads only the listed rows, never an ``[N, k, d]`` block.
* :func:`entry_dot`: ``out[e] = <A[a[e]], B[b[e]]>``, the gradient of an entry's weight,
  which is the per-sample-weight backward of ``embedding_bag``.

Selection (:func:`topk`, :func:`batch_topk_select`) works on dense pre-activations, which
the CPU computes anyway with one GEMM; the Triton path fuses that GEMM with the selection.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from saes.kernels import global_batch

# Use the block-max top-k above this many latents (below, torch.topk is as fast).
BLOCK_TOPK_MIN_WIDTH = 2048


# ---------------------------------------------------------------- buffers


class BufferPool:
    """Reusable CPU buffers for the large per-step tensors: pre-activations
    ``[N, d_sae]`` and the dense weight gradients (tens of MiB each).

    A fresh tensor that large is page-faulted in on every step (the allocator hands such
    sizes straight back to the OS); a reused one is not. A buffer is handed out again only
    when no tensor but the pool's own refers to its storage (the caller dropped last
    step's pre-activations, the trainer dropped last step's ``.grad``), so nothing still
    held anywhere, views included, is ever overwritten. Other devices allocate normally
    (their caching allocators already reuse memory).
    """

    POOL = 4

    def __init__(self) -> None:
        self._pools: dict[tuple, list[torch.Tensor]] = {}

    @staticmethod
    def _free(buf: torch.Tensor) -> bool:
        try:
            # The pool's tensor and the temporary storage object: nobody else.
            return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2
        except (AttributeError, RuntimeError):  # private API gone: never reuse
            return False

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised ``shape`` tensor, reusing a free pooled buffer on the CPU."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        pool = self._pools.setdefault((tuple(shape), dtype), [])
        for buf in pool:
            if self._free(buf):
                return buf.view(shape)
        buf = torch.empty(shape, dtype=dtype, device=device)
        if len(pool) < self.POOL:
            pool.append(buf)
        return buf.view(shape)

    def clear(self) -> None:
        """Drop every pooled buffer (memory held between steps)."""
        self._pools.clear()


BUFFERS = BufferPool()


# ---------------------------------------------------------------- dense pre-activations


def pre_acts(xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, *, reuse: bool = True) -> torch.Tensor:
    """``xc @ W + b`` as ``[N, n]``, written into a reused buffer when ``reuse``."""
    n = W.shape[1]
    if not reuse:
        return torch.addmm(b, xc, W) if b is not None else xc @ W
    out = BUFFERS.get((xc.shape[0], n), torch.result_type(xc, W), xc.device)
    if b is None:
        return torch.mm(xc, W, out=out)
    return torch.addmm(b, xc, W, out=out)


# ---------------------------------------------------------------- selection


def _block_size(n: int, k: int) -> int:
    """Interleaved block count for :func:`topk`, or 0 to use ``torch.topk`` directly."""
    if n < BLOCK_TOPK_MIN_WIDTH:
        return 0
    for B in (16, 8, 4):
        if n % B == 0 and n // B >= 4 * k:
            return B
    return 0


def topk_select(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k along the last dim of ``h [N, n]``: ``(values, indices) [N, k]``, no grad.

    Wide rows use a block-max prefilter: split each row into ``n/B`` interleaved blocks
    of ``B`` (block ``j`` holds columns ``j, j + n/B, ...``), take the top k blocks by
    their maximum, and select among those ``k*B`` candidates. Every top-k entry lies in
    one of those blocks (a block outside them has k blocks with larger maxima, hence k
    larger entries), so the result is exact; the full row is read once, by a vectorised
    max, instead of being partially sorted.
    """
    N, n = h.shape
    B = _block_size(n, k)
    with torch.no_grad():
        if B == 0:
            return torch.topk(h, k, dim=-1, sorted=False)
        nb = n // B
        hv = h.view(N, B, nb)
        _, blocks = torch.topk(hv.amax(1), k, dim=-1, sorted=False)  # [N, k]
        cand = hv.gather(2, blocks[:, None, :].expand(N, B, k)).view(N, B * k)
        values, pos = torch.topk(cand, k, dim=-1, sorted=False)  # pos = member * k + block slot
        indices = torch.add(blocks.gather(1, pos.remainder(k)), pos.div(k, rounding_mode="floor"), alpha=nb)
    return values, indices


def topk(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_select` with values differentiable through a gather when ``h`` needs it."""
    values, indices = topk_select(h.detach(), k)
    if h.requires_grad and torch.is_grad_enabled():
        values = h.gather(1, indices)
    return values, indices


def batch_topk_select(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopK selection: the ``k * N`` largest positive entries of ``h [N, n]``.

    Returns padded ``indices [N, k']`` and ``keep [N, k']`` (False on padding), with k'
    the largest per-row count. Exact, without a sort of all ``N * n`` entries: rows first
    give their top ``c`` candidates; a row whose ``c``-th candidate still reaches the
    batch threshold may hide more, so only such rows are widened and the round repeats.
    """
    spread = global_batch.selector()
    if spread is not None:  # a data-parallel step: the batch spans processes
        return spread(h, k)
    N, n = h.shape
    total = min(k * N, N * n)
    h = h.detach()
    c = min(n, 2 * k)
    vals, idx = topk(h, c)
    while True:
        flat = vals.reshape(-1)
        kept_vals, kept_pos = torch.topk(flat, min(total, flat.numel()), sorted=False)
        theta = kept_vals.min()
        # Only positive entries are kept, so a row can hide a kept entry only if its
        # smallest candidate is positive and reaches the threshold.
        row_min = vals.min(dim=1).values
        overflow = (row_min >= theta) & (row_min > 0)
        if vals.shape[1] >= n or not bool(overflow.any()):
            break
        # Widen every row to the new width (rows below the threshold gain nothing but
        # keep the candidate matrix rectangular).
        c = min(n, vals.shape[1] * 4)
        vals, idx = topk(h, c)
    keep_pos = kept_pos[kept_vals > 0]
    keep_rows = torch.div(keep_pos, vals.shape[1], rounding_mode="floor")
    counts = torch.bincount(keep_rows, minlength=N)
    kmax = max(1, int(counts.max())) if keep_rows.numel() else 1
    # Rank of each kept entry inside its row: sort by row, subtract the row start.
    order = torch.argsort(keep_rows, stable=True)
    keep_rows, keep_pos = keep_rows[order], keep_pos[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep_rows.numel(), device=h.device) - starts[keep_rows]
    out_idx = idx[:, :1].expand(N, kmax).clone()  # padding points at a real latent
    keep = torch.zeros(N, kmax, dtype=torch.bool, device=h.device)
    out_idx[keep_rows, rank] = idx.reshape(-1)[keep_pos]
    keep[keep_rows, rank] = True
    return out_idx, keep


# ---------------------------------------------------------------- entries


@functools.lru_cache(maxsize=8)
def token_bags(N: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bag of each entry [N*k], bag offsets [N])`` for a rectangular ``[N, k]`` code.

    Cached: every step of a run asks for the same ones (callers never modify them).
    """
    bag = torch.arange(N, device=device).repeat_interleave(k)
    offsets = torch.arange(0, N * k, k, device=device)
    return bag, offsets


def by_latent(cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort entries by latent: ``(order [E], offsets [n])`` so latent j owns
    ``order[offsets[j]:offsets[j+1]]``."""
    order = torch.argsort(cols)
    counts = torch.bincount(cols, minlength=n)
    offsets = torch.cumsum(counts, 0) - counts
    return order, offsets


# ---------------------------------------------------------------- primitives


def _bag_sum(src: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``embedding_bag`` (sum, per-sample weights), written into ``out`` when the
    out-variant exists (it does on the CPU); otherwise a fresh tensor copied into it."""
    if out is not None and out.is_contiguous() and out.dtype == src.dtype and src.device.type == "cpu":
        try:
            empty = rows.new_empty(0)
            torch.ops.aten._embedding_bag_forward_only.out(
                src, rows, offsets, False, 0, False, w, False, -1, out0=out, out1=empty, out2=rows.new_empty(0), out3=rows.new_empty(0)
            )
            return out
        except (AttributeError, RuntimeError, TypeError):
            pass
    res = F.embedding_bag(rows, src, offsets, per_sample_weights=w, mode="sum")
    if out is None:
        return res
    return out.copy_(res)


def segment_sum(
    src: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    offsets: torch.Tensor,
    out: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``out[b] = sum_{e in [offsets[b], offsets[b+1])} weights[e] * src[rows[e]]``.

    ``src [R, d]``, ``rows/weights [E]``, ``offsets [B]`` (bag starts, the last bag ends at
    E). Returns ``[B, d]`` in ``out_dtype`` (default ``src``'s dtype); ``out`` may be any
    strided ``[B, d]`` tensor (a transposed weight gradient, say) to receive it.
    """
    if not src.is_contiguous():
        src = src.contiguous()
    w = weights.to(src.dtype)
    B, d = offsets.numel(), src.shape[1]
    with torch.autocast(device_type=src.device.type, enabled=False):
        if out is None:
            if out_dtype is None or out_dtype == src.dtype:
                return _bag_sum(src, rows, w, offsets, BUFFERS.get((B, d), src.dtype, src.device))
            return _bag_sum(src, rows, w, offsets, None).to(out_dtype)
        if out.is_contiguous():
            return _bag_sum(src, rows, w, offsets, out)
        if out.dtype != src.dtype:
            return out.copy_(_bag_sum(src, rows, w, offsets, None))
        # A strided destination (the transposed encoder gradient): bags in chunks whose
        # sums stay in cache, each copied straight to its place, so no full-size
        # intermediate is written and read back.
        chunk = max(32, (1 << 18) // max(d, 1))
        bounds = torch.cat([offsets, offsets.new_tensor([rows.numel()])])[::chunk].tolist()
        if bounds[-1] != rows.numel():
            bounds.append(rows.numel())
        for i, b0 in enumerate(range(0, B, chunk)):
            b1 = min(B, b0 + chunk)
            e0, e1 = bounds[i], bounds[i + 1]
            part = F.embedding_bag(rows[e0:e1], src, offsets[b0:b1] - e0, per_sample_weights=w[e0:e1], mode="sum")
            out[b0:b1].copy_(part)
        return out


def entry_dot(A: torch.Tensor, a: torch.Tensor, B: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[e] = <A[a[e]], B[b[e]]>`` for ``A [Ra, d]``, ``B [Rb, d]``, ``a/b [E]``.

    The per-sample-weight backward of ``embedding_bag`` computes exactly this row by
    row, without gathering an ``[E, d]`` block.
    """
    if A.dtype != B.dtype:
        A = A.to(B.dtype)
    A = A.contiguous()
    B = B.contiguous()
    if A.device.type == "cpu":
        # offsets are not read by the kernel for mode "sum"; a valid tensor is enough.
        offsets = torch.zeros(1, dtype=a.dtype, device=a.device)
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(A, B, b, offsets, a, 0, -1)
    return _entry_dot_chunked(A, a, B, b)


def _entry_dot_chunked(A: torch.Tensor, a: torch.Tensor, B: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """:func:`entry_dot` by bounded gathers (devices without the embedding_bag kernel)."""
    out = torch.empty(a.shape[0], dtype=B.dtype, device=B.device)
    for s in range(0, a.shape[0], chunk):
        e = slice(s, s + chunk)
        out[e] = (A[a[e]].float() * B[b[e]].float()).sum(-1).to(B.dtype)
    return out


def scatter_sum(cols: torch.Tensor, weights: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``out[j] = sum of weights[e] over entries with cols[e] == j`` (bias gradients)."""
    out = torch.zeros(n, dtype=torch.float32, device=weights.device)
    out.index_add_(0, cols, weights.float())
    return out.to(dtype)


def encode_topk(
    xc: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pre-activations then per-row top-k: ``(values [N, k], indices [N, k], h)``.

    The torch path materialises ``h [N, n]`` (in a reused buffer) and returns it, so a
    caller that needs the dense pre-activations (AuxK) gets them for free.
    """
    h = pre_acts(xc, W, b)
    values, indices = topk_select(h, k)
    return values, indices, h


# ---------------------------------------------------------------- matching pursuit


# Rows are argmax-ed through maxima of contiguous blocks of this many entries: a
# vectorised max over the row, then a search inside one block, several times faster than
# torch.max(dim) on the CPU and with the same first-index tie rule.
ARGMAX_BLOCK = 64
# A Gram-updated score drifts from the exact one by about 2e-7 * ||r_0|| in float32 (measured
# over 32 steps; it hardly grows with the step count). A pick whose runner-up is closer
# than this many ||r_0|| is re-decided on exact scores, so the Gram path picks what the
# plain algorithm picks.
NEAR_TIE = 4e-6


def row_argmax(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(j, best)`` per row of ``score [R, n]``: the first index of the maximum (torch's
    tie rule) and the maximum, through the maxima of contiguous blocks."""
    R, n = score.shape
    B = ARGMAX_BLOCK
    if n % B or n < 4 * B:
        best, j = score.max(dim=1)
        return j, best
    sv = score.view(R, n // B, B)
    best, b = sv.amax(2).max(dim=1)  # the first block holding the maximum holds its first index
    _, p = sv.gather(1, b.view(R, 1, 1).expand(R, 1, B)).view(R, B).max(dim=1)
    return b * B + p, best


def row_top2(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(j, best, second)`` per row: an index of the maximum, the maximum and the
    largest value at any other index. With an exact tie ``j`` may be any of the tied
    indices; callers treat ``best - second`` below their margin as a tie to settle."""
    R, n = score.shape
    B = ARGMAX_BLOCK
    if n % B or n < 4 * B:
        top, idx = score.topk(2, dim=1)
        return idx[:, 0], top[:, 0], top[:, 1]
    sv = score.view(R, n // B, B)
    bv, bi = sv.amax(2).topk(2, dim=1)
    wv, wi = sv.gather(1, bi[:, :1, None].expand(R, 1, B)).view(R, B).topk(2, dim=1)
    return bi[:, 0] * B + wi[:, 0], bv[:, 0], torch.maximum(bv[:, 1], wv[:, 1])


def mp_pick(c: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(j, v_j)`` per row: argmax of ReLU(c) (or |c|) and its coefficient.

    With every score <= 0 the ReLU argmax is index 0 with value 0, as ``argmax`` of an
    all-zero row gives; reproduced here so every path agrees with the plain algorithm.
    """
    if signed:
        j, _ = row_argmax(c.abs())
        return j, c.gather(1, j[:, None]).squeeze(1)
    j, m = row_argmax(c)
    pos = m > 0
    return torch.where(pos, j, torch.zeros_like(j)), m.clamp_min(0)


def mp_step(
    r: torch.Tensor, c: torch.Tensor, j: torch.Tensor, best: torch.Tensor, second: torch.Tensor,
    E: torch.Tensor, D: torch.Tensor, signed: bool, tau: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Finish one Gram pursuit step from a candidate pick: ``(j, v)``; ``r`` is updated.

    Near ties (runner-up within ``tau``, or a ReLU maximum within ``tau`` of 0) are
    re-decided on exact scores. The coefficient is then ``<r, E_j>`` and
    ``r <- r - v D_j``, computed as the plain algorithm computes them.
    """
    if signed:
        near = best - second < tau
    else:
        # Ambiguous: the runner-up (or 0, the ReLU floor) within tau of the best. A best
        # below -tau is surely negative: every score is, and the pick is index 0.
        near = (best - second.clamp_min(0) < tau) & (best > -tau)
        j = j.masked_fill(best <= 0, 0)
    if bool(near.any()):
        j = _resolve_near_ties(r, c, j, best, near, E, signed, tau)
    e = E.index_select(0, j)
    p = (r * e).sum(-1)
    v = p if signed else p.clamp_min(0)
    dj = e if D is E else D.index_select(0, j)
    r.sub_(v[:, None] * dj)
    return j, v


def _resolve_near_ties(
    r: torch.Tensor, c: torch.Tensor, j: torch.Tensor, best: torch.Tensor, near: torch.Tensor,
    E: torch.Tensor, signed: bool, tau: torch.Tensor,
) -> torch.Tensor:
    """Re-decide the flagged rows on exact scores ``<r, E_i>`` of every atom that could
    be the maximum (Gram score within ``2 tau`` of the best); rare, so a loop."""
    j = j.clone()
    for row in near.nonzero().squeeze(1).tolist():
        score = c[row].abs() if signed else c[row]
        atoms = (score >= best[row] - 2 * tau[row]).nonzero().squeeze(1)  # ascending
        p = (E.index_select(0, atoms) * r[row]).sum(-1)
        s = p.abs() if signed else p.clamp_min(0)
        pick = int(s.argmax())  # first maximum, as the plain argmax
        j[row] = atoms[pick] if (signed or s[pick] > 0) else 0
    return j


def gram_steps(
    r0: torch.Tensor, E: torch.Tensor, D: torch.Tensor, Gt: torch.Tensor, steps: int, signed: bool, chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram pursuit of ``r0 [N, d]`` (float32): ``(values, indices) [N, steps]``.

    Scores ``c = r E^T`` come from one product per chunk of rows and are then updated as
    ``c <- c - v Gt[j]``; chunks are small enough for their scores to stay in cache
    across all steps.
    """
    N, _ = r0.shape
    n = E.shape[0]
    values = torch.empty(N, steps, dtype=torch.float32, device=r0.device)
    indices = torch.empty(N, steps, dtype=torch.int64, device=r0.device)
    if chunk <= 0:
        # ~8 MiB of float32 scores per chunk on the CPU: they stay in the last-level cache
        # over all steps, in few enough chunks that per-op overhead stays small.
        chunk = N if r0.is_cuda else max(8, (1 << 21) // max(n, 1))
    for s in range(0, N, chunk):
        r = r0[s : s + chunk].clone()
        c = r @ E.T
        tau = NEAR_TIE * r.norm(dim=1)
        buf = torch.empty_like(c)
        for t in range(steps):
            j, best, second = row_top2(c.abs() if signed else c)
            j, v = mp_step(r, c, j, best, second, E, D, signed, tau)
            values[s : s + chunk, t] = v
            indices[s : s + chunk, t] = j
            if t + 1 < steps:
                torch.index_select(Gt, 0, j, out=buf)
                c.addcmul_(buf, v[:, None], value=-1.0)
    return values, indices
