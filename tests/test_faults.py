"""Faults lose nothing: SIGKILL mid-training and mid-harvest, damaged files, failing writes.

Kills are real ``SIGKILL``s of child processes at steps drawn at random (the seed is
printed, and ``FAULT_SEED`` replays it); the resumed result is compared with an
uninterrupted run bit for bit (one thread, deterministic algorithms).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import saes
from interp.errors import StoreError
from interp.activations.store import MANIFEST, ActivationStore
from reliability import popen, record, run
from saes.training import checkpoint
from store_util import write_store

STEPS = 24
SEED = int(os.environ.get("FAULT_SEED", random.randrange(2**31)))

TRAIN_CHILD = """
import json, resource, signal, sys, time
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
import saes
from saes import synthetic
from safetensors.torch import save_file

ckpt, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
x = synthetic.superposition(n_features=48, d=16, n_samples=2048, seed=0, mean_active=3).x
torch.manual_seed(0)
topk = saes.TopKSAE(16, 64, k=4)
with torch.no_grad():
    topk.W_enc[:, :8] *= 1e-3
models = [topk, saes.BatchTopKSAE(16, 64, k=4), saes.MatryoshkaSAE(16, [16, 48], k=4), saes.MPSAE(16, 64, k=4)]
cfg = saes.TrainConfig(batch_size=64, total_tokens=64 * %(steps)d, lr=3e-3, dead_tokens=256, normalize_input=True,
                       init_weights=False, log_every=2, checkpoint_every=%(every)s, seed=2, init_rows=256)

def callback(info):
    print(json.dumps({"step": info["step"]}), flush=True)
    if mode == "killable":
        time.sleep(0.02)  # the parent reacts within a step or two, even on a loaded machine
    if mode == "fsize" and info["step"] == 3:
        # From here on no file may grow past 32 kB (the log stays below, a checkpoint is ~90 kB):
        # the next checkpoint write fails part-way, as on a full disk. SIGXFSZ is ignored so
        # the write returns EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))

try:
    saes.train(models, x, cfg, checkpoint_dir=ckpt, resume=True, log_path=ckpt + "/log.jsonl",
               progress=False, callback=callback)
except saes.SAEError as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err), "oserror": isinstance(err, OSError)}),
          flush=True)
    sys.exit(3)
