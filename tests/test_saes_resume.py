"""Checkpoints: an interrupted and resumed run equals a straight one, bit for bit."""
from __future__ import annotations

import json

import pytest
import torch

import saes
from saes import synthetic
from saes.training import checkpoint

torch.set_num_threads(1)

DATA = synthetic.superposition(n_features=24, d=12, n_samples=2048, seed=0, mean_active=3)


class Interrupt(Exception):
    pass


def _sweep() -> list[saes.SAE]:
    """One of each architecture, with AuxK in play (shrunk encoder columns die early)."""
    topk = saes.TopKSAE(12, 32, k=3)
    with torch.no_grad():
        topk.W_enc[:, :6] *= 1e-3
    return [topk, saes.BatchTopKSAE(12, 32, k=3), saes.MatryoshkaSAE(12, [8, 24], k=3), saes.MPSAE(12, 32, k=3)]


CFG = saes.TrainConfig(
    batch_size=128, total_tokens=128 * 30, lr=3e-3, dead_tokens=512, normalize_input=True,
    init_weights=False, log_every=5, checkpoint_every=7, seed=3,
)


def _state(models: list[saes.SAE]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in models]


def _stop_at(step: int):
    def cb(info):
        if info["step"] == step:
            raise Interrupt

    return cb


class FakeStore:
    """The part of interp.activations.store.ActivationStore the trainer uses (shuffled, seeded epochs)."""

    def __init__(self, x: torch.Tensor, directory: str = "fake-store"):
        self.x, self.directory, self.hook = x, directory, "blocks.0.hook_resid_post"

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size, shuffle=True, seed=0, drop_last=False, **_):
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(self))
        for a in range(0, len(self), batch_size):
            if drop_last and a + batch_size > len(self):
                break
            yield self.x[order[a : a + batch_size]]


def _make_data(kind: str):
    if kind == "tensor":
        return DATA.x
    if kind == "store":
        return FakeStore(DATA.x[:1000])  # 7 full batches per epoch: resumes cross epochs
    rows = torch.cat([DATA.x, DATA.x.flip(0)])
    return [rows[i : i + 128] for i in range(0, 128 * 30, 128)]  # read once, in order


@pytest.mark.parametrize("kind", ["tensor", "store", "iterable"])
def test_interrupted_and_resumed_equals_straight(tmp_path, kind):
    torch.manual_seed(0)
    straight = _sweep()
    saes.train(straight, _make_data(kind), CFG, checkpoint_dir=tmp_path / "a", log_path=tmp_path / "a.jsonl", progress=False)

    torch.manual_seed(0)
    first = _sweep()
    with pytest.raises(Interrupt):
        saes.train(first, _make_data(kind), CFG, checkpoint_dir=tmp_path / "b", log_path=tmp_path / "b.jsonl",
                   progress=False, callback=_stop_at(17))
    state, _ = checkpoint.read(tmp_path / "b")
    assert state["step"] == 14  # the last checkpoint before the interruption

    torch.manual_seed(1)  # a fresh process: new objects, different global RNG
    second = _sweep()
    data = _make_data(kind)
    results = saes.train(second, iter(data) if kind == "iterable" else data, CFG, checkpoint_dir=tmp_path / "b", resume=True,
                         log_path=tmp_path / "b.jsonl", progress=False)
    assert results[0].steps == 30 and results[0].tokens == 128 * 30
    for a, b in zip(_state(straight), _state(second)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # The log reads as if the run had never stopped.
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_auxk_and_threshold_state_were_really_exercised(tmp_path):
    models = _sweep()
    results = saes.train(models, DATA.x, CFG, progress=False)
    assert max(h["auxk"] for h in results[0].history) > 0
    assert float(models[1].threshold) > 0
    assert results[0].input_scale != 1.0


def test_resuming_with_another_configuration_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        saes.train(_sweep(), DATA.x, CFG, checkpoint_dir=tmp_path, progress=False, callback=_stop_at(8))
    other = saes.TrainConfig(**{**CFG.to_dict(), "lr": 1e-3})
    with pytest.raises(saes.CheckpointError) as err:
        saes.train(_sweep(), DATA.x, other, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert "lr: checkpoint 0.003, now 0.001" in str(err.value)
    wider = _sweep()
    wider[0] = saes.TopKSAE(12, 32, k=4)
    with pytest.raises(saes.CheckpointError) as err:
        saes.train(wider, DATA.x, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert "SAE 0 k: checkpoint 3, now 4" in str(err.value)
    with pytest.raises(saes.CheckpointError) as err:
        saes.train(_sweep(), DATA.x[:1024], CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert "data rows: checkpoint 2048, now 1024" in str(err.value)
    # Without resume=True an existing checkpoint is never overwritten silently.
    with pytest.raises(saes.CheckpointError) as err:
        saes.train(_sweep(), DATA.x, CFG, checkpoint_dir=tmp_path, progress=False)
    assert "resume=True" in str(err.value)
    # Settings that only change logging may differ.
    relogged = saes.TrainConfig(**{**CFG.to_dict(), "log_every": 3})
    saes.train(_sweep(), DATA.x, relogged, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resuming_a_finished_run_gives_the_finished_weights(tmp_path):
    done = _sweep()
    saes.train(done, DATA.x, CFG, checkpoint_dir=tmp_path, progress=False)
    again = _sweep()
    results = saes.train(again, DATA.x, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert results[0].steps == 30 and results[0].metrics["l0"] == 3.0  # final numbers survive
    for a, b in zip(_state(done), _state(again)):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_checkpoint_is_one_safetensors_file_replaced_atomically(tmp_path, monkeypatch):
    with pytest.raises(Interrupt):
        saes.train(_sweep(), DATA.x, CFG, checkpoint_dir=tmp_path, progress=False, callback=_stop_at(8))
    path = tmp_path / "checkpoint.safetensors"
    before = path.read_bytes()
    meta = saes.formats.durable.read_tensors(path)[1]
    assert meta["format"] == "saes-train-checkpoint" and json.loads(meta["state"])["step"] == 7
    # A crash while writing the next checkpoint leaves the previous one intact.
    import saes.formats.durable as durable

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(durable, "save_file", broken)
    with pytest.raises(OSError):
        saes.train(_sweep(), DATA.x, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert path.read_bytes() == before
    # No temp files left (.lock is the run's write lock, which stays by design).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "checkpoint.safetensors"]
