"""The sparsity-penalised families (L1, JumpReLU, Gated) on planted data, in the one trainer.

Each family's defining behaviour at small size (default run), its frontier and recovery
over a sweep of coefficients (``-m slow``), the coefficient warm-up and its resume, the
free decoder of the L1 default, files, the command line and bad settings. Losses and
gradients against SAELens's own training classes are in tests/test_saes_interop.py.
"""
from __future__ import annotations

import itertools
import json

import pytest
import torch

import saes
from saes import metrics, synthetic
from saes.training import checkpoint

torch.set_num_threads(1)

D, N = 16, 64


def planted(noise: float = 0.0, magnitude: tuple[float, float] = (0.5, 1.5)) -> synthetic.SyntheticData:
    return synthetic.superposition(n_features=32, d=D, n_samples=8192, seed=0, mean_active=3, noise=noise,
                                   magnitude=magnitude)


def config(steps: int, lr: float = 3e-3, **kw) -> saes.TrainConfig:
    return saes.TrainConfig(batch_size=256, total_tokens=256 * steps, lr=lr, normalize_input=True, seed=0, **kw)


def reconstruction_bias(sae: saes.SAE, x: torch.Tensor) -> float:
    """Relative reconstruction bias γ (Rajamanoharan et al. 2024, Gated SAEs):
    ``argmin_γ E||x̂/γ - x||^2 = E||x̂||^2 / E<x̂, x>`` on centred rows; below 1, the
    reconstructions are shrunk. (It reads the whole reconstruction, so a feature split over
    two latents does not count as shrunk, unlike the per-feature shrinkage of
    interp.evaluation.recovery.)"""
    with torch.no_grad():
        mu = x.mean(0)
        xh = sae(x) - mu
        return float(xh.pow(2).sum() / (xh * (x - mu)).sum())


def frontier(cls: type, key: str, coefficients: tuple[float, ...], data: torch.Tensor, cfg: saes.TrainConfig,
             **settings) -> list[dict[str, float]]:
    """One sweep (one pass over the data) of ``cls`` at each coefficient: FVU, L0 and MCC."""
    models = [cls(D, N, **{key: c}, **settings) for c in coefficients]
    saes.train(models, data, cfg, progress=False)
    return [metrics.evaluate(m, data) | {"sae": m} for m in models]


# ---------------------------------------------------------------- defining behaviour


def test_l1_frontier_is_monotone_and_its_codes_shrink():
    data = planted()
    points = frontier(saes.ReLUSAE, "l1_coefficient", (0.3, 1.0, 3.0), data.x, config(200))
    l0 = [p["l0"] for p in points]
    fvu = [p["fvu"] for p in points]
    print(f"L1 frontier: L0 {[round(v, 2) for v in l0]}, FVU {[round(v, 3) for v in fvu]}")
    assert l0[0] > l0[1] > l0[2] and fvu[0] < fvu[1] < fvu[2]
    # The L1 penalty's known flaw, which Gated and JumpReLU exist to fix: codes shrink.
    assert reconstruction_bias(points[1]["sae"], data.x) < 0.85
    # Anthropic's variant: rows free, their norms no longer equal (the trainer left them alone; the
    # folded input normalisation scales all rows alike).
    norms = points[1]["sae"].W_dec.detach().norm(dim=1)
    assert float(norms.max() / norms.min()) > 1.5


def test_gated_removes_the_shrinkage_of_l1_at_a_better_frontier_point():
    data = planted()
    l1, gated = saes.ReLUSAE(D, N, l1_coefficient=2.0), saes.GatedSAE(D, N, l1_coefficient=3.0)
    saes.train([l1, gated], data.x, config(300), progress=False)
    a, b = metrics.evaluate(l1, data.x), metrics.evaluate(gated, data.x)
    g_l1, g_gated = reconstruction_bias(l1, data.x), reconstruction_bias(gated, data.x)
    print(f"L1: L0 {a['l0']:.2f} FVU {a['fvu']:.3f} γ {g_l1:.3f}; "
          f"Gated: L0 {b['l0']:.2f} FVU {b['fvu']:.3f} γ {g_gated:.3f}")
    assert g_l1 < 0.85 and abs(g_gated - 1) < 0.03
    assert b["l0"] < a["l0"] and b["fvu"] < a["fvu"]  # sparser and more faithful at once
    # Decoder rows stayed unit norm (the paper's constraint, kept by the trainer), then all scaled
    # alike by the folded input normalisation.
    norms = gated.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, norms[:1].expand(N), rtol=1e-5, atol=0)


