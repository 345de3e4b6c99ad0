"""Every Triton kernel against the torch path, forward and backward, fp32 and bf16.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set
below before the kernels are defined), at tiny sizes; with CUDA the same tests run on the
device. Shapes are awkward on purpose: k not a power of two, widths that are not a
multiple of the block, partial row blocks, empty bags.
"""
from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Must be set before triton is first imported: triton.language binds its interpreter
    # versions at import time.
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip(
    "triton",
    reason="triton is not importable (pip install triton): the Triton kernels cannot be checked",
    exc_type=ImportError,  # also a triton that is installed but cannot load
)

import saes  # noqa: E402
from saes import kernels  # noqa: E402
from saes.kernels import torch_ref  # noqa: E402
from saes.kernels import triton_ops  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def close(got, ref, dtype):
    """fp32: tight. bf16: within 2% of the reference's largest entry (bf16 keeps 8 bits,
    and either path rounds its inputs and outputs to them)."""
    got, ref = got.float().cpu(), ref.float().cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max().clamp_min(1)))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _use(monkeypatch, name):
    monkeypatch.setenv("SAES_KERNELS", name)


def planted(N, D, n, k, dtype, seed=0):
    """``x`` one-hot rows and ``W`` whose row t holds k clearly separated large entries:
    the top-k is unambiguous even after bf16 rounding."""
    g = _gen(seed)
    x = torch.zeros(N, D)
    x[torch.arange(N), torch.arange(N) % D] = 1.0
    W = 0.1 * torch.randn(D, n, generator=g)
    for t in range(D):
        cols = torch.randperm(n, generator=g)[:k]
        W[t, cols] = 4.0 + 0.5 * torch.arange(k, dtype=torch.float32)
    b = 0.01 * torch.randn(n, generator=g)
    return x.to(dtype).to(DEV), W.to(dtype).to(DEV), b.to(dtype).to(DEV)


# ---------------------------------------------------------------- fused encoder kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,n,k,blocks,kt", [
    (20, 24, 200, 7, (16, 64, 16), None),   # 4 tiles, the last one 8 wide
    (37, 40, 130, 5, (16, 32, 16), 1),      # KT too small: the dense fallback runs
    (16, 16, 96, 12, (16, 32, 16), 16),     # KT = k: no fallback possible
])
def test_encode_topk_kernel_matches_torch(dtype, N, D, n, k, blocks, kt):
    if dtype == torch.bfloat16:
        x, W, b = planted(N, D, n, k, dtype)
    else:
        g = _gen(N)
        x = torch.randn(N, D, generator=g).to(DEV)
        W = torch.randn(D, n, generator=g).to(DEV)
        b = torch.randn(n, generator=g).to(DEV)
    before = triton_ops.stats["dense_rows"]
    v, i, _ = triton_ops.encode_topk(x, W, b, k, blocks=blocks, kt=kt)
    recomputed = triton_ops.stats["dense_rows"] - before
    if kt == 1:
        assert recomputed > 0  # the exactness check caught rows a tile under-sampled
    if kt == k:
        assert recomputed == 0
    v0, i0, _ = torch_ref.encode_topk(x, W, b, k)
    assert torch.equal(i.sort(-1).values.cpu(), i0.sort(-1).values.cpu())
    torch.testing.assert_close(v.float().sort(-1).values, v0.float().sort(-1).values, **TOL[dtype])


