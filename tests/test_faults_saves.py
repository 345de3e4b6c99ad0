"""Saves killed or interrupted part-way: the loader sees a whole save or refuses clearly.

An SAE directory is two files (weights, then ``cfg.json``), an SNMF result two more; a save
killed between them must not load as a mix of two saves, and the temporaries a killed
writer leaves are removed by the next save, unless a live writer still holds them.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from reliability import record

import saes
from saes.formats import durable
from saes.snmf import SNMFResult
from saes.training import checkpoint

torch.set_num_threads(1)
SEED = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(2**31)))
TEMPORARY = re.compile(r"\..*\.tmp")
INTERRUPTED = "different saves"


def _sae(k: int) -> saes.TopKSAE:
    """An SAE whose weights say which save they come from: b_dec[0] = k (cfg.json holds k and the hook)."""
    sae = saes.TopKSAE(8, 16, k=k, metadata={"hook_name": f"blocks.{k}.hook_resid_post"})
    with torch.no_grad():
        sae.b_dec.fill_(float(k))
    return sae


def _snmf(v: int) -> SNMFResult:
    """An SNMF result whose tensors and snmf.json both carry ``v``."""
    return SNMFResult(torch.full((2, 4), float(v)), torch.full((3, 2), float(v)), [1.0], 0, {"marker": v})


def _check_sae(directory: Path) -> str:
    """'loaded' (weights and cfg.json of one save) or 'refused' (the clear error); anything else fails."""
    try:
        sae = saes.load(directory)
    except saes.FormatError as err:
        assert INTERRUPTED in str(err) and "save the SAE again" in str(err), str(err)
        return "refused"
    assert isinstance(sae, saes.TopKSAE)
    assert float(sae.b_dec.detach()[0]) == sae.k, "weights and cfg.json of different saves loaded as one SAE"
    assert sae.metadata["hook_name"] == f"blocks.{sae.k}.hook_resid_post"
    return "loaded"


def _check_snmf(directory: Path) -> str:
    try:
        result = SNMFResult.load(directory)
    except saes.FormatError as err:
        assert INTERRUPTED in str(err), str(err)
        return "refused"
    assert float(result.features[0, 0]) == result.config["marker"], "an SNMF result mixed from two saves loaded"
    return "loaded"


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TEMPORARY.fullmatch(p.name))


def test_sigkill_during_saves_never_loads_a_mixed_directory(tmp_path: Path) -> None:
    """A process saving over and over is SIGKILLed at random moments: after each kill the SAE
    and SNMF directories load as one whole save or are refused with the clear error, and the
    next save leaves no temporary behind (nor touches the directory's other files)."""
    print(f"FAULT_SEED={SEED}")
    rng = random.Random(SEED)
    sae_dir, snmf_dir = tmp_path / "sae", tmp_path / "snmf"
    models, results = [_sae(k) for k in (2, 3, 4, 5)], [_snmf(v) for v in (1, 2, 3)]
    models[0].save(sae_dir)
    results[0].save(snmf_dir)
    # A running writer holds .lock in output directories; notes stand for the user's files.
    (sae_dir / "notes.txt").write_text("mine")
    lock_fd = os.open(sae_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    outcomes = {"loaded": 0, "refused": 0}
    left_by_kills = 0
    kills = int(os.environ.get("SAVE_KILLS", "10"))  # more for a longer hunt
    try:
        for _ in range(kills):
            pid = os.fork()
            if pid == 0:  # the saving process: only tiny tensors, no thread pool needed
                try:
                    for i in range(10**6):
                        models[i % len(models)].save(sae_dir)
                        results[i % len(results)].save(snmf_dir)
                finally:
                    os._exit(0)
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            left_by_kills += len(_temporaries(sae_dir)) + len(_temporaries(snmf_dir))
            outcomes[_check_sae(sae_dir)] += 1
            outcomes[_check_snmf(snmf_dir)] += 1
        models[1].save(sae_dir)  # the next save
        results[1].save(snmf_dir)
    finally:
        os.close(lock_fd)
    assert _temporaries(sae_dir) == [] and _temporaries(snmf_dir) == []
    assert sorted(p.name for p in sae_dir.iterdir()) == [".lock", "cfg.json", "notes.txt", "sae_weights.safetensors"]
    assert (sae_dir / "notes.txt").read_text() == "mine"
    assert _check_sae(sae_dir) == "loaded" and saes.load(sae_dir).k == 3
    assert _check_snmf(snmf_dir) == "loaded"
    record("SIGKILL during SAE and SNMF saves: each directory loads as one whole save or is refused; no temporary "
           "survives the next save", "test_faults_saves.py::test_sigkill_during_saves_never_loads_a_mixed_directory",
           processes=kills + 1, faults=kills, mixed_loaded=0, refused=outcomes["refused"], loaded=outcomes["loaded"],
           temporaries_left_by_kills=left_by_kills, temporaries_after_next_save=0, seed=SEED)


def test_a_save_interrupted_between_its_files_is_refused_clearly(tmp_path: Path, monkeypatch) -> None:
    """The weights of a new save beside the cfg.json of the previous one (k differs)."""
    from saes.formats import native

    _sae(2).save(tmp_path)

    def interrupted(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(native, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sae(4).save(tmp_path)
    with pytest.raises(saes.FormatError, match="weights and cfg.json come from different saves.*interrupted"):
        saes.load(tmp_path)
    monkeypatch.undo()
    _sae(4).save(tmp_path)  # saving again mends it
    assert saes.load(tmp_path).k == 4
    # A first save interrupted the same way: weights, no cfg.json.
    monkeypatch.setattr(native, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sae(3).save(tmp_path / "first")
    with pytest.raises(saes.FormatError, match="no cfg.json.*different saves"):
        saes.load(tmp_path / "first")


def test_weights_copied_from_another_save_are_refused(tmp_path: Path) -> None:
    _sae(2).save(tmp_path / "a")
    _sae(5).save(tmp_path / "b")
    (tmp_path / "a" / "sae_weights.safetensors").write_bytes((tmp_path / "b" / "sae_weights.safetensors").read_bytes())
    with pytest.raises(saes.FormatError, match="different saves"):
        saes.load(tmp_path / "a")
    # A cfg.json of an older save, which named no weights, beside new weights: refused too.
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    del cfg["saes"]["weights_sha256"]
    (tmp_path / "b" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saes.FormatError, match="different saves"):
        saes.load(tmp_path / "b")


def test_snmf_save_interrupted_between_its_files_is_refused(tmp_path: Path, monkeypatch) -> None:
    import saes.snmf as snmf_mod

    _snmf(1).save(tmp_path)
    monkeypatch.setattr(snmf_mod, "atomic_write_text", lambda path, text: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _snmf(2).save(tmp_path)
    with pytest.raises(saes.FormatError, match="different saves"):
        SNMFResult.load(tmp_path)


def test_a_live_writers_temporary_is_left_alone_and_a_dead_ones_removed(tmp_path: Path) -> None:
    """Temporaries are removed only when no live writer holds them (flock), and only names of
    the writer's own pattern: a concurrent save into the same directory is not broken."""
    _sae(2).save(tmp_path)
    live, held = durable._temporary(tmp_path / "sae_weights.safetensors", directory=True)  # a writer mid-write
    (live / "sae_weights.safetensors").write_bytes(b"partial")
    live_file, held_file = durable._temporary(tmp_path / "cfg.json")  # a text writer mid-write
    Path(live_file).write_text("{")
    dead = tmp_path / ".cfg.json.abcd1234.tmp"  # a killed writer's (as the previous version left files)
    dead.write_text("{")
    others = [tmp_path / ".cfg.json.tmp", tmp_path / ".other.abcd1234.tmp", tmp_path / "x.abcd1234.tmp"]
    for p in others:
        p.write_text("not ours")
    try:
        _sae(3).save(tmp_path)
        assert live.is_dir() and (live / "sae_weights.safetensors").read_bytes() == b"partial"
        assert live_file.read_text() == "{"
        assert not dead.exists()
        assert all(p.exists() for p in others)
    finally:
        durable._release(live, held)
        os.close(held_file)  # its writer dies: the file stays, unheld
    # Once their writers are gone, the next save removes them.
    live.mkdir()
    _sae(4).save(tmp_path)
    assert not live.exists() and not live_file.exists() and saes.load(tmp_path).k == 4


def test_a_checkpoint_write_removes_temporaries_of_killed_writes(tmp_path: Path) -> None:
    sae = saes.TopKSAE(8, 16, k=2)
    state = {"config": {}, "saes": [{"architecture": "topk", "config": sae.arch_config()}],
             "data": {"kind": "tensor", "d": 8, "rows": 128}, "step": 0, "tokens": 0, "batches": 0, "input_scale": 1.0}
    tensors = {f"sae0.state.{k}": v for k, v in sae.state_dict().items()}
    tensors["sae0.since_fired"] = torch.zeros(16, dtype=torch.int64)
    stale = tmp_path / ".checkpoint.safetensors.k1ll3d00.tmp"
    stale.mkdir(parents=True)
    (stale / "checkpoint.safetensors").write_bytes(b"partial")
    checkpoint.write(tmp_path, state, tensors)
    assert not stale.exists() and checkpoint.read(tmp_path)[0]["step"] == 0
    assert _temporaries(tmp_path) == []
