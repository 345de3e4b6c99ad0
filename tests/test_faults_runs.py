"""Runs that must not go wrong quietly: resuming on other data, two writers in one output
directory, data with nothing to learn, and Ctrl-C during `interp train`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from reliability import ROOT, child_env, record
from store_util import write_store

import saes
from interp.cli import main as cli_main
from interp.cli.train import build_sae
from saes.errors import CheckpointError, DegenerateDataWarning
from saes.locks import DirectoryLockedError
from saes.training import checkpoint
from saes.training.data import data_identity, store_identity
from saes.training.runner import TrainingInterrupted

torch.set_num_threads(1)

D, D_SAE, K = 8, 16, 2


def _rows(seed: int, n: int = 512) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def callback(info):
        if info["step"] >= step:
            raise _Stop

    return callback


def _ckpt_step(directory: Path) -> int:
    saved = checkpoint.read(directory)
    assert saved is not None
    return int(saved[0]["step"])


# ------------------------------------------------------------------ 1. resume on other data


def test_resuming_on_another_store_of_the_same_shape_is_refused(tmp_path, capsys):
    from interp.activations.store import ActivationStore

    a = ActivationStore.open(write_store(tmp_path / "a", _rows(1), 128))
    b = ActivationStore.open(write_store(tmp_path / "b", _rows(2), 128))
    assert (a.d, len(a), a.hook, a.model_name) == (b.d, len(b), b.hook, b.model_name)
    cfg = saes.TrainConfig(batch_size=32, total_tokens=32 * 12, lr=3e-3, checkpoint_every=1)
    ckpt, log = tmp_path / "run" / "checkpoint", tmp_path / "run" / "train_log.jsonl"

    with pytest.raises(_Stop):
        saes.train(saes.TopKSAE(D, D_SAE, k=K), a, cfg, checkpoint_dir=ckpt, log_path=log, progress=False,
                   callback=_stop_at(4))
    assert _ckpt_step(ckpt) == 4
    log_before = log.read_text()

    with pytest.raises(CheckpointError) as err:
        saes.train(saes.TopKSAE(D, D_SAE, k=K), b, cfg, checkpoint_dir=ckpt, log_path=log, resume=True, progress=False)
    message = str(err.value)
    ids = [store_identity(s) for s in (a, b)]
    assert ids[0] != ids[1]
    for s, ident in zip((a, b), ids):
        assert str(s.directory) in message and ident in message
    assert "Resume with the data it was trained on" in message and "checkpoint_dir" in message
    assert _ckpt_step(ckpt) == 4 and log.read_text() == log_before  # the refused run touched nothing

    # The command line says the same in one line, naming its own flag.
    argv = ["train", "--store", str(b.directory), "--d-sae", str(D_SAE), "--k", str(K), "--batch-size", "32",
            "--tokens", str(32 * 12), "--lr", "3e-3", "--checkpoint-every", "1", "--no-progress", "--resume",
            "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert cli_main(argv) == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "other data" in said[0] and "a new --out" in said[0], said

    steps = []
    result = saes.train(saes.TopKSAE(D, D_SAE, k=K), a, cfg, checkpoint_dir=ckpt, log_path=log, resume=True,
                        progress=False, callback=lambda info: steps.append(info["step"]))
    assert steps[0] == 5 and result.steps == 12
    record("Resuming on another store of the same model, hook and size is refused, naming both; the same store "
           "resumes", "test_faults_runs.py::test_resuming_on_another_store_of_the_same_shape_is_refused",
           processes=1, tokens=32 * 12, faults=2, lost=0, steps_on_the_other_store=0)


def test_a_tensor_of_the_same_shape_is_other_data_too(tmp_path):
    cfg = saes.TrainConfig(batch_size=32, total_tokens=32 * 8, lr=3e-3, checkpoint_every=1)
    with pytest.raises(_Stop):
        saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(1), cfg, checkpoint_dir=tmp_path, progress=False,
                   callback=_stop_at(2))
    with pytest.raises(CheckpointError, match="other data"):
        saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(2), cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(1), cfg, checkpoint_dir=tmp_path, resume=True,
                      progress=False).steps == 8


def test_a_checkpoint_without_a_data_identity_resumes_with_a_warning(tmp_path):
    cfg = saes.TrainConfig(batch_size=32, total_tokens=32 * 6, lr=3e-3, checkpoint_every=1)
    with pytest.raises(_Stop):
        saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(1), cfg, checkpoint_dir=tmp_path, progress=False,
                   callback=_stop_at(2))
    state, tensors = checkpoint.read(tmp_path)
    del state["data"]["identity"]  # as written before checkpoints recorded one
    checkpoint.write(tmp_path, state, tensors)
    with pytest.warns(UserWarning, match="records no identity"):
        result = saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(2), cfg, checkpoint_dir=tmp_path, resume=True,
                            progress=False)
    assert result.steps == 6


def test_live_training_resumed_on_another_text_is_refused(tmp_path):
    from interp.activations.live import LiveConfig, train_live
    from interp.model.tiny import tiny_model

    model, hook = tiny_model("gpt2"), "blocks.0.hook_resid_post"
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "then", "the", "dog", "ran", "under", "the", "big", "tree"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    for name, docs in (("a.txt", texts), ("b.txt", texts[::-1])):
        (tmp_path / name).write_text("\n".join(docs) + "\n")
    cfg = saes.TrainConfig(batch_size=32, total_tokens=32 * 3, lr=3e-3)
    kw = {"context_length": 8, "live": LiveConfig(buffer_tokens=64), "checkpoint_dir": tmp_path / "run",
              "progress": False}
    train_live(model, tmp_path / "a.txt", {hook: saes.TopKSAE(32, 64, k=4)}, cfg, **kw)
    with pytest.raises(CheckpointError, match="other data") as err:
        train_live(model, tmp_path / "b.txt", {hook: saes.TopKSAE(32, 64, k=4)}, cfg, resume=True, **kw)
    assert str(tmp_path / "a.txt") in str(err.value) and str(tmp_path / "b.txt") in str(err.value)
    done = train_live(model, tmp_path / "a.txt", {hook: saes.TopKSAE(32, 64, k=4)}, cfg, resume=True, **kw)
    assert done[hook].steps == 3


def test_live_data_identity_names_model_hook_and_text():
    def live(path="/a/corpus.txt", fingerprint="f1", model="gpt2", hook="blocks.0.hook_resid_post"):
        return {"kind": "live", "d": 8, "rows": None, "model": model, "hook": hook,
                "source": {"kind": "text_file", "path": path, "bytes": 10, "fingerprint": fingerprint},
                "live": {"context_length": 16}}

    same = data_identity(live())
    assert same == data_identity(live(path="/moved/corpus.txt"))  # the same text found elsewhere
    for other in (live(fingerprint="f2"), live(model="gpt2-medium"), live(hook="blocks.1.hook_resid_post")):
        assert data_identity(other) != same
    stream = live(fingerprint=None)
    stream["source"] = {"kind": "text_iterable", "type": "generator", "fingerprint": None}
    assert data_identity(stream) is None  # nothing names a generator: not checked
    assert data_identity({"kind": "iterable", "d": 8, "rows": None}) is None


# ------------------------------------------------------------------ 3. data with nothing to learn


def _fit(x: torch.Tensor, normalize: bool = False) -> tuple[saes.TrainResult, list[warnings.WarningMessage]]:
    cfg = saes.TrainConfig(batch_size=128, total_tokens=128 * 30, lr=3e-3, normalize_input=normalize, init_rows=1024)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = saes.train(saes.TopKSAE(16, 32, k=4), x, cfg, progress=False)
    return result, [w for w in caught if issubclass(w.category, DegenerateDataWarning)]


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    return saes.synthetic.superposition(n_features=32, d=16, n_samples=2048, seed=0).x.float()


@pytest.mark.parametrize("case", ["identical", "zero", "offset_noise"])
def test_rows_with_nothing_to_learn_are_named(features, case):
    x = {"identical": features[:1].repeat(2048, 1), "zero": torch.zeros(2048, 16),
         "offset_noise": 1e6 + 1e-3 * torch.randn(2048, 16, dtype=torch.float64)}[case]
    result, said = _fit(x)
    assert result.metrics["fvu"] == 0.0 and result.metrics["l0"] == 0.0  # what the run reports...
    assert len(said) == 1, [str(w.message) for w in said]  # ...no longer without a word
    assert "learns nothing" in str(said[0].message)


def test_offset_and_scale_do_not_spoil_training(features):
    base, said = _fit(features, normalize=True)
    assert not said
    offset, said = _fit(features + 1e6, normalize=True)
    # Scaled from the rows' spread, not their norm (which the offset sets): 700 before.
    assert offset.metrics["fvu"] < 2 * base.metrics["fvu"]
    assert len(said) == 1 and "offset" in str(said[0].message)
    tiny, said = _fit(features * 1e-30)  # without normalize_input: 3078 before
    assert tiny.metrics["fvu"] < 2 * base.metrics["fvu"] and tiny.input_scale > 1e29
    assert len(said) == 1 and "scaled by" in str(said[0].message)
    # The saved SAE acts on the raw activations: the scale is folded in.
    with torch.no_grad():
        raw = features[:256] * 1e-30
        err = (tiny.sae(raw).double() - raw.double()).pow(2).sum(-1).mean()
        var = (raw.double() - raw.double().mean(0)).pow(2).sum(-1).mean()
    assert float(err / var) < 2 * base.metrics["fvu"]
    record("Rows offset by 1e6 (normalize_input) or scaled by 1e-30 (without it) train as well as the plain rows, "
           "with a DegenerateDataWarning", "test_faults_runs.py::test_offset_and_scale_do_not_spoil_training",
           processes=1, tokens=128 * 30 * 3, fvu_plain=round(base.metrics["fvu"], 3),
           fvu_offset_1e6=round(offset.metrics["fvu"], 3), fvu_scale_1e_30=round(tiny.metrics["fvu"], 3))


# ------------------------------------------------------------------ 2 and 4. two writers; Ctrl-C


def _cli_args(store: Path, out: Path, tokens: int) -> list[str]:
    return ["train", "--store", str(store), "--d-sae", str(D_SAE), "--k", str(K), "--batch-size", "16",
            "--tokens", str(tokens), "--lr", "3e-3", "--checkpoint-every", "1000", "--log-every", "1",
            "--no-progress", "--out", str(out)]


def _wait_for_steps(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if log.is_file() and log.read_text().count("\n") >= 2:
            return
        time.sleep(0.05)
    raise AssertionError("training did not start")


def test_a_second_writer_is_refused_and_ctrl_c_leaves_a_checkpoint_to_resume(tmp_path, capsys):
    from interp.activations.store import ActivationStore

    store = write_store(tmp_path / "store", _rows(1, 1024), 256)
    out, tokens = tmp_path / "run", 16 * 10**6  # never ends on its own: stopped by Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "interp.cli", *_cli_args(store, out, tokens)], cwd=ROOT,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(proc, out / "train_log.jsonl")
        cfg = saes.TrainConfig(batch_size=16, total_tokens=tokens, lr=3e-3)
        sae = build_sae("topk", D, D_SAE, K)
        t0 = time.monotonic()
        with pytest.raises(DirectoryLockedError, match=f"pid {proc.pid} "):
            saes.train(sae, ActivationStore.open(store), cfg, checkpoint_dir=out / "checkpoint", resume=True,
                       log_path=out / "train_log.jsonl", progress=False, callback=_stop_at(1))
        refused_s = time.monotonic() - t0
        capsys.readouterr()
        assert cli_main(_cli_args(store, out, 32)) == 1  # were it let in, it would end at once
        said = capsys.readouterr().err.strip().splitlines()
        assert len(said) == 1 and f"pid {proc.pid} " in said[0] and "error:" in said[0], said
        assert proc.poll() is None  # the first run goes on, its log intact
        lines = (out / "train_log.jsonl").read_text().splitlines()
        assert lines and all(line.startswith("{") for line in lines)

        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    said = stderr.strip().splitlines()
    assert len(said) == 1 and "Traceback" not in stderr, stderr
    step = _ckpt_step(out / "checkpoint")
    assert said[0] == (f"interp train: interrupted at step {step}; the last checkpoint (step {step}) is in "
                       f"{out / 'checkpoint'}: run it again with --resume to continue")

    # Once the first writer has gone, the directory is free: the run continues where it stopped.
    steps = []
    with pytest.raises(_Stop):
        saes.train(sae, ActivationStore.open(store), cfg, checkpoint_dir=out / "checkpoint", resume=True,
                   log_path=out / "train_log.jsonl", progress=False,
                   callback=lambda info: (steps.append(info["step"]), _stop_at(step + 2)(info)))
    assert steps[0] == step + 1
    record("A second writer of one output directory fails at once, naming the first (pid); Ctrl-C stops "
           "`interp train` with one line and exit 130, checkpointing the step it reached",
           "test_faults_runs.py::test_a_second_writer_is_refused_and_ctrl_c_leaves_a_checkpoint_to_resume",
           processes=2, tokens=16 * (step + 2), faults=3, lost=0,
           refused_after_s=round(refused_s, 3), stopped_after_s=round(stop_s, 2))


def test_a_checkpoint_directory_that_cannot_be_written_is_a_write_error(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the run's directory should be")
    cfg = saes.TrainConfig(batch_size=32, total_tokens=64, lr=3e-3)
    with pytest.raises(saes.WriteError, match=f"cannot write the training run {blocked}"):
        saes.train(saes.TopKSAE(D, D_SAE, k=K), _rows(1), cfg, checkpoint_dir=blocked, progress=False)


def test_ctrl_c_in_the_library_checkpoints_and_resumes_exactly(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # else the signal would stop pytest
    x = _rows(3, 1024)
    cfg = saes.TrainConfig(batch_size=32, total_tokens=32 * 20, lr=3e-3, dead_tokens=64)
    straight = saes.train(saes.TopKSAE(D, D_SAE, k=K), x, cfg, progress=False)

    def interrupt(info):
        if info["step"] == 7:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, in the middle of the run

    with pytest.raises(KeyboardInterrupt) as err:
        saes.train(saes.TopKSAE(D, D_SAE, k=K), x, cfg, checkpoint_dir=tmp_path, progress=False, callback=interrupt)
    assert isinstance(err.value, TrainingInterrupted)
    assert err.value.step == 7 and err.value.checkpoints == {str(tmp_path): 7}  # no checkpoint_every: one made
    assert _ckpt_step(tmp_path) == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = saes.train(saes.TopKSAE(D, D_SAE, k=K), x, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    for name, p in straight.sae.state_dict().items():
        assert torch.equal(p, resumed.sae.state_dict()[name]), name
