"""Transcoders and skip-transcoders: the one trainer with a reconstruction target, paired data
(tensors, one store's two hooks, one live forward pass), files (ours, SAELens's layout,
circuit-tracer's), splicing in place of an MLP, and the command line, on tiny models."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import saes
from interp.activations.harvest import harvest
from interp.activations.live import activation_batches, train_live
from interp.activations.store_train import train_store
from interp.evaluation.splice import evaluate_sae
from interp.evaluation.transcoders import (
    evaluate_replacement,
    evaluate_transcoder,
    mlp_hooks,
)
from interp.model.tiny import tiny_model
from saes.errors import ConfigError, DataError, FormatError, ShapeMismatchError
from saes.formats.circuit_tracer import (
    THRESHOLD_KEY,
    load_circuit_tracer,
    save_circuit_tracer,
)

torch.set_num_threads(1)

WORDS = "the cat sat on the mat and then the dog ran under the big tree . a red bird flew over the blue sky !"
TEXTS = [" ".join(WORDS.split()[i:] + WORDS.split()[:i]) for i in range(20)] * 6
IN0, OUT0 = "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


def planted(n: int = 8192, d_in: int = 16, d_out: int = 12, linear: float = 0.5, seed: int = 0):
    """``y`` = a sparse code of ``x`` decoded into another space, plus a linear part of ``x``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.relu(torch.randn(n, 64, generator=g) - 1.5)
    x = z @ torch.randn(64, d_in, generator=g)
    y = z @ torch.randn(64, d_out, generator=g) + linear * x @ torch.randn(d_in, d_out, generator=g)
    return x, y


