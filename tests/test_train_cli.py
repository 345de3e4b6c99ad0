"""`interp train`, `interp eval-sae`, live training and evaluate_sae on a tiny random model."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

import saes
from interp.cli import train as cli_train
from interp.evaluation.splice import evaluate_sae
from interp.activations.harvest import harvest
from interp.activations.live import LiveConfig, activation_batches, train_live
from interp.activations.tokens import TokenSource
from interp.model.tiny import tiny_model

torch.set_num_threads(1)

WORDS = "the cat sat on the mat and then the dog ran under the big tree . a red bird flew over the blue sky !"
TEXTS = [" ".join(WORDS.split()[i:] + WORDS.split()[:i]) for i in range(20)] * 6
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def model_dir(tiny_gpt2_dir):
    return tiny_gpt2_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interp")
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_help_has_examples(capsys):
    for cmd in ("train", "eval-sae"):
        with pytest.raises(SystemExit):
            _cli([cmd, "--help"])
        out = capsys.readouterr().out
        assert "example" in out and f"interp {cmd} " in out


def test_train_from_store_resume_and_eval(tmp_path, model_dir, corpus, capsys):
    from interp.model.loading import load

    # Loaded from its directory, as eval-sae will: the SAE records that model, and eval-sae
    # refuses an SAE of another model.
    model = load(model_dir, device="cpu")
    store = tmp_path / "store"
    harvest(model, str(corpus), HOOK, store, max_tokens=3000, context_length=16, progress=False)
    out = tmp_path / "sae"
    argv = ["train", "--store", str(store), "--arch", "topk", "--d-sae", "64", "--k", "4", "--tokens", "2048",
            "--batch-size", "128", "--lr", "3e-3", "--out", str(out), "--checkpoint-every", "5", "--log-every", "4",
            "--no-progress"]
    assert _cli(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 16 and summary["hook"] == HOOK and summary["l0"] == 4.0
    sae = saes.load(out)
    assert isinstance(sae, saes.TopKSAE) and sae.metadata["hook_name"] == HOOK
    assert sae.metadata["model_name"] == model.name and sae.metadata["context_size"] == 16
    assert (out / "checkpoint" / "checkpoint.safetensors").is_file()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 5  # steps 1, 4, 8, 12, 16
    # An existing run is not overwritten without --resume; with it, a finished run stays finished.
    from interp.errors import InterpError

    with pytest.raises(InterpError, match="resume"):
        _cli(argv)
    assert _cli(argv + ["--resume"]) == 0
    assert torch.equal(saes.load(out).W_dec, sae.W_dec)
    capsys.readouterr()

    assert _cli(["eval-sae", "--sae", str(out), "--model", str(model_dir), "--data", str(corpus),
                 "--tokens", "500", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed.splitlines()[0])
    assert metrics["hook"] == HOOK and metrics["tokens"] >= 500
    assert metrics["ce_zero_ablation"] != metrics["ce_clean"]
    assert "ce_loss_recovered" in printed.split("\n", 2)[2]  # the table follows the JSON


def test_train_live_from_the_command_line(tmp_path, model_dir, corpus, capsys):
    out = tmp_path / "live"
    argv = ["train", "--model", str(model_dir), "--hook", HOOK, "--hook", "blocks.1.hook_mlp_out",
            "--data", str(corpus), "--arch", "matryoshka", "--groups", "16,48", "--d-sae", "64", "--k", "4",
            "--tokens", "1024", "--batch-size", "128", "--out", str(out), "--context-length", "16",
            "--buffer-tokens", "512", "--device", "cpu", "--no-progress"]
    assert _cli(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert {r["hook"] for r in lines} == {HOOK, "blocks.1.hook_mlp_out"}
    for hook in (HOOK, "blocks.1.hook_mlp_out"):
        sae = saes.load(out / hook)
        assert isinstance(sae, saes.MatryoshkaSAE) and sae.group_sizes == [16, 48]
        assert sae.metadata["hook_name"] == hook
        assert (out / hook / "checkpoint" / "checkpoint.safetensors").is_file()
        assert (out / hook / "train_log.jsonl").is_file()


def test_evaluate_sae_identity_and_zero(model):
    """An exact reconstruction recovers all the CE; a zero one recovers none."""
    tokens, mask = model.to_tokens(TEXTS[:6], return_attention_mask=True)
    d = model.d_model
    perfect = saes.TopKSAE(d, 2 * d, k=d)  # k = d unit-basis latents reconstruct exactly
    with torch.no_grad():
        perfect.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        perfect.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
        perfect.b_enc.zero_()
        perfect.b_dec.zero_()
    r = evaluate_sae(model, perfect, HOOK, tokens, attention_mask=mask)
    assert r.ce_spliced == pytest.approx(r.ce_clean, abs=1e-4)
    assert r.ce_loss_recovered == pytest.approx(1.0, abs=1e-3) and r.kl_spliced == pytest.approx(0.0, abs=1e-5)
    assert r.fvu == pytest.approx(0.0, abs=1e-5)
    assert r.tokens == int(mask.sum()) - 6  # BOS excluded

    dead = saes.TopKSAE(d, 64, k=4)
    with torch.no_grad():
        dead.W_dec.zero_()
        dead.b_dec.zero_()
    r0 = evaluate_sae(model, dead, HOOK, tokens, attention_mask=mask)
    assert r0.ce_spliced == pytest.approx(r0.ce_zero_ablation, abs=1e-4)
    assert r0.ce_loss_recovered == pytest.approx(0.0, abs=1e-3)
    assert r0.kl_spliced == pytest.approx(r0.kl_zero_ablation, rel=1e-4) and r0.kl_spliced > 0

    with pytest.raises(ValueError, match=r"per-token shape \[32\]"):
        evaluate_sae(model, saes.TopKSAE(16, 64, k=4), HOOK, tokens)


def test_live_stream_is_aligned_and_replayable(model):
    # blocks.1.hook_resid_pre is blocks.0.hook_resid_post: aligned rows must be equal.
    hooks = [HOOK, "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out"]
    cfg = LiveConfig(buffer_tokens=256)
    source = TokenSource(TEXTS, context_length=16)
    a = list(activation_batches(model, source, hooks, 64, seed=3, config=cfg))
    b = list(activation_batches(model, source, hooks, 64, seed=3, config=cfg))
    assert len(a) > 5 and all(x[h].shape == (64, 32) for x in a for h in hooks)
    assert all(torch.equal(x[h], y[h]) for x, y in zip(a, b) for h in hooks)
    assert all(torch.equal(x[HOOK], x["blocks.1.hook_resid_pre"]) for x in a)
    assert not torch.equal(a[0][HOOK], a[0]["blocks.1.hook_mlp_out"])
    # Shuffled: the first batch is not simply the first 64 tokens in order.
    in_order = torch.cat(list(_in_order(model, HOOK, source, cfg)))
    assert not torch.equal(a[0][HOOK], in_order[:64])
    # Every emitted row is one of the real (non-BOS) token activations.
    emitted = torch.cat([x[HOOK] for x in a])
    assert emitted.shape[0] == in_order.shape[0] // 64 * 64
    assert torch.isin(emitted[:, 0], in_order[:, 0]).all()


def _in_order(model, hook, source, cfg):
    for batch in source.batches(model, cfg.model_batch_size):
        _, cache = model.run_with_cache(batch.tokens, names=[hook], attention_mask=batch.attention_mask)
        yield cache[hook][source.keep_mask(batch)]


class Interrupt(Exception):
    pass


def test_live_training_resumes_exactly(tmp_path, model, monkeypatch):
    cfg = saes.TrainConfig(batch_size=64, total_tokens=64 * 12, lr=3e-3, checkpoint_every=4, log_every=2)
    live = LiveConfig(buffer_tokens=256)

    def build():
        return {HOOK: saes.TopKSAE(32, 64, k=4), "blocks.1.hook_mlp_out": [saes.BatchTopKSAE(32, 64, k=4)]}

    straight = build()
    train_live(model, TEXTS, straight, cfg, context_length=16, live=live, checkpoint_dir=tmp_path / "a", log_dir=tmp_path / "a", progress=False)

    interrupted = build()
    from saes.training.trainer import Trainer

    real_step = Trainer.step

    def flaky(self, x):
        if self.batches == 9:
            raise Interrupt
        return real_step(self, x)

    monkeypatch.setattr(Trainer, "step", flaky)
    with pytest.raises(Interrupt):
        train_live(model, TEXTS, interrupted, cfg, context_length=16, live=live, checkpoint_dir=tmp_path / "b", log_dir=tmp_path / "b",
                   progress=False)
    monkeypatch.setattr(Trainer, "step", real_step)
    resumed = build()
    results = train_live(model, TEXTS, resumed, cfg, context_length=16, live=live, checkpoint_dir=tmp_path / "b", log_dir=tmp_path / "b",
                         resume=True, progress=False)
    assert results[HOOK].tokens == 64 * 12
    for hook in straight:
        for sa, sb in zip(_sae_list(straight[hook]), _sae_list(resumed[hook])):
            for (k, va), vb in zip(sa.state_dict().items(), sb.state_dict().values()):
                assert torch.equal(va, vb), (hook, k)
        name = hook
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (tmp_path / "b" / f"{name}.jsonl").read_text()


def _sae_list(x):
    return [x] if isinstance(x, saes.SAE) else list(x)
