"""The shared training loop: sweeps, constraints, schedule, initialisation, logs, kernels."""
from __future__ import annotations

import json

import pytest
import torch

import saes
from saes import kernels, synthetic
from saes.architectures.base import remove_parallel_grad_
from saes.training.init import geometric_median

torch.set_num_threads(1)
DATA = synthetic.superposition(n_features=24, d=12, n_samples=2048, seed=0, mean_active=3)
CFG = saes.TrainConfig(batch_size=128, total_tokens=128 * 20, lr=3e-3, log_every=4)


def _builders():
    return [
        lambda: saes.TopKSAE(12, 32, k=3),
        lambda: saes.BatchTopKSAE(12, 32, k=3),
        lambda: saes.MatryoshkaSAE(12, [8, 24], k=3),
        lambda: saes.MPSAE(12, 32, k=3),
    ]


def test_sweep_reads_each_batch_once_and_equals_separate_runs():
    reads = []

    def stream():
        for i in range(0, 2048, 128):
            reads.append(i)
            yield DATA.x[i : i + 128]

    swept = [b() for b in _builders()]
    results = saes.train(swept, stream(), CFG, progress=False)
    assert len(reads) == 16 and len(set(reads)) == 16  # every batch read exactly once
    assert [r.steps for r in results] == [16] * 4 and all(r.stopped_early for r in results)
    for build, sae in zip(_builders(), swept):
        alone = build()
        saes.train(alone, [DATA.x[i : i + 128] for i in range(0, 2048, 128)], CFG, progress=False)
        for (k, a), b in zip(sae.state_dict().items(), alone.state_dict().values()):
            assert torch.equal(a, b), (type(sae).__name__, k)


def test_decoder_rows_stay_unit_norm_and_parallel_gradient_is_removed():
    sae = saes.TopKSAE(12, 32, k=3)
    saes.train(sae, DATA.x, CFG, progress=False)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    w = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(5, 4), dim=-1))
    w.grad = torch.randn(5, 4)
    remove_parallel_grad_(w)
    torch.testing.assert_close((w.grad * w.detach()).sum(-1), torch.zeros(5), atol=1e-6, rtol=0)


def test_schedule_warms_up_and_decays_in_tokens():
    cfg = saes.TrainConfig(batch_size=100, total_tokens=10_000, lr=1.0, warmup_frac=0.1, decay_frac=0.2)
    assert cfg.lr_factor(0, 100) == pytest.approx(0.1)  # first step already moves
    assert cfg.lr_factor(400, 100) == pytest.approx(0.5)
    assert cfg.lr_factor(5000, 100) == 1.0
    assert cfg.lr_factor(9000, 100) == pytest.approx(0.5)
    assert cfg.lr_factor(9900, 100) == pytest.approx(0.05)
    result = saes.train(saes.TopKSAE(12, 32, k=3), DATA.x, saes.TrainConfig(
        batch_size=128, total_tokens=128 * 20, lr=1e-2, warmup_frac=0.25, decay_frac=0.25, log_every=1), progress=False)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] == pytest.approx(1e-2 * 128 / 640)
    assert max(lrs) == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-2 * 128 / 640)
    assert saes.TrainConfig().lr_for(16384) == pytest.approx(2e-4)  # width-scaled default
    assert saes.TrainConfig().lr_for(4 * 16384) == pytest.approx(1e-4)


def test_initialisation_geometric_median_and_tied_weights():
    x = DATA.x[:512]
    sae = saes.TopKSAE(12, 32, k=3)
    cfg = saes.TrainConfig(batch_size=128, total_tokens=128, lr=1e-12, warmup_frac=0.0, decay_frac=0.0, init_rows=512)
    saes.train(sae, x, cfg, progress=False)
    # One step at a negligible lr: b_dec is the geometric median of the first 512 rows
    # (the order the stream produced them in does not matter), W_enc the transposed decoder.
    torch.testing.assert_close(sae.b_dec, geometric_median(x).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T, atol=1e-5, rtol=1e-5)
    # The geometric median ignores an outlier that drags the mean.
    pts = torch.cat([torch.zeros(9, 2), torch.tensor([[1000.0, 1000.0]])])
    assert geometric_median(pts).norm() < 1.0 < pts.mean(0).norm()
    # Seeds: same seed, same weights; another seed, other weights.
    a, b, c = (saes.TopKSAE(12, 32, k=3) for _ in range(3))
    for sae, seed in ((a, 1), (b, 1), (c, 2)):
        saes.train(sae, DATA.x, saes.TrainConfig(batch_size=128, total_tokens=128 * 3, seed=seed), progress=False)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)