def fvu(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


CFG = {"batch_size": 256, "total_tokens": 60_000, "lr": 3e-3}


# ------------------------------------------------------------------ the dictionary


def test_a_transcoder_decodes_into_its_output_space_and_subtracts_nothing_from_its_input():
    tc = saes.TopKSAE(16, 64, k=4, d_out=12, skip=True)
    assert tc.is_transcoder and not saes.TopKSAE(16, 64, k=4).is_transcoder
    assert tc.W_dec.shape == (64, 12) and tc.b_dec.shape == (12,) and tc.W_skip.shape == (12, 16)
    assert not tc.apply_b_dec_to_input and torch.equal(tc.W_skip, torch.zeros(12, 16))
    assert tc.arch_config() == {"d_in": 16, "d_sae": 64, "d_out": 12, "skip": True, "k": 4}
    assert "d_out" not in saes.TopKSAE(16, 64, k=4).arch_config()  # SAE files and checkpoints read as before
    with torch.no_grad():
        tc.W_skip.normal_()
        tc.b_dec.normal_()
    x = torch.randn(5, 16)
    v, i = tc.encode_sparse(x)
    assert torch.allclose(tc(x), tc.decode_sparse(v, i) + x @ tc.W_skip.T, atol=1e-6)


def test_families_that_cannot_transcode_are_refused_by_name():
    with pytest.raises(ConfigError, match="MPSAE cannot be a transcoder"):
        saes.MPSAE(16, 64, k=4, d_out=16)
    with pytest.raises(ConfigError, match="only a transcoder has"):
        saes.TopKSAE(16, 64, k=4, skip=True)
    with pytest.raises(ConfigError, match="d_out"):
        saes.TopKSAE(16, 64, k=4, d_out=0)


# ------------------------------------------------------------------ training


def test_the_trainer_reconstructs_the_target_and_the_skip_path_learns_its_linear_part():
    x, y = planted()
    plain, skip = (saes.TopKSAE(16, 64, k=6, d_out=12, skip=s) for s in (False, True))
    saes.train(plain, (x, y), saes.TrainConfig(**CFG), progress=False)
    r_skip = saes.train(skip, (x, y), saes.TrainConfig(**CFG), progress=False)
    with torch.no_grad():
        f_plain, f_skip = fvu(plain(x), y), fvu(skip(x), y)
    assert f_skip < 0.25 and f_skip < 0.8 * f_plain, (f_skip, f_plain)
    assert abs(r_skip.metrics["fvu"] - f_skip) < 0.1  # the logged FVU is against the target
    assert float(skip.W_skip.detach().norm()) > 0.1
    assert r_skip.sae.metadata.get("hook_name_out") is None  # tensors name no hook


def test_an_input_scale_and_an_output_scale_fold_out():
    x, y = planted(linear=0.0)
    a, b = (saes.BatchTopKSAE(16, 64, k=6, d_out=12, skip=True) for _ in range(2))
    saes.train(a, (x, y), saes.TrainConfig(**CFG), progress=False)
    r = saes.train(b, (x * 1e3, y * 1e-3), saes.TrainConfig(**CFG, normalize_input=True), progress=False)
    assert r.input_scale != 1.0 and r.output_scale != 1.0
    with torch.no_grad():  # the folded transcoder acts on raw rows as well as the unscaled one
        assert fvu(b(x * 1e3), y * 1e-3) < 1.5 * fvu(a(x), y) + 0.05


def test_a_resumed_transcoder_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    x, y = planted(n=2048)
    cfg = saes.TrainConfig(batch_size=128, total_tokens=128 * 12, lr=3e-3, checkpoint_every=4)
    whole = saes.train(saes.BatchTopKSAE(16, 64, k=4, d_out=12, skip=True), (x, y), cfg, progress=False)

    def stop(info):
        if info["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        saes.train(saes.BatchTopKSAE(16, 64, k=4, d_out=12, skip=True), (x, y), cfg, checkpoint_dir=tmp_path,
                   progress=False, callback=stop)
    resumed = saes.train(saes.BatchTopKSAE(16, 64, k=4, d_out=12, skip=True), (x, y), cfg, checkpoint_dir=tmp_path,
                         resume=True, progress=False)
    for name, p in whole.sae.state_dict().items():
        assert torch.equal(p, resumed.sae.state_dict()[name]), name
    with pytest.raises(Exception, match="other data"):  # another target is other data
        saes.train(saes.BatchTopKSAE(16, 64, k=4, d_out=12, skip=True), (x, y + 1), cfg, checkpoint_dir=tmp_path,
                   resume=True, progress=False)


def test_paired_data_is_checked_with_messages_that_name_input_and_target():
    x, y = planted(n=512)
    tc = saes.TopKSAE(16, 64, k=4, d_out=12)
    cfg = saes.TrainConfig(batch_size=64, total_tokens=128)
    with pytest.raises(DataError, match="pairs"):
        saes.train(tc, x, cfg, progress=False)
    with pytest.raises(ShapeMismatchError, match="target has shape.*d_out=12"):
        saes.train(tc, (x, y[:, :5]), cfg, progress=False)
    with pytest.raises(ShapeMismatchError, match="512 input rows but 500 target rows"):
        saes.train(tc, (x, y[:500]), cfg, progress=False)
    bad = y.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(saes.NonFiniteError, match="column 2 of the target"):
        saes.train(tc, iter([(x[:64], bad[:64])]), cfg, progress=False)
    with pytest.raises(ConfigError, match="all SAEs or all transcoders"):
        saes.train([tc, saes.TopKSAE(16, 64, k=4)], (x, y), cfg, progress=False)


# ------------------------------------------------------------------ model data: live and stored


def _true_mlp(model, layer: int = 0):
    """The layer's ln_2 and MLP as a function, on copies without hooks: spliced in at the MLP's
    own output hook, the hooked module would call that hook again."""
    import copy

    block = model.model.transformer.h[layer]
    ln, mlp = copy.deepcopy(block.ln_2), copy.deepcopy(block.mlp)
    for m in [*ln.modules(), *mlp.modules()]:
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return lambda x: mlp(ln(x))


def test_live_pairs_are_one_token_at_both_hooks(model):
    mlp = _true_mlp(model)
    batches = list(activation_batches(model, TEXTS, [IN0, OUT0], 64, seed=3))
    assert len(batches) > 2
    with torch.no_grad():
        for b in batches:  # shuffled, yet row i of the output is the MLP of row i of the input
            assert torch.allclose(mlp(b[IN0]), b[OUT0], atol=1e-4)


def test_live_and_store_training_record_both_hooks_and_keep_rows_aligned(model, tmp_path):
    d = model.d_model
    cfg = saes.TrainConfig(batch_size=64, total_tokens=640, lr=1e-3)
    res = train_live(model, TEXTS, {(IN0, OUT0): saes.TopKSAE(d, 64, k=4, d_out=d, skip=True)}, cfg,
                     context_length=16, progress=False, checkpoint_dir=tmp_path / "live")
    r = res[f"{IN0}->{OUT0}"]
    assert r.tokens == 640 and r.sae.metadata["hook_name"] == IN0 and r.sae.metadata["hook_name_out"] == OUT0
    assert (tmp_path / "live" / "blocks.0.hook_resid_mid_to_blocks.0.hook_mlp_out" / "checkpoint.safetensors").exists()

    store = harvest(model, TEXTS, [IN0, OUT0], tmp_path / "store", context_length=16, progress=False, shard_tokens=200)
    src = saes.training.data.make_source((store.select(IN0), store.select(OUT0)), d, 64, d_out=d)
    mlp = _true_mlp(model)
    with torch.no_grad():
        for _, rows in zip(range(4), src.iterate(64, seed=1)):
            assert torch.allclose(mlp(rows[:, :d]), rows[:, d:], atol=1e-4)
    results = train_store(store, {(IN0, OUT0): saes.TopKSAE(d, 64, k=4, d_out=d)}, cfg, progress=False)
    assert results[f"{IN0}->{OUT0}"].sae.metadata["hook_name_out"] == OUT0
    with pytest.raises(DataError, match="different stores"):
        other = harvest(model, TEXTS[:30], [OUT0], tmp_path / "other", context_length=16, progress=False)
        saes.train(saes.TopKSAE(d, 64, k=4, d_out=d), (store.select(IN0), other), cfg, progress=False)


# ------------------------------------------------------------------ splicing in place of the MLP


class ExactMLP(nn.Module):
    """A 'transcoder' that is the layer's MLP itself: spliced in, nothing may change."""

    is_transcoder = True

    def __init__(self, model, layer: int):
        super().__init__()
        self.f = _true_mlp(model, layer)
        self.d_in = self.d_out = model.d_model
        self.d_sae = 1
        self.metadata = {"hook_name": f"blocks.{layer}.hook_resid_mid", "hook_name_out": f"blocks.{layer}.hook_mlp_out"}
        self.dtype = torch.float32

    def forward(self, x):
        return self.f(x)

    def encode_sparse(self, x):
        return x.new_zeros(x.shape[0], 1), torch.zeros(x.shape[0], 1, dtype=torch.long)

    def decode_sparse(self, v, i):
        return v.new_zeros(v.shape[0], self.d_out)

    def add_skip(self, x_hat, x):
        return x_hat + self.f(x)


def test_the_mlp_itself_spliced_in_recovers_everything_and_a_silent_one_nothing(model):
    texts = TEXTS[:16]
    with torch.no_grad():
        r = evaluate_transcoder(model, ExactMLP(model, 0), texts, context_length=12)
        assert r.ce_loss_recovered == pytest.approx(1.0, abs=1e-4) and r.kl_spliced < 1e-6 and r.fvu < 1e-8
        rep = evaluate_replacement(model, [ExactMLP(model, layer) for layer in range(model.n_layers)], texts,
                                   context_length=12)
        assert rep.ce_replacement == pytest.approx(rep.ce_clean, abs=1e-5) and rep.kl_replacement < 1e-6
    silent = saes.TopKSAE(model.d_model, 32, k=2, d_out=model.d_model, metadata=ExactMLP(model, 0).metadata)
    with torch.no_grad():
        silent.W_dec.zero_()
    r0 = evaluate_transcoder(model, silent, texts, context_length=12)
    assert r0.ce_spliced == pytest.approx(r0.ce_zero_ablation, abs=1e-5) and r0.ce_loss_recovered == pytest.approx(0)
    sae_view = evaluate_sae(model, silent, IN0, texts, context_length=12)  # eval-sae's path: the same figures
    assert sae_view.ce_loss_recovered == pytest.approx(r0.ce_loss_recovered, abs=1e-9)
    rep1 = evaluate_replacement(model, [silent], texts, context_length=12)
    assert rep1.ce_replacement == pytest.approx(r0.ce_spliced, abs=1e-9)
    assert mlp_hooks(model, 1) == ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("make,arch", [
    (lambda: saes.TopKSAE(16, 32, k=4, d_out=16), "topk"),
    (lambda: saes.TopKSAE(16, 32, k=4, d_out=12, skip=True), "topk_skip_transcoder"),
    (lambda: saes.BatchTopKSAE(16, 32, k=4, d_out=12), "jumprelu_transcoder"),
    (lambda: saes.MatryoshkaSAE(16, [8, 24], k=4, d_out=12, skip=True), "jumprelu_skip_transcoder"),
    (lambda: saes.ReLUSAE(16, 32, d_out=12, skip=True), "skip_transcoder"),
])
def test_saved_in_saelens_transcoder_layout_and_read_back_exactly(tmp_path, make, arch):
    tc = make()
    tc.metadata.update(hook_name=IN0, hook_name_out=OUT0, model_name="m")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        if getattr(tc, "threshold", None) is not None and tc.threshold.ndim == 0:
            tc.threshold.fill_(0.1)
    tc.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_out"] == tc.d_out and cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == IN0 and cfg["metadata"]["hook_name_out"] == OUT0
    back = saes.load(tmp_path)
    x = torch.randn(7, 16)
    assert type(back) is type(tc) and back.is_transcoder and back.skip == tc.skip
    assert torch.allclose(back(x), tc(x), atol=1e-6)
    cfg["apply_b_dec_to_input"] = True
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="apply_b_dec_to_input"):
        saes.load(tmp_path)


