"""Data-parallel training: two gloo processes on CPU equal one process on the same global batch.

Every architecture trains in one sweep, so BatchTopK's global selection, the dead-latent
counts behind AuxK, the BatchTopK threshold and input normalisation are all exercised
across ranks. The tolerance is float32 summation order (gradients summed across ranks
instead of within one matrix product), amplified a little by Adam over the steps.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import saes
from reliability import record
from saes import synthetic
from saes.training import distributed

ROOT = Path(__file__).resolve().parents[1]
# Stated tolerance of the guarantee: max |two processes - one process| over every weight.
TOLERANCE = 1e-4
STEPS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data() -> torch.Tensor:
    return synthetic.superposition(n_features=48, d=16, n_samples=1024, seed=0, mean_active=3).x


def sweep() -> list[saes.SAE]:
    topk = saes.TopKSAE(16, 64, k=4)
    with torch.no_grad():
        topk.W_enc[:, :8] *= 1e-3  # dead from the start: AuxK has work on every rank
    return [topk, saes.BatchTopKSAE(16, 64, k=4), saes.MatryoshkaSAE(16, [16, 48], k=4), saes.MPSAE(16, 64, k=4),
            # the penalised families: a warm-up, free decoder rows, learnt thresholds, the gate's losses
            saes.ReLUSAE(16, 64, l1_coefficient=1.0, coefficient_warmup_frac=0.5), saes.JumpReLUSAE(16, 64),
            saes.GatedSAE(16, 64)]


def config(**kw) -> saes.TrainConfig:
    base = dict(batch_size=96, total_tokens=96 * STEPS, lr=3e-3, dead_tokens=200, normalize_input=True,
                init_weights=False, log_every=3, checkpoint_every=5, seed=1, init_rows=256, warmup_frac=0.1)
    return saes.TrainConfig(**{**base, **kw})


def flat_state(models: list[saes.SAE]) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone().contiguous() for i, m in enumerate(models) for k, v in m.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str, kw: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        models = sweep()
        results = saes.train(models, data(), config(**kw), checkpoint_dir=Path(out) / "ckpt",
                             log_path=Path(out) / "log.jsonl", progress=False)
        state = flat_state(models)
        state["metrics.fvu"] = torch.tensor([r.metrics["fvu"] for r in results])
        save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def run_two(tmp_path: Path, **kw) -> list[dict[str, torch.Tensor]]:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), kw), nprocs=2, join=True)
    return [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]


def run_one(**kw) -> tuple[dict[str, torch.Tensor], list[saes.TrainResult]]:
    torch.manual_seed(0)
    models = sweep()
    results = saes.train(models, data(), config(**kw), progress=False)
    return flat_state(models), results


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) - {"metrics.fvu"} == set(b) - {"metrics.fvu"}
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in b if k in a and k != "metrics.fvu")


def test_two_processes_equal_one_for_every_architecture(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rank0, rank1 = run_two(tmp_path)
    one, results = run_one()
    # Every rank holds the same weights, bit for bit (same reduced gradients, same steps).
    assert max_difference(rank0, rank1) == 0.0
    diff = max_difference(one, rank0)
    print(f"two processes vs one: max weight difference {diff:.2e} over {STEPS} steps (tolerance {TOLERANCE})")
    assert diff < TOLERANCE
    # The weights really moved (the comparison is not of two untouched initialisations).
    start = flat_state(sweep())
    assert max_difference(start, one) > 100 * TOLERANCE
    # Logged metrics are those of the global batch.
    fvu = torch.tensor([r.metrics["fvu"] for r in results])
    assert torch.allclose(rank0["metrics.fvu"], fvu, rtol=1e-3, atol=1e-4)
    # Rank 0 alone wrote the checkpoint and the log; AuxK was in play.
    assert (tmp_path / "ckpt" / "checkpoint.safetensors").is_file()
    assert max(h["auxk"] for h in results[0].history) > 0
    record("Two processes (DDP, gloo) equal one process on the same global batch: TopK, BatchTopK, Matryoshka, "
           "MP, L1, JumpReLU and Gated in one sweep; ranks agree exactly",
           "test_distributed.py::test_two_processes_equal_one_for_every_architecture", processes=2 + 1,
           tokens=96 * STEPS, max_weight_difference=f"{diff:.1e}", tolerance=TOLERANCE, ranks_differ_by=0.0)


def test_a_split_that_is_not_even_still_equals_one_process(tmp_path: Path) -> None:
    # 95 rows over 2 ranks: 48 + 47; the gradient weights n_r / N keep the global mean exact.
    torch.set_num_threads(1)
    rank0, _ = run_two(tmp_path, batch_size=95, total_tokens=95 * 6)
    one, _ = run_one(batch_size=95, total_tokens=95 * 6)
    assert max_difference(one, rank0) < TOLERANCE


def _failing_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0's disk fills up at the second checkpoint; every rank reports what it raised."""
    import json

    import saes.formats.durable as durable

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    writes = {"n": 0}
    real = durable.save_file

    def full_disk(tensors, filename, metadata=None):
        writes["n"] += 1
        if writes["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    if rank == 0:
        durable.save_file = full_disk
    try:
        saes.train(sweep(), data(), config(), checkpoint_dir=Path(out) / "ckpt", progress=False)
        got = {"error": None}
    except Exception as err:
        got = {"error": type(err).__name__, "message": str(err)}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))