# ---------------------------------------------------------------- sparse primitives


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_sum_kernel_with_empty_bags_and_strided_output(dtype):
    g = _gen(1)
    src = torch.randn(50, 37, generator=g).to(dtype).to(DEV)  # 37: not a multiple of the d block
    rows = torch.randint(0, 50, (70,), generator=g).to(DEV)
    w = torch.randn(70, generator=g).to(dtype).to(DEV)
    offsets = torch.tensor([0, 0, 3, 40, 40, 69], device=DEV)  # empty bags, a bag of one
    ref = torch_ref.segment_sum(src.cpu(), rows.cpu(), w.cpu(), offsets.cpu())
    got = triton_ops.segment_sum(src, rows, w, offsets)
    torch.testing.assert_close(got.cpu().float(), ref.float(), **TOL[dtype])
    out = torch.empty(37, 6, dtype=dtype, device=DEV)
    triton_ops.segment_sum(src, rows, w, offsets, out=out.t())
    torch.testing.assert_close(out.t().cpu().float(), ref.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_entry_dot_kernel(dtype):
    g = _gen(2)
    A = torch.randn(9, 45, generator=g).to(dtype).to(DEV)
    B = torch.randn(31, 45, generator=g).to(dtype).to(DEV)
    a = torch.randint(0, 9, (77,), generator=g).to(DEV)
    b = torch.randint(0, 31, (77,), generator=g).to(DEV)
    ref = (A.float()[a] * B.float()[b]).sum(-1)
    torch.testing.assert_close(triton_ops.entry_dot(A, a, B, b).float(), ref, **TOL[dtype])


@pytest.mark.parametrize("signed", [False, True])
def test_gram_step_kernel_matches_torch(signed):
    g = _gen(3)
    D = torch.nn.functional.normalize(torch.randn(100, 12, generator=g), dim=1)  # 100: not a multiple of 64
    r0 = torch.randn(9, 12, generator=g)
    r0[0] = -D[:3].sum(0)  # a token whose first scores are all negative-ish
    Gt = D @ D.T
    v0, i0 = torch_ref.gram_steps(r0, D, D, Gt, 6, signed)
    v, i = triton_ops.gram_steps(r0.to(DEV), D.to(DEV), D.to(DEV), Gt.to(DEV), 6, signed)
    assert torch.equal(i.cpu(), i0)
    torch.testing.assert_close(v.cpu(), v0, rtol=1e-5, atol=1e-5)


def test_gram_step_kernel_reports_best_and_runner_up():
    c = torch.tensor([[0.5, 2.0, -3.0, 2.0, 1.0] + [0.0] * 70], device=DEV)  # a tie at 2.0
    Gt = torch.zeros(75, 75, device=DEV)
    j = torch.zeros(1, dtype=torch.int64, device=DEV)
    v = torch.zeros(1, device=DEV)
    out = [torch.empty(1, dtype=torch.int64, device=DEV), torch.empty(1, device=DEV), torch.empty(1, device=DEV)]
    triton_ops._gram_step_kernel[(1,)](c, Gt, j, v, *out, 75, c.stride(0), Gt.stride(0), SIGNED=False, UPDATE=False, BN=64)
    assert [o.item() for o in out] == [1, 2.0, 2.0]
    triton_ops._gram_step_kernel[(1,)](c, Gt, j, v, *out, 75, c.stride(0), Gt.stride(0), SIGNED=True, UPDATE=False, BN=64)
    assert [o.item() for o in out] == [2, 3.0, 2.0]


# ---------------------------------------------------------------- through autograd


def _grads_of_encode_decode(x, W, b, bd, Wd, k, *, batch_topk=False, ends=None):
    enc = kernels.encode(x, W, b, bd, k, batch_topk=batch_topk)
    if ends is None:
        out = kernels.sparse_decode(enc.values, enc.indices, Wd)
    else:
        out = kernels.prefix_decode(enc.values, enc.indices, Wd, ends).sum(1)
    loss = (out.float() - 1.0).square().sum() + enc.values.float().sum()
    wrt = [t for t in (x, W, b, bd, Wd) if t.requires_grad]
    grads = torch.autograd.grad(loss, wrt)
    z = saes.architectures.base.dense_codes(enc.values.float(), enc.indices, W.shape[1])
    return z.detach(), out.detach(), grads


def _leaves(dtype, planted_data, x_grad, N=24, D=24, n=160, k=5):
    if planted_data:
        x, W, b = planted(N, D, n, k, dtype, seed=4)
        bd = torch.zeros(D, dtype=dtype, device=DEV)
    else:
        g = _gen(5)
        x = torch.randn(N, D, generator=g).to(dtype).to(DEV)
        W = (torch.randn(D, n, generator=g) / D**0.5).to(dtype).to(DEV)
        b = (0.1 * torch.randn(n, generator=g)).to(dtype).to(DEV)
        bd = (0.1 * torch.randn(D, generator=g)).to(dtype).to(DEV)
    Wd = (torch.randn(n, D, generator=_gen(6)) / D**0.5).to(dtype).to(DEV)
    leaves = [x.clone().requires_grad_(x_grad)] + [t.clone().requires_grad_() for t in (W, b, bd, Wd)]
    return leaves, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_grad", [False, True])
def test_topk_encode_decode_forward_and_backward(monkeypatch, dtype, x_grad):
    (x, W, b, bd, Wd), k = _leaves(dtype, dtype == torch.bfloat16, x_grad)
    _use(monkeypatch, "torch")
    z0, o0, g0 = _grads_of_encode_decode(x, W, b, bd, Wd, k)
    _use(monkeypatch, "triton")
    z1, o1, g1 = _grads_of_encode_decode(x, W, b, bd, Wd, k)
    close(z1, z0, dtype)
    close(o1, o0, dtype)
    for a, r in zip(g1, g0):
        close(a, r, dtype)


@pytest.mark.parametrize("variant", ["batch_topk", "prefix"])
def test_batch_topk_and_prefix_decode_backward(monkeypatch, variant):
    (x, W, b, bd, Wd), k = _leaves(torch.float32, False, False)
    kw = {"batch_topk": True} if variant == "batch_topk" else {"ends": [16, 48, 100, 160]}
    _use(monkeypatch, "torch")
    z0, o0, g0 = _grads_of_encode_decode(x, W, b, bd, Wd, k, **kw)
    _use(monkeypatch, "triton")
    z1, o1, g1 = _grads_of_encode_decode(x, W, b, bd, Wd, k, **kw)
    torch.testing.assert_close(z1, z0)
    torch.testing.assert_close(o1, o0)
    for a, r in zip(g1, g0):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_matching_pursuit_through_triton(monkeypatch):
    g = _gen(7)
    D = torch.nn.functional.normalize(torch.randn(80, 12, generator=g), dim=1).to(DEV).requires_grad_()
    r0 = torch.randn(10, 12, generator=g).to(DEV)
    _use(monkeypatch, "torch")
    a = kernels.pursuit(r0, D, D, 5, gram=True)
    ga = torch.autograd.grad(a.residual.square().sum(), D)[0]
    _use(monkeypatch, "triton")
    b = kernels.pursuit(r0, D, D, 5, gram=True)
    gb = torch.autograd.grad(b.residual.square().sum(), D)[0]
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(b.values, a.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


def test_a_training_step_is_the_same_on_both_paths(monkeypatch):
    x = torch.randn(32, 16, generator=_gen(8)).to(DEV)
    results = []
    for name in ("torch", "triton"):
        _use(monkeypatch, name)
        sae = saes.TopKSAE(16, 96, k=3).to(DEV)
        cfg = saes.TrainConfig(batch_size=16, total_tokens=32, lr=1e-3, init_rows=32, autocast="none")
        saes.train(sae, x, cfg, progress=False)
        results.append(sae.W_enc.detach().cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- GPU only: the sizes of real models
#
# d_in 768 (GPT-2 small) and 2304 (Gemma-2-2B), d_sae 16,384 and 65,536, k 32 and 64, 4,096
# tokens, float32 and bfloat16, forward and backward, Triton against the torch path on the
# same GPU. Exact where the maths is exact: which latents (and which matching-pursuit
# atoms) are chosen, on data whose top k is unambiguous. Within stated tolerances where
# only the order of a sum or bf16 rounding differs:
#   float32:  |got - ref| <= 1e-4 |ref| + 1e-5 max|ref|
#   bfloat16: |got - ref| <= 2e-2 |ref| + 2e-2 max|ref|  (8-bit mantissas, rounded in and out)
# bench/gpu_check.sh runs these (pytest -m gpu).

REAL_SIZES = [(d, n, k) for d in (768, 2304) for n in (16384, 65536) for k in (32, 64)]
REAL_IDS = [f"d{d}-n{n}-k{k}" for d, n, k in REAL_SIZES]
REAL_ROWS = 4096


def on_gpu(test):
    """Marked ``gpu`` (deselected by default, ``pytest -m gpu`` runs it) and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA device")(test))


def close_at_scale(got, ref, dtype):
    """The stated tolerances above (the bf16 one is ``close``'s)."""
    got, ref = got.float(), ref.float()
    scale = float(ref.abs().max())
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * scale)
    else:
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * scale)


def _cuda_gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


def planted_at_scale(N, D, n, k, dtype, seed=0):
    """``planted`` built on the GPU at real sizes, with noise on every input: row t is
    input direction ``t mod D`` plus 1% noise, and that direction's k planted latents
    (pre-activations 4, 4.5, ...) stand far above the rest (about 0.1 * N(0, 1)), so the
    top k is unambiguous in bf16 too."""
    g = _cuda_gen(seed)
    x = 0.01 * torch.randn(N, D, generator=g, device="cuda")
    x[torch.arange(N, device="cuda"), torch.arange(N, device="cuda") % D] += 1.0
    W = 0.1 * torch.randn(D, n, generator=g, device="cuda")
    cols = torch.rand(D, n, generator=g, device="cuda").topk(k, dim=1).indices
    W.scatter_(1, cols, (4.0 + 0.5 * torch.arange(k, device="cuda", dtype=torch.float32)).expand(D, k).contiguous())
    b = 0.01 * torch.randn(n, generator=g, device="cuda")
    bd = 0.01 * torch.randn(D, generator=g, device="cuda")
    Wd = torch.randn(n, D, generator=g, device="cuda") / D**0.5
    return [t.to(dtype) for t in (x, W, b, bd, Wd)]


def _encode_decode(leaves, k, *, batch_topk=False, ends=None):
    """Codes, reconstruction and the gradients of every leaf, through ``kernels``."""
    x, W, b, bd, Wd = leaves
    enc = kernels.encode(x, W, b, bd, k, batch_topk=batch_topk)
    if ends is None:
        out = kernels.sparse_decode(enc.values, enc.indices, Wd)
    else:
        out = kernels.prefix_decode(enc.values, enc.indices, Wd, ends).sum(1)
    loss = (out.float() - 1.0).square().sum() + enc.values.float().sum()
    grads = torch.autograd.grad(loss, leaves)
    order = enc.indices.argsort(dim=1)
    return enc.indices.gather(1, order), enc.values.detach().gather(1, order), out.detach(), grads


def _both_paths(monkeypatch, leaves, k, **kw):
    res = {}
    for name in ("torch", "triton"):
        _use(monkeypatch, name)
        res[name] = _encode_decode([t.detach().clone().requires_grad_() for t in leaves], k, **kw)
    return res["torch"], res["triton"]


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("d,n,k", REAL_SIZES, ids=REAL_IDS)
def test_topk_encode_decode_forward_and_backward_at_real_sizes(monkeypatch, d, n, k, dtype):
    leaves = planted_at_scale(REAL_ROWS, d, n, k, dtype)
    (i0, v0, o0, g0), (i1, v1, o1, g1) = _both_paths(monkeypatch, leaves, k)
    assert torch.equal(i1, i0), "the Triton encoder chose other latents than the torch path"
    close_at_scale(v1, v0, dtype)
    close_at_scale(o1, o0, dtype)
    for name, a, r in zip(("x", "W_enc", "b_enc", "b_dec", "W_dec"), g1, g0):
        assert a is not None and r is not None, name
        close_at_scale(a, r, dtype)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["batch_topk", "matryoshka"])
@pytest.mark.parametrize("d,n,k", [(768, 16384, 32), (2304, 65536, 64)], ids=["d768-n16384-k32", "d2304-n65536-k64"])
def test_batch_topk_and_prefix_decode_at_real_sizes(monkeypatch, d, n, k, variant, dtype):
    from saes.architectures.matryoshka import doubling_groups

    leaves = planted_at_scale(REAL_ROWS, d, n, k, dtype, seed=1)
    kw = {"batch_topk": True}
    if variant == "matryoshka":
        sizes = doubling_groups(n)
        kw["ends"] = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    (i0, v0, o0, g0), (i1, v1, o1, g1) = _both_paths(monkeypatch, leaves, k, **kw)
    assert torch.equal(i1, i0)
    close_at_scale(v1, v0, dtype)
    close_at_scale(o1, o0, dtype)
    for a, r in zip(g1, g0):
        close_at_scale(a, r, dtype)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("d,n,k", REAL_SIZES, ids=REAL_IDS)
def test_fused_encoder_on_random_data_at_real_sizes(d, n, k, dtype, record_property):
    """Random data (near ties everywhere): the values are the top-k values, and every chosen
    latent is a true top-k latent up to the tolerance (which of two near-equal latents wins
    depends on the order of the sums)."""
    g = _cuda_gen(9)
    x = torch.randn(REAL_ROWS, d, generator=g, device="cuda").to(dtype)
    W = (torch.randn(d, n, generator=g, device="cuda") / d**0.5).to(dtype)
    b = (0.1 * torch.randn(n, generator=g, device="cuda")).to(dtype)
    before = triton_ops.stats["dense_rows"]
    v, i, _ = triton_ops.encode_topk(x, W, b, k)
    record_property("dense_fallback_rows", (triton_ops.stats["dense_rows"] - before) / REAL_ROWS)
    h = x.float() @ W.float() + b.float()  # the exact pre-activations (float32 of the same inputs)
    ref = torch.topk(h, k, dim=1).values
    close_at_scale(v.float().sort(dim=1).values, ref.sort(dim=1).values, dtype)
    tol = (1e-4 if dtype == torch.float32 else 2e-2) * float(h.abs().max())
    assert bool((h.gather(1, i) >= ref[:, -1:] - tol).all()), "a chosen latent is not among the top k"
    assert bool((i.sort(dim=1).values.diff(dim=1) > 0).all()), "a latent was chosen twice in one row"


@on_gpu
@pytest.mark.parametrize("n,k", [(16384, 32), (16384, 64), (65536, 32), (65536, 64)])
def test_fused_encoder_rarely_recomputes_rows_at_real_sizes(n, k, record_property):
    """The exactness check sends a row to the dense fallback when one tile holds as many
    of its top-k entries as the tile keeps candidates; on random data that should be rare
    (at most 1% of rows), or the fused encoder does the dense GEMM a second time."""
    g = _cuda_gen(10)
    x = torch.randn(REAL_ROWS, 768, generator=g, device="cuda")
    W = torch.randn(768, n, generator=g, device="cuda") / 768**0.5
    before = triton_ops.stats["dense_rows"]
    triton_ops.encode_topk(x, W, None, k)
    share = (triton_ops.stats["dense_rows"] - before) / REAL_ROWS
    record_property("dense_fallback_rows", share)
    assert share <= 0.01, (f"{share:.1%} of rows were recomputed densely at n={n}, k={k} "
                           f"({triton_ops.tiles_per_row(n, 128, k)} candidates kept per 128-wide tile)")


@on_gpu
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("d,n,k", [(768, 16384, 32), (2304, 65536, 64)], ids=["d768-n16384-k32", "d2304-n65536-k64"])
def test_matching_pursuit_at_real_sizes(monkeypatch, d, n, k, autocast):
    """Gram pursuit (the Triton step kernel against torch's) on 1,024 tokens of planted
    sparse combinations: the same atoms, coefficients and dictionary gradients, also under
    the trainer's bf16 autocast (the Gram matrix and the scores stay float32)."""
    N = 1024
    g = _cuda_gen(11)
    D = torch.nn.functional.normalize(torch.randn(n, d, generator=g, device="cuda"), dim=1)
    idx = torch.randint(0, n, (N, 16), generator=g, device="cuda")
    r0 = (3 * torch.rand(N, 16, 1, generator=g, device="cuda") * D[idx]).sum(1)
    r0 += 0.3 * torch.randn(N, d, generator=g, device="cuda")
    res = {}
    for name in ("torch", "triton"):
        _use(monkeypatch, name)
        Dl = D.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = kernels.pursuit(r0, Dl, Dl, k, gram=True)
            loss = out.residual.float().square().sum()
        res[name] = (out.indices, out.values.detach().float(), torch.autograd.grad(loss, Dl)[0])
    (i0, v0, g0), (i1, v1, g1) = res["torch"], res["triton"]
    assert torch.equal(i1, i0), "the Triton pursuit picked other atoms than the torch path"
    close_at_scale(v1, v0, torch.float32)
    close_at_scale(g1, g0, torch.float32)