def _layer_set(n_layers: int = 2, skip: bool = True) -> list[saes.SAE]:
    out = []
    for layer in range(n_layers):
        tc = saes.BatchTopKSAE(16, 32, k=4, d_out=16, skip=skip, metadata={
            "hook_name": f"blocks.{layer}.hook_resid_mid", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            "model_name": "world"})
        with torch.no_grad():
            for p in tc.parameters():
                p.add_(torch.randn_like(p) * 0.2)
            tc.threshold.fill_(0.2)
        out.append(tc.eval())
    return out


def test_circuit_tracer_layout_holds_its_documented_keys_and_reads_back(tmp_path):
    yaml = pytest.importorskip("yaml")
    tcs = _layer_set()
    save_circuit_tracer(tcs, tmp_path / "set")
    config = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert config == {"model_kind": "transcoder_set", "model_name": "world", "feature_input_hook": "hook_resid_mid",
                      "feature_output_hook": "hook_mlp_out", "scan": "set"}
    tensors, _ = saes.formats.read_tensors(tmp_path / "set" / "layer_1.safetensors")
    assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec", THRESHOLD_KEY, "W_skip"}
    assert torch.equal(tensors["W_enc"], tcs[1].W_enc.T) and torch.equal(tensors["W_skip"], tcs[1].W_skip)
    x = torch.randn(5, 16)
    for a, b in zip(tcs, load_circuit_tracer(tmp_path / "set")):
        assert torch.allclose(a(x), b(x), atol=1e-6) and b.metadata["hook_name_out"] == a.metadata["hook_name_out"]