def test_jumprelu_thresholds_separate_true_firings_from_noise():
    data = planted(noise=0.05, magnitude=(1.0, 2.0))
    sae = saes.JumpReLUSAE(D, N, l0_coefficient=1.0, init_threshold=0.5, bandwidth=0.2)
    saes.train(sae, data.x, config(600, lr=1e-2), progress=False)
    cos, latent = metrics.cosine_matrix(data.directions, sae.W_dec).max(1)
    found = (cos > 0.9).nonzero().squeeze(1)
    with torch.no_grad():
        h = sae.pre_acts(data.x)[:, latent[found]]
    labels = data.labels[:, found]
    theta = sae.threshold.detach()[latent[found]]

    def precision_recall(fires: torch.Tensor) -> tuple[float, float]:
        hits = (fires & labels).sum(0).float()
        return float((hits / fires.sum(0).clamp_min(1)).mean()), float((hits / labels.sum(0)).mean())

    jump, relu, start = precision_recall(h > theta), precision_recall(h > 0), precision_recall(h > 0.5)
    print(f"{len(found)} planted features found; firing precision / recall: learnt thresholds {jump}, "
          f"ReLU {relu}, the initial threshold {start}")
    assert len(found) >= 12
    # Where the ReLU fires, most firings are noise: interference and the added Gaussian noise.
    assert relu[0] < 0.4 and relu[1] > 0.9
    # The learnt thresholds keep most true firings and drop most noise, better than where they started.
    assert jump[0] > 0.75 and jump[1] > 0.7 and jump[0] > start[0] + 0.2
    assert 0.5 < float(theta.mean()) and float(theta.std()) > 0  # they moved, each latent its own


# ---------------------------------------------------------------- sweeps and recovery (slow)