def test_a_failing_checkpoint_write_stops_every_rank_with_an_error(tmp_path: Path) -> None:
    import json

    mp.spawn(_failing_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["error"] == "WriteError" and "No space left on device" in r0["message"]
    assert r1["error"] == "CheckpointError" and "rank 0 could not write" in r1["message"]
    from saes.training import checkpoint

    assert checkpoint.read(tmp_path / "ckpt")[0]["step"] == 5  # the first checkpoint, intact


class Stop(Exception):
    pass


def _interrupted_worker(rank: int, world: int, port: int, out: str) -> None:
    """Both ranks stop after step 7 (the last checkpoint is step 5)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def stop(info):
        if info["step"] == 7:
            raise Stop

    try:
        torch.manual_seed(0)
        saes.train(sweep(), data(), config(), checkpoint_dir=Path(out) / "ckpt", progress=False, callback=stop)
    except Stop:
        pass
    finally:
        dist.destroy_process_group()


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path: Path) -> None:
    from saes.training import checkpoint

    mp.spawn(_interrupted_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert checkpoint.read(tmp_path / "ckpt")[0]["step"] == 5
    torch.set_num_threads(1)
    torch.manual_seed(1)  # a fresh process: its own initial weights are replaced by the checkpoint's
    resumed = sweep()
    saes.train(resumed, data(), config(), checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    one, _ = run_one()
    assert max_difference(one, flat_state(resumed)) < TOLERANCE


def test_shard_bounds_cover_the_batch_once() -> None:
    for n in (2, 7, 96, 101):
        for world in (1, 2, 3, 8):
            if n < world:
                continue
            bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_one_process_run_is_untouched_by_the_launcher_check(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.current() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(saes.ConfigError, match="torchrun"):
        distributed.current()


def test_interp_train_under_torchrun(tmp_path: Path) -> None:
    """`interp train --store` started by torchrun with two processes writes one SAE."""
    from store_util import write_store

    store = write_store(tmp_path / "store", torch.randn(2048, 16), shard_rows=512)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "interp.cli", "train", "--store", str(store), "--arch",
           "batchtopk", "--d-sae", "32", "--k", "4", "--tokens", "1024", "--batch-size", "128",
           "--checkpoint-every", "4", "--out", str(tmp_path / "sae"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"sae"') == 1  # rank 0 alone saves and reports
    sae = saes.load(tmp_path / "sae")
    assert sae.d_in == 16 and float(sae.threshold) > 0


# ------------------------------------------------------------------------ hooks on devices

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]
TEXTS = ["the cat sat on the mat and the dog ran under the tree"] * 40


def _live(devices: dict[str, str] | None) -> dict:
    from interp.activations.live import train_live
    from interp.model.tiny import tiny_model

    torch.manual_seed(0)
    model = tiny_model("gpt2")
    by_hook = {h: saes.TopKSAE(32, 64, k=4) for h in HOOKS}
    cfg = saes.TrainConfig(batch_size=64, total_tokens=64 * 5, lr=1e-3, init_rows=64)
    results = train_live(model, TEXTS, by_hook, cfg, context_length=16, progress=False, devices=devices)
    return {h: r.sae for h, r in results.items()}


def test_live_training_places_each_hook_on_its_device() -> None:
    torch.set_num_threads(1)
    plain = _live(None)
    placed = _live({HOOKS[1]: "cpu"})
    for h in HOOKS:
        for k, v in plain[h].state_dict().items():
            assert torch.equal(v, placed[h].state_dict()[k]), (h, k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_live_training_with_one_hook_on_the_gpu() -> None:
    placed = _live({HOOKS[0]: "cuda:0", HOOKS[1]: "cpu"})
    assert placed[HOOKS[0]].device.type == "cuda" and placed[HOOKS[1]].device.type == "cpu"


def test_store_hooks_trained_together_equal_each_trained_alone(tmp_path: Path) -> None:
    """`interp train --store` with two --hook (one placed by --hook-device) gives each hook
    exactly the weights saes.train gives it alone."""
    from interp.cli import main
    from interp.activations.store import ActivationStore
    from store_util import write_store_chunks

    torch.set_num_threads(1)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))
    store = write_store_chunks(tmp_path / "store", list(x.split(256)), 16, hook=hooks[0],
                               more_hooks={hooks[1]: lambda t: t.flip(1) * 2})
    args = ["train", "--store", str(store), "--hook", hooks[0], "--hook", hooks[1], "--hook-device", f"{hooks[1]}=cpu",
            "--arch", "batchtopk", "--d-sae", "32", "--k", "4", "--tokens", "768", "--batch-size", "128",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    cfg = saes.TrainConfig(batch_size=128, total_tokens=768)
    for h in hooks:
        alone = saes.BatchTopKSAE(16, 32, k=4)
        saes.train(alone, ActivationStore.open(store, hook=h), cfg, progress=False)
        together = saes.load(tmp_path / "out" / h)
        assert together.metadata["hook_name"] == h
        for k, v in alone.state_dict().items():
            assert torch.equal(v, together.state_dict()[k]), (h, k)


ACCELERATE_SCRIPT = """
import sys, torch, saes
import torch.distributed as dist
from safetensors.torch import save_file
torch.set_num_threads(1)
x = saes.synthetic.superposition(n_features=48, d=16, n_samples=1024, seed=0, mean_active=3).x
torch.manual_seed(0)
sae = saes.BatchTopKSAE(16, 64, k=4)
saes.train(sae, x, saes.TrainConfig(batch_size=96, total_tokens=96 * 8, lr=3e-3, init_rows=256, seed=1),
           progress=False)
if dist.get_rank() == 0:
    save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, sys.argv[1])
    print("world", dist.get_world_size())
"""


def test_accelerate_launch_trains_data_parallel(tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on a CPU machine) equals one process."""
    pytest.importorskip("accelerate")
    script = tmp_path / "train.py"
    script.write_text(ACCELERATE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(script),
           str(tmp_path / "rank0.safetensors")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    torch.set_num_threads(1)
    torch.manual_seed(0)
    one = saes.BatchTopKSAE(16, 64, k=4)
    saes.train(one, synthetic.superposition(n_features=48, d=16, n_samples=1024, seed=0, mean_active=3).x,
               saes.TrainConfig(batch_size=96, total_tokens=96 * 8, lr=3e-3, init_rows=256, seed=1), progress=False)
    two = load_file(str(tmp_path / "rank0.safetensors"))
    assert max(float((v - two[k]).abs().max()) for k, v in one.state_dict().items()) < TOLERANCE
