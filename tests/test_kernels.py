"""The torch kernel path against plain dense references: values, gradients, sparsity."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import saes
from saes import kernels
from saes.errors import ConfigError
from saes.kernels import matching_pursuit as kmp
from saes.kernels import torch_ref


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("SAES_KERNELS", "torch")


def _params(d, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(d, n, generator=g) / d**0.5).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(n, generator=g)).to(dtype).requires_grad_()
    bd = (0.1 * torch.randn(d, generator=g)).to(dtype).requires_grad_()
    return W, b, bd


def _sorted(values, indices):
    order = indices.argsort(-1)
    return values.gather(1, order), indices.gather(1, order)


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("n", [4096, 4100, 300])  # block path, width not divisible, narrow
def test_topk_is_exact(n):
    h = torch.randn(64, n, generator=torch.Generator().manual_seed(n))
    v, i = kernels.topk(h, 13)
    v0, i0 = torch.topk(h, 13)
    assert torch.equal(i.sort(-1).values, i0.sort(-1).values)
    torch.testing.assert_close(v.sort(-1).values, v0.sort(-1).values)


def _batch_topk_dense(h, k):
    flat = h.reshape(-1)
    kept_vals, kept = torch.topk(flat, k * h.shape[0])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[kept[kept_vals > 0]] = True
    return mask.view_as(h)


@pytest.mark.parametrize("outlier", [False, True])
def test_batch_topk_selection_matches_the_dense_definition(outlier):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(48, 5000, generator=g)
    if outlier:  # one token holds far more than its share: forces the widening rounds
        h[7] += 6.0
    idx, keep = kernels.batch_topk(h, 9)
    got = torch.zeros_like(h, dtype=torch.bool)
    got[torch.arange(48)[:, None].expand_as(idx)[keep], idx[keep]] = True
    assert torch.equal(got, _batch_topk_dense(h, 9))
    assert keep.sum() == 9 * 48
    if outlier:
        assert keep[7].sum() > 4 * 9


def test_batch_topk_with_few_positive_entries_keeps_only_positive_ones():
    h = -torch.rand(16, 200)
    h[0, :3] = 1.0
    idx, keep = kernels.batch_topk(h, 4)
    assert keep.sum() == 3 and set(idx[0][keep[0]].tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- encoder


def _dense_encode(x, W, b, bd, k, batch_topk=False):
    h = (x - bd) @ W + b
    if batch_topk:
        mask = _batch_topk_dense(h.detach(), k)
        return h * mask
    v, i = torch.topk(h, k)
    return torch.zeros_like(h).scatter(1, i, v.clamp_min(0))


@pytest.mark.parametrize("batch_topk", [False, True])
@pytest.mark.parametrize("x_grad", [False, True])
def test_encoder_values_and_gradients_match_dense(batch_topk, x_grad):
    d, n, k = 24, 4096, 7
    W, b, bd = _params(d, n)
    x = torch.randn(40, d, generator=torch.Generator().manual_seed(3)).requires_grad_(x_grad)
    enc = kernels.encode(x, W, b, bd, k, batch_topk=batch_topk)
    z = saes.architectures.base.dense_codes(enc.values, enc.indices, n)
    ref = _dense_encode(x, W, b, bd, k, batch_topk)
    torch.testing.assert_close(z, ref)
    gz = torch.randn(40, n, generator=torch.Generator().manual_seed(4))
    wrt = (W, b, bd, x) if x_grad else (W, b, bd)
    ga = torch.autograd.grad((z * gz).sum(), wrt)
    gb = torch.autograd.grad((ref * gz).sum(), wrt)
    for a, r in zip(ga, gb):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_pre_acts_give_the_dense_pre_activations_and_their_gradient():
    d, n = 16, 3000
    W, b, bd = _params(d, n, seed=5)
    x = torch.randn(32, d)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[::7] = True

    def auxk(h):
        v, i = kernels.topk(h.masked_fill(~dead, -float("inf")), 5)
        return v.clamp_min(0).square().sum()

    h = kernels.encode(x, W, b, bd, 4).pre_acts()
    ref = (x - bd) @ W + b
    torch.testing.assert_close(h, ref)
    for a, r in zip(torch.autograd.grad(auxk(h), (W, b, bd)), torch.autograd.grad(auxk(ref), (W, b, bd))):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_codes_among_a_subset_of_latents():
    d, n = 16, 500
    W, b, bd = _params(d, n, seed=6)
    x = torch.randn(32, d)
    cols = torch.arange(3, n, 5)
    enc = kernels.encode(x, W, b, bd, 6, columns=cols)
    assert bool(torch.isin(enc.indices, cols).all())
    h = ((x - bd) @ W + b)[:, cols]
    v, i = torch.topk(h, 6)
    ref = torch.zeros(32, n).scatter(1, cols[i], v.clamp_min(0))
    z = saes.architectures.base.dense_codes(enc.values, enc.indices, n)
    torch.testing.assert_close(z, ref)
    ga = torch.autograd.grad(z.square().sum(), (W, b, bd))
    gb = torch.autograd.grad(ref.square().sum(), (W, b, bd))
    for a, r in zip(ga, gb):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_reused_buffers_never_overwrite_a_result_still_held():
    W, b, bd = _params(8, 64)
    with torch.no_grad():
        first = kernels.encode(torch.randn(4, 8), W, b, bd, 2).pre_acts()
        keep = first.clone()
        kernels.encode(torch.randn(4, 8), W, b, bd, 2)
        assert torch.equal(first, keep)
        row = kernels.encode(torch.randn(4, 8), W, b, bd, 2).pre_acts()[1]  # only a view survives
        keep = row.clone()
        kernels.encode(torch.randn(4, 8), W, b, bd, 2)
        assert torch.equal(row, keep)


# ---------------------------------------------------------------- decoders


def test_sparse_decode_with_repeats_matches_dense():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(50, 12, generator=g, requires_grad=True)
    values = torch.randn(30, 6, generator=g, requires_grad=True)
    indices = torch.randint(0, 50, (30, 6), generator=g)
    indices[:, 1] = indices[:, 0]  # an atom picked twice
    out = kernels.sparse_decode(values, indices, W)
    dense = torch.zeros(30, 50).scatter_add(1, indices, values) @ W
    torch.testing.assert_close(out, dense)
    go = torch.randn(30, 12, generator=g)
    for a, r in zip(torch.autograd.grad((out * go).sum(), (W, values)), torch.autograd.grad((dense * go).sum(), (W, values))):
        torch.testing.assert_close(a, r)


def test_prefix_decode_matches_masked_dense_prefixes():
    g = torch.Generator().manual_seed(2)
    n, d, ends = 64, 10, [8, 24, 40, 64]
    W = torch.randn(n, d, generator=g, requires_grad=True)
    values = torch.rand(20, 5, generator=g, requires_grad=True)
    indices = torch.randint(0, n, (20, 5), generator=g)
    P = kernels.prefix_decode(values, indices, W, ends)
    z = torch.zeros(20, n).scatter_add(1, indices, values)
    ref = torch.stack([z[:, :e] @ W[:e] for e in ends], 1)
    torch.testing.assert_close(P, ref)
    go = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((P * go).sum(), (W, values)), torch.autograd.grad((ref * go).sum(), (W, values))):
        torch.testing.assert_close(a, r)


# ---------------------------------------------------------------- sparsity of the backward


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_backward_builds_no_dense_code_gradient_and_no_nkd_block(arch):
    N, d, n, k = 64, 16, 1024, 4
    sae = {
        "topk": lambda: saes.TopKSAE(d, n, k),
        "batchtopk": lambda: saes.BatchTopKSAE(d, n, k),
        "matryoshka": lambda: saes.MatryoshkaSAE(d, [128, 384, 512], k=k),
    }[arch]()
    x = torch.randn(N, d)
    out = sae.training_forward(x, saes.architectures.base.batch_variance(x))
    loss = sum(out.losses.values())
    with _Shapes() as rec:
        loss.backward()
    big = [(f, s) for f, s in rec.shapes if len(s) >= 2 and s[0] == N and s[-1] == n]
    nkd = [(f, s) for f, s in rec.shapes if len(s) == 3 and s[0] == N and s[-1] == d and s[1] > 5]
    assert not big, f"dense [N, d_sae] tensors in the backward: {big}"
    assert not nkd, f"[N, k, d] blocks in the backward: {nkd}"
    # Latents nobody selected get exactly zero encoder gradient.
    unused = torch.ones(n, dtype=torch.bool)
    unused[out.indices[out.values != 0]] = False
    assert bool((sae.W_enc.grad[:, unused] == 0).all()) and bool((sae.W_dec.grad[unused] == 0).all())


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_aux_codes_give_the_auxk_loss_of_the_dense_pre_activations(arch):
    from saes.training.trainer import auxk_loss

    d, n = 16, 512
    sae = {"topk": lambda: saes.TopKSAE(d, n, 4), "batchtopk": lambda: saes.BatchTopKSAE(d, n, 4),
           "matryoshka": lambda: saes.MatryoshkaSAE(d, [64, 448], k=4)}[arch]()
    x = torch.randn(64, d)
    var = saes.architectures.base.batch_variance(x)
    dead = torch.zeros(n, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for use_aux in (False, True):
        sae.zero_grad()
        out = sae.training_forward(x, var)
        if use_aux:
            e = (x - out.x_hat).detach()
            v, i = out.aux_codes(dead, 8)
            e_hat = kernels.sparse_decode(v, i, sae.W_dec)
            loss = min(1.0, int(dead.sum()) / 8) * (e_hat - e).pow(2).sum(-1).mean() / var
        else:
            loss = auxk_loss(sae, x, out, dead, 8, var)  # the trainer's, on dense pre_acts
        loss.backward()
        grads.append([p.grad.clone() for p in (sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- matching pursuit


def _plain_pursuit(r, D, steps):
    """The algorithm as written, with autograd through everything but the argmax."""
    vals, idxs = [], []
    for _ in range(steps):
        with torch.no_grad():
            j = (r @ D.T).clamp_min(0).argmax(-1)
        v = (r * D[j]).sum(-1).clamp_min(0)
        r = r - v[:, None] * D[j]
        vals.append(v)
        idxs.append(j)
    return torch.stack(vals, 1), torch.stack(idxs, 1), r


@pytest.mark.parametrize("gram", [True, False])
def test_pursuit_matches_the_plain_algorithm_values_and_gradients(gram):
    g = torch.Generator().manual_seed(0)
    D = torch.randn(96, 16, generator=g)
    D = (D / D.norm(dim=1, keepdim=True)).requires_grad_()
    r0 = torch.randn(40, 16, generator=g).requires_grad_()
    out = kernels.pursuit(r0, D, D, 9, gram=gram)
    v, i, r = _plain_pursuit(r0, D, 9)
    assert torch.equal(out.indices, i)
    torch.testing.assert_close(out.values, v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.residual, r, rtol=1e-5, atol=1e-5)
    go = torch.randn(40, 16, generator=g)
    loss_a = (out.residual * go).sum() + out.values.square().sum()
    loss_b = (r * go).sum() + v.square().sum()
    for a, b in zip(torch.autograd.grad(loss_a, (D, r0)), torch.autograd.grad(loss_b, (D, r0))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gram_and_plain_selection_agree_at_benchmark_like_width():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(2048, 64, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    x = torch.randn(256, 64, generator=g)
    a = kernels.pursuit(x, D, D, 32, gram=True)
    b = kernels.pursuit(x, D, D, 32, gram=False)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)


def test_gram_path_settles_near_ties_like_the_plain_path(monkeypatch):
    settled = []
    resolve = torch_ref._resolve_near_ties
    monkeypatch.setattr(torch_ref, "_resolve_near_ties", lambda *a: settled.append(1) or resolve(*a))
    g = torch.Generator().manual_seed(2)
    D = torch.randn(512, 32, generator=g)
    D[100] = D[7]  # exact duplicate: the plain argmax takes the first index
    # Closer to atom 8 than the Gram scores' tie margin, yet resolvable in float32 (closer
    # still, the two dot products differ by rounding alone and any order is as right).
    D[300] = D[8] + 2e-5 * torch.randn(32, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    x = torch.randn(64, 32, generator=g)
    x[:32] += 3 * (D[7] + D[8])  # make those atoms the ones picked
    a = kernels.pursuit(x, D, D, 12, gram=True)
    b = kernels.pursuit(x, D, D, 12, gram=False)
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.values, b.values)  # coefficients computed as the plain path does
    assert settled  # the near-tie check fired and re-decided picks


def test_gram_is_cached_while_the_weights_do_not_change():
    D = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
    kmp.clear_gram_cache()
    kernels.pursuit(torch.randn(4, 8), D, D, 5, gram=True)
    first = kmp._GRAM.value
    kernels.pursuit(torch.randn(4, 8), D, D, 5, gram=True)
    assert kmp._GRAM.value is first
    D.mul_(1.0)  # an in-place update (an optimiser step) invalidates it
    kernels.pursuit(torch.randn(4, 8), D, D, 5, gram=True)
    assert kmp._GRAM.value is not first
    kmp.clear_gram_cache()


def test_gram_auto_rule():
    cpu = torch.device("cpu")
    assert kmp.use_gram("auto", 8192, 2048, 32, cpu)
    assert not kmp.use_gram("auto", 8192, 2048, 1, cpu)  # one step: nothing to save
    assert not kmp.use_gram("auto", 1 << 16, 2048, 32, cpu)  # 16 GiB Gram matrix
    assert kmp.use_gram(True, 1 << 16, 2, 1, cpu)


# ---------------------------------------------------------------- dispatch


def test_dispatch_reads_the_environment(monkeypatch):
    t = torch.zeros(1)
    assert kernels.backend(t) == "torch"
    monkeypatch.delenv("SAES_KERNELS")
    assert kernels.backend(t) == "torch"  # auto: CPU tensors take the torch path
    monkeypatch.setenv("SAES_KERNELS", "cuda-please")
    with pytest.raises(ConfigError, match="not a kernel backend"):
        kernels.backend(t)
    monkeypatch.setenv("SAES_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="triton"):
        kernels.backend(t)


def test_gradient_accumulation_and_held_gradients_survive_buffer_reuse():
    W, b, bd = _params(16, 4096, seed=9)
    x1, x2 = torch.randn(32, 16), torch.randn(32, 16)

    def loss(x):
        return kernels.encode(x, W, b, bd, 5).values.square().sum()

    g1 = torch.autograd.grad(loss(x1), W)[0]
    g2 = torch.autograd.grad(loss(x2), W)[0]  # g1 is still held: must not be overwritten
    ref1 = torch.autograd.grad(_dense_encode(x1, W, b, bd, 5).square().sum(), W)[0]
    ref2 = torch.autograd.grad(_dense_encode(x2, W, b, bd, 5).square().sum(), W)[0]
    torch.testing.assert_close(g1, ref1)
    torch.testing.assert_close(g2, ref2)
    W.grad = None
    loss(x1).backward()
    loss(x2).backward()  # accumulates into the .grad the first backward left
    torch.testing.assert_close(W.grad, ref1 + ref2)


def test_segment_sum_into_a_transposed_destination_in_chunks():
    g = torch.Generator().manual_seed(3)
    src = torch.randn(40, 4096, generator=g)  # wide rows: several chunks of bags
    cols = torch.randint(0, 200, (900,), generator=g)
    order, offsets = torch_ref.by_latent(cols, 200)
    rows = torch.randint(0, 40, (900,), generator=g)[order]
    w = torch.randn(900, generator=g)
    out = torch.empty(4096, 200)
    torch_ref.segment_sum(src, rows, w, offsets, out=out.t())
    ref = torch.zeros(200, 4096).index_add_(0, cols[order], src[rows] * w[:, None])
    torch.testing.assert_close(out.t(), ref, rtol=1e-4, atol=1e-4)


def test_torch_ref_primitives_on_hand_made_bags():
    src = torch.arange(12.0).view(4, 3)
    rows = torch.tensor([3, 0, 0, 2])
    w = torch.tensor([1.0, 2.0, -1.0, 0.5])
    offsets = torch.tensor([0, 1, 1])  # bags: {3}, {}, {0, 0, 2}
    out = torch_ref.segment_sum(src, rows, w, offsets)
    torch.testing.assert_close(out, torch.stack([src[3], torch.zeros(3), src[0] + 0.5 * src[2]]))
    dots = torch_ref.entry_dot(src, torch.tensor([0, 1]), src, torch.tensor([1, 1]))
    torch.testing.assert_close(dots, torch.stack([src[0] @ src[1], src[1] @ src[1]]))