save_file({f"{i}.{k}": v.contiguous() for i, m in enumerate(models) for k, v in m.state_dict().items()}, out)
"""


def child_script(tmp_path: Path, every: int | None = 1) -> Path:
    p = tmp_path / "train_child.py"
    p.write_text(TRAIN_CHILD % {"steps": STEPS, "every": every})
    return p


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def kill_at(script: Path, ckpt: Path, out: Path, step: int) -> int:
    """Start training, SIGKILL it once it reports ``step``; returns the last step it reported."""
    proc = popen(script, str(ckpt), str(out), "killable")
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        seen = json.loads(line)["step"]
        if seen >= step:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return seen


def test_sigkill_at_random_steps_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    print(f"FAULT_SEED={SEED}")
    script = child_script(tmp_path)
    straight = run(script, str(tmp_path / "a"), str(tmp_path / "a.safetensors"), "plain")
    assert straight.returncode == 0, straight.stderr[-2000:]

    rng = random.Random(SEED)
    # Two kills: one in the first half, one in the second (after the first resume).
    targets = [rng.randrange(2, STEPS // 2), rng.randrange(STEPS // 2 + 2, STEPS - 6)]
    ckpt = tmp_path / "b"
    last_state = -1
    kill_steps: list[int] = []
    for target in targets:
        killed_after = kill_at(script, ckpt, tmp_path / "b.safetensors", target)
        state, _ = checkpoint.read(ckpt)  # whatever the kill interrupted, a whole checkpoint is there
        assert last_state <= state["step"] and killed_after >= target
        last_state = state["step"]
        kill_steps.append(state["step"])
    resumed = run(script, str(ckpt), str(tmp_path / "b.safetensors"), "plain")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    # The metrics log reads as if the run had never stopped.
    assert (tmp_path / "a" / "log.jsonl").read_text() == (tmp_path / "b" / "log.jsonl").read_text()
    assert not list(ckpt.glob(".*.tmp"))
    record("SIGKILL during training, resumed: final weights equal an uninterrupted run (bit for bit)",
           "test_faults.py::test_sigkill_at_random_steps_then_resume_equals_uninterrupted",
           processes=4, tokens=64 * STEPS, faults=len(targets), checkpoint_steps_at_kills=kill_steps, seed=SEED,
           lost=0)


def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    """A write that fails part-way (file-size limit, as on a full disk) is a clear error."""
    script = child_script(tmp_path, every=2)
    proc = run(script, str(tmp_path / "c"), str(tmp_path / "c.safetensors"), "fsize")
    assert proc.returncode == 3, proc.stderr[-2000:]
    err = json.loads(proc.stdout.strip().splitlines()[-1])
    assert err["error"] == "WriteError" and err["oserror"]
    assert "could not write" in err["message"] and "checkpoint.safetensors" in err["message"]
    assert "previous version is intact" in err["message"] and "--resume" in err["message"]
    state, _ = checkpoint.read(tmp_path / "c")  # still the step-2 checkpoint, whole
    assert state["step"] == 2
    assert not list((tmp_path / "c").glob(".*.tmp"))  # the partial file was removed
    # And the run continues from it (that it then equals an uninterrupted run is the SIGKILL test's).
    resumed = run(script, str(tmp_path / "c"), str(tmp_path / "c.safetensors"), "plain")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert checkpoint.read(tmp_path / "c")[0]["step"] == STEPS
    record("A failing write (disk full) leaves the previous checkpoint intact, with a clear error",
           "test_faults.py::test_failing_checkpoint_write_keeps_the_previous_one",
           processes=2, tokens=64 * STEPS, faults=1, lost=0)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_unwritable_directory_is_a_clear_error(tmp_path: Path, monkeypatch, code: int) -> None:
    import saes.formats.durable as durable

    sae = saes.TopKSAE(8, 16, k=2)
    sae.save(tmp_path / "sae")
    before = {p.name: p.read_bytes() for p in (tmp_path / "sae").iterdir()}

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(durable.tempfile, "mkdtemp", refuse)
    with pytest.raises(saes.WriteError) as err:
        saes.TopKSAE(8, 16, k=2).save(tmp_path / "sae")
    assert os.strerror(code) in str(err.value) and "previous version is intact" in str(err.value)
    assert isinstance(err.value, OSError) and err.value.errno == code
    assert {p.name: p.read_bytes() for p in (tmp_path / "sae").iterdir()} == before


@contextlib.contextmanager
def read_only(directory: Path):
    """Make ``directory`` unwritable for this process: mode 555, or for root (who writes
    through modes) the immutable attribute, where the file system supports it."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        os.chmod(directory, 0o555)
        try:
            yield
        finally:
            os.chmod(directory, 0o755)
        return
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no way to make a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_read_only_directory_keeps_the_checkpoint(tmp_path: Path) -> None:
    """The checkpoint directory turns read-only mid-run: the next checkpoint fails clearly."""
    x = torch.randn(512, 8)
    cfg = saes.TrainConfig(batch_size=64, total_tokens=512, lr=1e-3, checkpoint_every=2)
    ck = tmp_path / "ck"
    saved: dict[str, bytes] = {}
    lock = contextlib.ExitStack()

    def lock_at_step_3(info) -> None:
        if info["step"] == 3:
            saved["bytes"] = (ck / "checkpoint.safetensors").read_bytes()  # the step-2 checkpoint
            lock.enter_context(read_only(ck))

    with lock, pytest.raises(saes.WriteError, match="could not write .*checkpoint.safetensors.*previous version is intact"):
        saes.train(saes.TopKSAE(8, 16, k=2), x, cfg, checkpoint_dir=ck, progress=False, callback=lock_at_step_3)
    assert (ck / "checkpoint.safetensors").read_bytes() == saved["bytes"]
    assert checkpoint.read(ck)[0]["step"] == 2
    # An SAE directory that is read-only keeps its files too.
    sae_dir = tmp_path / "sae"
    saes.TopKSAE(8, 16, k=2).save(sae_dir)
    before = {p.name: p.read_bytes() for p in sae_dir.iterdir()}
    with read_only(sae_dir), pytest.raises(saes.WriteError, match="could not write"):
        saes.TopKSAE(8, 16, k=2).save(sae_dir)
    assert {p.name: p.read_bytes() for p in sae_dir.iterdir()} == before


# ------------------------------------------------------------------------ harvest

HARVEST_CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
import interp
from interp.activations.harvest import harvest

