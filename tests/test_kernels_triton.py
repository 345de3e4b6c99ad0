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


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_realistic_shape_on_the_gpu(monkeypatch):
    g = _gen(9)
    N, D, n, k = 4096, 768, 16384, 32
    x = torch.randn(N, D, generator=g).cuda()
    W = (torch.randn(D, n, generator=g) / D**0.5).cuda()
    b = torch.zeros(n, device="cuda")
    v, i, _ = triton_ops.encode_topk(x, W, b, k)
    v0, i0 = torch.topk(x @ W + b, k)
    # TF32 products may reorder near-ties; the selected values must still be the top k.
    torch.testing.assert_close(v.sort(-1).values, v0.sort(-1).values, rtol=2e-3, atol=2e-3)