def test_circuit_tracer_refuses_what_it_could_not_run(tmp_path):
    topk = saes.TopKSAE(16, 32, k=4, d_out=16, metadata=_layer_set(1)[0].metadata)
    with pytest.raises(FormatError, match="TopK codes depend"):
        save_circuit_tracer([topk], tmp_path / "a")
    with pytest.raises(FormatError, match="layer order"):
        save_circuit_tracer(list(reversed(_layer_set())), tmp_path / "b")
    mixed = _layer_set(1, skip=True) + [_layer_set(2, skip=False)[1]]
    with pytest.raises(FormatError, match="one skip setting"):
        save_circuit_tracer(mixed, tmp_path / "c")


# ------------------------------------------------------------------ command line


def test_train_hook_out_and_eval_sae_from_the_command_line(tmp_path, tiny_gpt2_dir, capsys, monkeypatch):
    from interp.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", str(tiny_gpt2_dir), "--hook", IN0, "--hook-out", OUT0, "--skip", "--data",
                 str(corpus), "--arch", "batchtopk", "--d-sae", "64", "--k", "4", "--tokens", "512", "--batch-size",
                 "64", "--context-length", "16", "--out", "tc", "--no-progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["hook_out"] == OUT0 and line["tokens"] == 512
    tc = saes.load(tmp_path / "tc")
    assert tc.is_transcoder and tc.skip and tc.metadata["hook_name_out"] == OUT0
    assert main(["eval-sae", "--sae", "tc", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--tokens",
                 "200", "--json"]) == 0
    assert "ce_loss_recovered" in json.loads(capsys.readouterr().out)
    assert main(["train", "--model", str(tiny_gpt2_dir), "--hook", IN0, "--data", str(corpus), "--skip", "--d-sae",
                 "64", "--k", "4", "--tokens", "64", "--out", "x"]) == 1
    assert "--hook-out" in capsys.readouterr().err