model_dir, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = interp.load(model_dir, device="cpu")
real = model.run_with_cache
def slow(*a, **k):
    time.sleep(delay)  # room for the parent to kill us between shards and inside one
    return real(*a, **k)
model.run_with_cache = slow
words = "the a cat dog bird sat ran on under mat tree sky red blue big small and then it was".split()
import random
rng = random.Random(0)
docs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(400)]
harvest(model, docs, ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], out, context_length=16,
        batch_size=2, shard_tokens=90, max_tokens=1200, progress=False)
"""


def manifest_shards(d: Path) -> int:
    try:
        return len(json.loads((d / MANIFEST).read_text())["shards"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.parametrize("n_kills", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_during_harvest_then_resume_loses_and_duplicates_nothing(tmp_path: Path, tiny_gpt2_dir,
                                                                         n_kills: int) -> None:
    print(f"FAULT_SEED={SEED}")
    script = tmp_path / "harvest_child.py"
    script.write_text(HARVEST_CHILD)
    full = run(script, str(tiny_gpt2_dir), str(tmp_path / "full"), "0")
    assert full.returncode == 0, full.stderr[-2000:]
    n_full = manifest_shards(tmp_path / "full")
    assert n_full >= 8

    rng = random.Random(SEED)
    out = tmp_path / "killed"
    kills = []
    for _ in range(n_kills):
        target = manifest_shards(out) + rng.randint(1, 3)
        proc = popen(script, str(tiny_gpt2_dir), str(out), "0.01")
        deadline = time.time() + 120
        while manifest_shards(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))  # land anywhere: mid-forward, mid-write, mid-rename
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the harvest finished before it could be killed"
        m = json.loads((out / MANIFEST).read_text())
        assert not m["complete"]
        kills.append(len(m["shards"]))
    done = run(script, str(tiny_gpt2_dir), str(out), "0")
    assert done.returncode == 0, done.stderr[-2000:]

    a, b = ActivationStore.open(tmp_path / "full", hook="blocks.0.hook_resid_post"), ActivationStore.open(out, hook="blocks.0.hook_resid_post")
    assert len(a) == len(b) == 1200
    seq_a, pos_a = a.locate(torch.arange(len(a)))
    seq_b, pos_b = b.locate(torch.arange(len(b)))
    tokens_b = set(zip(seq_b.tolist(), pos_b.tolist()))
    assert len(tokens_b) == len(b)  # no (window, position) twice: nothing duplicated
    assert tokens_b == set(zip(seq_a.tolist(), pos_a.tolist()))  # nothing missing
    for hook in a.hooks:
        assert torch.equal(a.select(hook)[:], b.select(hook)[:])
    b.verify()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())
    record("SIGKILL during a harvest, resumed: no token duplicated or missing, store identical",
           f"test_faults.py::test_sigkill_during_harvest_then_resume_loses_and_duplicates_nothing[{n_kills}]",
           processes=2 + n_kills, tokens=len(b), faults=len(kills), shards_at_kills=kills, seed=SEED, lost=0, duplicated=0)


# ------------------------------------------------------------------------ damaged files


def _damage(path: Path, how: str, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        cut = rng.randrange(1, len(data))
        path.write_bytes(bytes(data[:cut]))
        return f"cut to {cut} of {len(data)} bytes"
    pos = rng.randrange(len(data))
    data[pos] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"bit flipped at byte {pos} of {len(data)}"


def _artefacts(tmp_path: Path) -> dict[str, tuple[Path, object]]:
    """name -> (file to damage, function that reads it back through the toolkit)."""
    x = torch.randn(256, 8)
    sae = saes.BatchTopKSAE(8, 16, k=2)
    saes.train(sae, x, saes.TrainConfig(batch_size=64, total_tokens=128, lr=1e-3), checkpoint_dir=tmp_path / "ck",
               progress=False)
    sae.save(tmp_path / "sae")
    write_store(tmp_path / "store", x, shard_rows=64)

    def read_store() -> None:
        s = ActivationStore.open(tmp_path / "store")
        torch.cat(list(s.batches(64, shuffle=False)))

    from interp.interventions.steering import Steering

    Steering("blocks.0.hook_resid_post", torch.randn(8), 4.0, "all").save(tmp_path / "vec.safetensors")
    return {
        "steering vector": (tmp_path / "vec.safetensors", lambda: Steering.load(tmp_path / "vec.safetensors")),
        "SAE weights": (tmp_path / "sae" / "sae_weights.safetensors", lambda: saes.load(tmp_path / "sae")),
        "checkpoint": (tmp_path / "ck" / "checkpoint.safetensors", lambda: checkpoint.read(tmp_path / "ck")),
        "store shard": (tmp_path / "store" / "shard_00002.safetensors", read_store),
    }


ERRORS = {"steering vector": saes.FormatError, "SAE weights": saes.FormatError, "checkpoint": saes.CheckpointError, "store shard": StoreError}


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_files_are_detected_and_named(tmp_path: Path, how: str) -> None:
    rng = random.Random(SEED)
    trials = 0
    for name, (path, read) in _artefacts(tmp_path).items():
        pristine = path.read_bytes()
        for _ in range(12):  # twelve random damages per artefact
            what = _damage(path, how, rng)
            with pytest.raises(ERRORS[name]) as err:
                read()
            assert path.name in str(err.value), (name, what, str(err.value))
            path.write_bytes(pristine)
            trials += 1
        read()  # the pristine file reads again
    record(f"A {'truncated' if how == 'truncate' else 'corrupted (one bit flipped)'} store shard, SAE file, "
           "checkpoint or steering vector is detected and named", f"test_faults.py::test_damaged_files_are_detected_and_named[{how}]",
           processes=1, faults=trials, read_as_garbage=0, seed=SEED)


def test_checksum_covers_every_tensor_byte(tmp_path: Path) -> None:
    from saes.formats.durable import tensors_digest

    t = {"a": torch.randn(4, 3), "b": torch.arange(5)}
    d = tensors_digest(t)
    assert tensors_digest({"a": t["a"].clone(), "b": t["b"].clone()}) == d
    t["a"][2, 1] += 1e-6
    assert tensors_digest(t) != d
    assert tensors_digest({"a": t["a"].reshape(3, 4), "b": t["b"]}) != tensors_digest(t)  # shape counts
    assert hashlib.sha256(b"").hexdigest() != d


def test_full_disk_during_a_harvest_is_a_clear_error_and_resumes(tmp_path: Path) -> None:
    """A shard write that fails as on a full disk (safetensors reports it as text) names the
    problem; the same harvest run again ends with the store an uninterrupted run writes."""
    import interp.activations.store as store_mod
    from interp.activations.harvest import harvest
    from interp.model.tiny import tiny_model

    model = tiny_model("gpt2")
    docs = ["the cat sat on the mat and the dog ran under the tree"] * 60
    kw = dict(context_length=16, batch_size=2, shard_tokens=60, max_tokens=400, progress=False)
    harvest(model, docs, "blocks.0.hook_resid_post", tmp_path / "full", **kw)

    real, calls = store_mod.save_file, {"n": 0}

    def filling_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*a, **k)

    store_mod.save_file = filling_disk
    try:
        with pytest.raises(StoreError, match=r"shard_00002.safetensors.*No space left on device.*run the same harvest"):
            harvest(model, docs, "blocks.0.hook_resid_post", tmp_path / "s", **kw)
    finally:
        store_mod.save_file = real
    assert not list((tmp_path / "s").glob(".*.tmp"))
    harvest(model, docs, "blocks.0.hook_resid_post", tmp_path / "s", **kw)
    def digests(d: Path) -> dict[str, str]:  # .lock records the last writer, not content
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.name != ".lock"}

    assert digests(tmp_path / "s") == digests(tmp_path / "full")


def test_every_single_bit_flip_of_a_small_file_is_detected(tmp_path: Path) -> None:
    """Exhaustive where the random test samples: each of the 8 bits of every byte of a
    steering file, the header (its checksum's own key included) as well as the data."""
    from interp.interventions.steering import Steering

    path = tmp_path / "vec.safetensors"
    Steering("blocks.0.hook_resid_post", torch.randn(4), 4.0, "all").save(path)
    pristine = path.read_bytes()
    missed = []
    for pos in range(len(pristine)):
        for bit in range(8):
            data = bytearray(pristine)
            data[pos] ^= 1 << bit
            path.write_bytes(bytes(data))
            try:
                Steering.load(path)
                missed.append((pos, bit))
            except saes.FormatError as err:
                assert path.name in str(err)
    assert not missed, f"{len(missed)} flips read as a valid file, e.g. {missed[:5]}"