FAMILIES = {
    "l1": (saes.ReLUSAE, "l1_coefficient", (0.3, 1.0, 3.0, 6.0), 3e-3, {}),
    "jumprelu": (saes.JumpReLUSAE, "l0_coefficient", (0.1, 0.3, 1.0, 3.0), 1e-2,
                 {"init_threshold": 0.5, "bandwidth": 0.2}),
    "gated": (saes.GatedSAE, "l1_coefficient", (1.0, 2.0, 3.0, 5.0), 3e-3, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_coefficient_sweep_traces_a_monotone_frontier_and_recovers_the_features(family):
    cls, key, coefficients, lr, settings = FAMILIES[family]
    data = planted()
    points = frontier(cls, key, coefficients, data.x, config(1600, lr=lr), **settings)
    from interp.evaluation.recovery import recovery_of

    mcc = [recovery_of(p["sae"], data).mcc for p in points]  # Hungarian-matched decoder cosine
    l0, fvu = [p["l0"] for p in points], [p["fvu"] for p in points]
    print(f"{family}: L0 {[round(v, 2) for v in l0]} FVU {[round(v, 3) for v in fvu]} MCC {[round(v, 3) for v in mcc]}")
    assert all(a > b for a, b in itertools.pairwise(l0)) and all(a < b for a, b in itertools.pairwise(fvu))
    assert max(mcc) > 0.93


# ---------------------------------------------------------------- warm-up and resume


class Interrupt(Exception):
    pass


def _sweep() -> list[saes.SAE]:
    return [saes.ReLUSAE(12, 32, coefficient_warmup_frac=0.5), saes.JumpReLUSAE(12, 32, coefficient_warmup_frac=0.5),
            saes.GatedSAE(12, 32, coefficient_warmup_frac=0.5, unit_norm_decoder=False)]


RESUME = saes.TrainConfig(batch_size=128, total_tokens=128 * 30, lr=3e-3, normalize_input=True, log_every=1,
                          checkpoint_every=7, seed=3)


def test_the_warm_up_rises_with_the_tokens_and_a_resumed_run_repeats_it_exactly(tmp_path):
    x = synthetic.superposition(n_features=24, d=12, n_samples=2048, seed=0, mean_active=3).x
    straight = _sweep()
    results = saes.train(straight, x, RESUME, checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl",
                         progress=False)
    # The coefficient reached at each step: linear in the tokens over the first half, then flat.
    for rec in results[0].history:
        assert rec["l1_coefficient"] == pytest.approx(5.0 * min(1.0, rec["tokens"] / (0.5 * RESUME.total_tokens)))
    assert results[1].history[0]["l0_coefficient"] == pytest.approx(1.0 / 15)

    def stop(info):
        if info["step"] == 11:  # inside the warm-up; the last checkpoint is at step 7
            raise Interrupt

    with pytest.raises(Interrupt):
        saes.train(_sweep(), x, RESUME, checkpoint_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl", progress=False,
                   callback=stop)
    assert checkpoint.read(tmp_path / "b")[0]["step"] == 7
    torch.manual_seed(1)  # a fresh process: new objects, another global RNG state
    resumed = _sweep()
    saes.train(resumed, x, RESUME, checkpoint_dir=tmp_path / "b", resume=True, log_path=tmp_path / "b.jsonl",
               progress=False)
    for a, b in zip(straight, resumed):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), (type(a).__name__, name)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


# ---------------------------------------------------------------- files, command line, errors


@pytest.mark.parametrize("cls", [saes.ReLUSAE, saes.JumpReLUSAE, saes.GatedSAE])
def test_saved_under_the_saelens_name_and_loaded_back_with_every_setting(tmp_path, cls):
    x = planted().x[:512]
    sae = cls(D, N, coefficient_warmup_frac=0.25, decoder_init_norm=0.2)
    saes.train(sae, x, config(4), progress=False)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard"}.get(sae.architecture, sae.architecture)
    back = saes.load(tmp_path)
    assert type(back) is cls and back.arch_config() == sae.arch_config()
    assert torch.equal(back.encode(x), sae.encode(x)) and (sae.encode(x) > 0).any()


def test_an_old_file_of_an_inference_only_class_still_loads(tmp_path):
    """Files written when ReLUSAE and JumpReLUSAE had no training settings name none."""
    sae = saes.JumpReLUSAE(D, N)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["saes"]["config"] = {"d_in": D, "d_sae": N}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    back = saes.load(tmp_path)
    assert isinstance(back, saes.JumpReLUSAE) and torch.equal(back.threshold, sae.threshold)


@pytest.mark.parametrize("make, match", [
    (lambda: saes.ReLUSAE(D, N, l1_coefficient=-1), "l1_coefficient=-1.0 must be at least 0"),
    (lambda: saes.ReLUSAE(D, N, coefficient_warmup_frac=2), "coefficient_warmup_frac=2.0 must be at most 1"),
    (lambda: saes.ReLUSAE(D, N, decoder_init_norm=0), "decoder_init_norm=0.0 must be positive"),
    (lambda: saes.JumpReLUSAE(D, N, bandwidth=0), "bandwidth=0.0 must be positive; give the width"),
    (lambda: saes.JumpReLUSAE(D, N, l0_coefficient=float("nan")), "l0_coefficient=nan must be a finite number"),
    (lambda: saes.JumpReLUSAE(D, N, init_threshold=-0.1), "init_threshold=-0.1 must be at least 0"),
    (lambda: saes.JumpReLUSAE(D, N, sparsity_loss="l1"), "sparsity_loss='l1' is unknown; use one of"),
    (lambda: saes.GatedSAE(D, N, frozen_aux_decoder="yes"), "frozen_aux_decoder='yes' must be True or False"),
    (lambda: saes.GatedSAE(D, N, l1_coefficient="1"), "l1_coefficient='1' must be a finite number"),
])
def test_bad_settings_are_one_line_errors_naming_the_setting(make, match):
    with pytest.raises(saes.ConfigError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    from store_util import write_store

    return write_store(tmp_path_factory.mktemp("store"), planted().x[:2048], shard_rows=1024)


def _train_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from interp.cli import main

    code = main(["train", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("arch, flags, setting", [
    ("l1", ["--l1-coefficient", "2", "--coefficient-warmup-frac", "0.1"], {"l1_coefficient": 2.0}),
    ("jumprelu", ["--l0-coefficient", "0.5", "--bandwidth", "0.1", "--sparsity-loss", "tanh"],
     {"sparsity_loss": "tanh", "bandwidth": 0.1}),
    ("gated", ["--no-frozen-aux-decoder", "--no-unit-norm-decoder"], {"frozen_aux_decoder": False,
                                                                       "unit_norm_decoder": False}),
])
def test_interp_train_arch_with_its_settings(tmp_path, store_dir, capsys, arch, flags, setting):
    code, out, err = _train_cli(["--store", str(store_dir), "--arch", arch, "--d-sae", "32", "--tokens", "1024",
                                 "--batch-size", "256", "--normalize-input", *flags, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    sae = saes.load(tmp_path)
    assert sae.architecture == {"l1": "relu"}.get(arch, arch)
    assert {k: getattr(sae, k) for k in setting} == setting
    assert json.loads(out.splitlines()[-1])["l0"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--arch", "l1", "--k", "4"], "--arch l1 takes no --k: its sparsity comes from a penalty; set --l1-coefficient"),
    (["--arch", "topk"], "--arch topk needs --k"),
    (["--arch", "l1", "--bandwidth", "0.1"], "--bandwidth is a setting of --arch jumprelu, not of --arch l1"),
])
def test_interp_train_refuses_settings_of_another_family(tmp_path, store_dir, capsys, argv, message):
    code, _, err = _train_cli(["--store", str(store_dir), "--d-sae", "32", "--tokens", "256", *argv,
                               "--out", str(tmp_path)], capsys)
    assert code == 1 and message in err, err