# ------------------------------------------------------------------ data-parallel


def _dp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        models = _dp_sweep()
        saes.train(models, planted(n=1024), _dp_config(), progress=False)
        save_file({f"{i}.{k}": v.contiguous() for i, m in enumerate(models) for k, v in m.state_dict().items()},
                  f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def _dp_sweep() -> list[saes.SAE]:
    torch.manual_seed(0)
    return [saes.TopKSAE(16, 64, k=4, d_out=12, skip=True), saes.BatchTopKSAE(16, 64, k=4, d_out=12),
            saes.MatryoshkaSAE(16, [16, 48], k=4, d_out=12, skip=True)]


def _dp_config() -> saes.TrainConfig:
    return saes.TrainConfig(batch_size=96, total_tokens=96 * 10, lr=3e-3, dead_tokens=200, normalize_input=True,
                            seed=1, init_rows=256)


def test_two_processes_train_transcoders_as_one_does(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    models = _dp_sweep()
    saes.train(models, planted(n=1024), _dp_config(), progress=False)
    one = {f"{i}.{k}": v for i, m in enumerate(models) for k, v in m.state_dict().items()}
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in one)
    assert max(float((one[k] - ranks[0][k]).abs().max()) for k in one) < 1e-4
    assert any("W_skip" in k for k in one)


def test_interp_transcoders_trains_every_mlp_and_reports_each_and_the_replacement(tmp_path, tiny_gpt2_dir, capsys,
                                                                                   monkeypatch):
    from interp.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["transcoders", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--d-sae", "64", "--k", "4",
                 "--tokens", "512", "--batch-size", "64", "--init-rows", "128", "--context-length", "16",
                 "--eval-tokens", "200", "--out", "tcs", "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "tcs" / "results.json").read_text())
    assert sorted(report["layers"]) == ["0", "1"] and len(report["replacement"]["layers"]) == 2
    assert report["circuit_tracer"].endswith("circuit-tracer") and (tmp_path / "tcs" / "circuit-tracer" / "layer_1.safetensors").exists()
    assert all(t["tokens"] == 512 for t in report["training"].values())
    assert "replacement model" in out and saes.load(tmp_path / "tcs" / "layer_1").metadata["hook_name_out"] == \
        "blocks.1.hook_mlp_out"
    assert main(["transcoders", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--eval-only",
                 "--eval-tokens", "100", "--out", "tcs"]) == 0            # no --tokens: nothing trains
    assert main(["transcoders", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--d-sae", "64", "--k", "4",
                 "--out", "x"]) == 1
    assert "training needs --tokens" in capsys.readouterr().err
    assert main(["transcoders", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--layers", "5", "--tokens", "1",
                 "--out", "x"]) == 1
    assert "layers 0 to 1" in capsys.readouterr().err


def test_interp_transcoders_trains_the_penalised_families_with_their_own_settings(tmp_path, tiny_gpt2_dir, capsys,
                                                                                  monkeypatch):
    from interp.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    monkeypatch.chdir(tmp_path)
    common = ["transcoders", "--model", str(tiny_gpt2_dir), "--data", str(corpus), "--layers", "1", "--d-sae", "64",
              "--tokens", "256", "--batch-size", "64", "--init-rows", "128", "--context-length", "16",
              "--eval-tokens", "100", "--no-progress"]
    assert main([*common, "--arch", "l1", "--l1-coefficient", "0.25", "--out", "l1"]) == 0
    tc = saes.load(tmp_path / "l1" / "layer_1")
    assert isinstance(tc, saes.ReLUSAE) and tc.is_transcoder and tc.l1_coefficient == 0.25
    capsys.readouterr()
    assert main([*common, "--arch", "l1", "--k", "4", "--out", "x"]) == 1
    assert "--arch l1 takes no --k" in capsys.readouterr().err
    assert main([*common, "--arch", "topk", "--k", "4", "--l1-coefficient", "1", "--out", "y"]) == 1
    assert "--l1-coefficient is a setting of --arch l1 / gated, not of --arch topk" in capsys.readouterr().err