def test_input_normalisation_is_folded_into_the_weights():
    """Training on x and on 1000*x with normalisation learns the same SAE, on raw inputs."""
    small, big = saes.TopKSAE(12, 32, k=3), saes.TopKSAE(12, 32, k=3)
    cfg = saes.TrainConfig(batch_size=128, total_tokens=128 * 10, lr=3e-3, normalize_input=True)
    r1 = saes.train(small, DATA.x, cfg, progress=False)
    r2 = saes.train(big, DATA.x * 1000, cfg, progress=False)
    assert r1.input_scale == pytest.approx(1000 * r2.input_scale, rel=1e-6)
    torch.testing.assert_close(big.encode(DATA.x[:64] * 1000), small.encode(DATA.x[:64]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(big(DATA.x[:64] * 1000) / 1000, small(DATA.x[:64]), rtol=1e-3, atol=1e-3)


def test_metrics_go_to_jsonl_and_the_progress_bar(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    saes.train([saes.TopKSAE(12, 32, k=3), saes.MPSAE(12, 32, k=3)], DATA.x, CFG, log_path=log, progress=True)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if r["sae"] == 0] == [1, 4, 8, 12, 16, 20]
    for r in records:
        assert {"step", "tokens", "sae", "architecture", "fvu", "l0", "dead_fraction", "auxk", "lr", "loss"} <= set(r)
    assert records[-1]["tokens"] == 128 * 20
    err = capsys.readouterr().err
    assert "fvu=" in err and "l0=" in err and "dead=" in err and "auxk=" in err and "lr=" in err


def test_autocast_is_never_used_on_cpu():
    from saes.training.trainer import _autocast

    with _autocast(saes.TrainConfig(autocast="bfloat16"), torch.device("cpu"))():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_sparse_decode_equals_dense_with_gradients():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 8, generator=g, requires_grad=True)
    values = torch.rand(16, 5, generator=g, requires_grad=True)
    indices = torch.randint(0, 40, (16, 5), generator=g)
    out = kernels.sparse_decode(values, indices, W)
    dense = torch.zeros(16, 40).scatter_add(1, indices, values) @ W
    torch.testing.assert_close(out, dense)
    gw, gv = torch.autograd.grad(out.square().sum(), (W, values))
    gw2, gv2 = torch.autograd.grad(dense.square().sum(), (W, values))
    torch.testing.assert_close(gw, gw2)
    torch.testing.assert_close(gv, gv2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_bf16_autocast_matches_cpu_quality():
    data = synthetic.superposition(n_features=48, d=24, n_samples=8192, seed=0, mean_active=3)
    cfg = saes.TrainConfig(batch_size=256, total_tokens=150_000, lr=3e-3, device="cuda")
    models = [b() for b in (
        lambda: saes.TopKSAE(24, 96, k=3), lambda: saes.BatchTopKSAE(24, 96, k=3),
        lambda: saes.MatryoshkaSAE(24, [24, 72], k=3), lambda: saes.MPSAE(24, 96, k=3, gram=True),
    )]
    results = saes.train(models, data.x, cfg, progress=False)
    for r in results:
        assert r.sae.W_dec.is_cuda and r.sae.W_dec.dtype == torch.float32  # autocast, not bf16 weights
        assert saes.metrics.mmcs(data.directions.cuda(), r.sae.W_dec) > 0.9, r.sae.architecture
        cpu = saes.load(_saved(r.sae)).eval()
        x = data.x[:256]
        torch.testing.assert_close(cpu(x), r.sae(x.cuda()).cpu(), rtol=1e-3, atol=1e-3)


def _saved(sae):
    import tempfile

    d = tempfile.mkdtemp()
    sae.save(d)
    return d
