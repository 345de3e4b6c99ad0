"""Crafted and damaged files: each is refused with an error naming the file and what is wrong.

Non-finite weights in every format read here, checkpoints whose state or optimiser tensors
are of the wrong kind, JSON nested to exhaust the stack, sizes in cfg.json that would
allocate gigabytes, weights of another dtype than cfg.json says, a checksum requirement
switched off by deleting a field, and output paths that name something other than a
regular file (a symlink, FIFO, directory or device).
"""
from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import record
from safetensors import safe_open
from safetensors.torch import save_file

import saes
from saes.formats import durable
from saes.formats.native import WEIGHTS_MARK
from saes.snmf import SNMFResult
from saes.training import checkpoint

torch.set_num_threads(1)
D_IN, D_SAE = 8, 16


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}


def _ours(d: Path) -> Path:
    saes.TopKSAE(D_IN, D_SAE, k=2).save(d)
    return d


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    return durable.read_tensors(d / "sae_weights.safetensors")[0]


def _rewrite_ours(d: Path, tensors: dict[str, torch.Tensor], **cfg_edits) -> None:
    """Weights of our format with a valid checksum, and cfg.json naming them: only what the
    test changes is wrong."""
    digest = durable.atomic_save_tensors(d / "sae_weights.safetensors", tensors, metadata={WEIGHTS_MARK: "3"})
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["saes"]["weights_sha256"] = digest
    cfg.update(cfg_edits)
    (d / "cfg.json").write_text(json.dumps(cfg))


def _saelens(d: Path, tensors: dict[str, torch.Tensor], **cfg_edits) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "metadata": {"sae_lens_version": "6.5.0"}, **cfg_edits}
    (d / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "sae_weights.safetensors"))
    return d


def _sparsify(d: Path, w: dict[str, torch.Tensor], **cfg_edits) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"activation": "topk", "num_latents": D_SAE, "k": 2, "d_in": D_IN, **cfg_edits}
    (d / "cfg.json").write_text(json.dumps(cfg))
    tensors = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    save_file(tensors, str(d / "sae.safetensors"))
    return d


def _gemma(d: Path, w: dict[str, torch.Tensor]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in w.items()}, threshold=np.full(D_SAE, 0.1, np.float32))
    return d


def _dictionary_learning(d: Path, w: dict[str, torch.Tensor], **trainer_edits) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    state = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
             "decoder.weight": w["W_dec"].T.contiguous(), "bias": w["b_dec"]}
    torch.save(state, d / "ae.pt")
    trainer = {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE, **trainer_edits}
    (d / "config.json").write_text(json.dumps({"trainer": trainer}))
    return d


def _checkpoint(d: Path, state_edits: dict | None = None, tensor_edits: dict | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """A checkpoint as the trainer writes it (one TopK SAE, Adam after 3 steps), edited."""
    sae = saes.TopKSAE(D_IN, D_SAE, k=2)
    state = {"config": {"batch_size": 64}, "saes": [{"architecture": "topk", "config": sae.arch_config()}],
             "data": {"kind": "tensor", "d": D_IN, "rows": 256}, "metrics": [{"loss": 0.5}], "step": 3,
             "tokens": 192, "batches": 3, "input_scale": 1.0, "done": False, "skipped_rows": 0}
    tensors = {f"sae0.state.{k}": v for k, v in sae.state_dict().items()}
    tensors["sae0.since_fired"] = torch.zeros(D_SAE, dtype=torch.int64)
    for name, p in sae.named_parameters():
        tensors |= {f"sae0.adam.{name}.exp_avg": torch.zeros_like(p), f"sae0.adam.{name}.exp_avg_sq": torch.zeros_like(p),
                    f"sae0.adam.{name}.step": torch.tensor(3.0)}
    state.update(state_edits or {})
    tensors.update(tensor_edits or {})
    checkpoint.write(d, state, {k: v for k, v in tensors.items() if k not in drop})
    return d


# ------------------------------------------------------------------ non-finite weights


def _nan_at(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def test_non_finite_weights_are_refused_in_every_format(tmp_path: Path) -> None:
    w = _weights()
    d = _ours(tmp_path / "ours")
    _rewrite_ours(d, {**_read_weights(d), "W_dec": _nan_at(_read_weights(d)["W_dec"])})
    with pytest.raises(saes.FormatError, match=r"sae_weights.safetensors: tensor 'W_dec' holds NaN"):
        saes.load(d)
    with pytest.raises(saes.FormatError, match=r"tensor 'b_enc' holds inf"):
        saes.load(_saelens(tmp_path / "saelens", {**w, "b_enc": _nan_at(w["b_enc"], float("inf"))}))
    with pytest.raises(saes.FormatError, match=r"sae.safetensors: tensor 'W_enc' holds NaN"):
        saes.load(_sparsify(tmp_path / "sparsify", {**w, "W_enc": _nan_at(w["W_enc"])}))
    with pytest.raises(saes.FormatError, match=r"params.npz: tensor 'b_dec' holds -inf"):
        saes.load(_gemma(tmp_path / "gemma", {**w, "b_dec": _nan_at(w["b_dec"], -float("inf"))}))
    with pytest.raises(saes.FormatError, match=r"ae.pt: tensor 'W_dec' holds NaN"):
        saes.load(_dictionary_learning(tmp_path / "dl", {**w, "W_dec": _nan_at(w["W_dec"])}))
    SNMFResult(_nan_at(torch.rand(2, 4)), torch.rand(3, 2), [1.0], 0).save(tmp_path / "snmf")
    with pytest.raises(saes.FormatError, match=r"snmf.safetensors: tensor 'features' holds NaN"):
        SNMFResult.load(tmp_path / "snmf")


def test_an_sae_with_non_finite_weights_is_not_saved(tmp_path: Path) -> None:
    sae = saes.TopKSAE(D_IN, D_SAE, k=2)
    with torch.no_grad():
        sae.W_enc[0, 0] = float("nan")
    with pytest.raises(saes.FormatError, match="'W_enc' of the SAE holds NaN"):
        sae.save(tmp_path)
    assert not (tmp_path / "cfg.json").exists()


def test_a_checkpoint_with_non_finite_tensors_is_refused(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "w", tensor_edits={"sae0.state.W_dec": _nan_at(torch.randn(D_SAE, D_IN))})
    with pytest.raises(saes.CheckpointError, match=r"checkpoint.safetensors: tensor 'sae0.state.W_dec' holds NaN"):
        checkpoint.read(tmp_path / "w")
    _checkpoint(tmp_path / "m", tensor_edits={"sae0.adam.b_dec.exp_avg": _nan_at(torch.zeros(D_IN), float("inf"))})
    with pytest.raises(saes.CheckpointError, match=r"'sae0.adam.b_dec.exp_avg' holds inf"):
        checkpoint.read(tmp_path / "m")


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf")])
def test_checkpoint_input_scale_must_be_finite_and_positive(tmp_path: Path, scale: float) -> None:
    _checkpoint(tmp_path, {"input_scale": scale})
    with pytest.raises(saes.CheckpointError, match="'input_scale'"):
        checkpoint.read(tmp_path)


# ------------------------------------------------------------------ checkpoint state and tensors


@pytest.mark.parametrize("edits,where", [
    ({"saes": [1]}, r"'saes'\[0\]"),
    ({"saes": [{"architecture": "topk"}]}, r"'saes'\[0\] lacks 'config'"),
    ({"saes": [{"architecture": 3, "config": {}}]}, r"'architecture'"),
    ({"saes": [{"architecture": "topk", "config": [1]}]}, r"'config'"),
    ({"data": {"kind": "tensor", "d": "8", "rows": 256}}, r"'data'.*'d'"),
    ({"data": {"kind": ["tensor"], "d": 8, "rows": 256}}, r"'data'.*'kind'"),
    ({"metrics": [3]}, r"'metrics'\[0\]"),
    ({"done": "no"}, r"'done'"),
    ({"skipped_rows": -1}, r"'skipped_rows'"),
], ids=["sae_entry_not_object", "sae_entry_no_config", "architecture_int", "config_list", "data_d_str",
        "data_kind_list", "metrics_entry", "done_str", "skipped_negative"])
def test_checkpoint_state_entries_are_type_checked(tmp_path: Path, edits: dict, where: str) -> None:
    _checkpoint(tmp_path, edits)
    with pytest.raises(saes.CheckpointError, match=where):
        checkpoint.read(tmp_path)


@pytest.mark.parametrize("edits,drop,name", [
    ({"sae0.adam.W_dec.exp_avg": torch.zeros(D_SAE, D_IN, dtype=torch.float16)}, (), "sae0.adam.W_dec.exp_avg"),
    ({"sae0.adam.W_dec.exp_avg_sq": torch.zeros(D_IN, D_SAE)}, (), "sae0.adam.W_dec.exp_avg_sq"),
    ({"sae0.adam.b_enc.step": torch.tensor(-2.0)}, (), "sae0.adam.b_enc.step"),
    ({"sae0.adam.b_enc.step": torch.tensor(2.5)}, (), "sae0.adam.b_enc.step"),
    ({"sae0.adam.b_enc.step": torch.tensor(3.0, dtype=torch.float16)}, (), "sae0.adam.b_enc.step"),
    ({"sae0.adam.b_enc.step": torch.tensor([3.0, 3.0])}, (), "sae0.adam.b_enc.step"),
    ({"sae0.adam.b_dec.exp_avg_sq": -torch.ones(D_IN)}, (), "sae0.adam.b_dec.exp_avg_sq"),
    ({"sae0.adam.W_gate.exp_avg": torch.zeros(3)}, (), "sae0.adam.W_gate.exp_avg"),
    ({"sae1.since_fired": torch.zeros(D_SAE, dtype=torch.int64)}, (), "sae1.since_fired"),
    ({"sae0.since_fired": torch.zeros(D_SAE)}, (), "sae0.since_fired"),
    ({"sae0.since_fired": torch.zeros(D_SAE + 1, dtype=torch.int64)}, (), "sae0.since_fired"),
    ({}, ("sae0.since_fired",), "sae0.since_fired"),
    ({"sae0.state.W_dec": torch.zeros(D_SAE, D_IN, dtype=torch.int64)}, (), "sae0.state.W_dec"),
], ids=["moment_float16", "moment_shape", "step_negative", "step_fraction", "step_float16", "step_shape",
        "sq_negative", "unknown_parameter", "sae_not_in_state", "since_fired_float", "since_fired_length",
        "since_fired_missing", "parameter_int"])
def test_checkpoint_tensors_are_checked_against_their_parameters(tmp_path: Path, edits, drop, name) -> None:
    _checkpoint(tmp_path, tensor_edits=edits, drop=drop)
    with pytest.raises(saes.CheckpointError, match=re.escape(repr(name))):
        checkpoint.read(tmp_path)


def test_a_damaged_checkpoint_stops_resume_with_the_error_not_a_traceback(tmp_path: Path) -> None:
    x = torch.randn(128, D_IN)
    _checkpoint(tmp_path, {"saes": ["topk"]})
    with pytest.raises(saes.CheckpointError, match=r"'saes'\[0\]"):
        saes.train(saes.TopKSAE(D_IN, D_SAE, k=2), x, saes.TrainConfig(batch_size=64, total_tokens=256),
                   checkpoint_dir=tmp_path, resume=True, progress=False)


# ------------------------------------------------------------------ JSON


DEEP = "[" * 5000 + "]" * 5000


def test_deeply_nested_json_is_a_format_error_not_a_recursion_error(tmp_path: Path) -> None:
    d = _ours(tmp_path / "ours")
    (d / "cfg.json").write_text(DEEP)
    with pytest.raises(saes.FormatError, match="cfg.json nests deeper"):
        saes.load(d)
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "metadata": {"notes": json.loads("[[1]]")}}
    text = json.dumps(cfg).replace("[[1]]", DEEP)
    d = _saelens(tmp_path / "saelens", _weights())
    (d / "cfg.json").write_text(text)
    with pytest.raises(saes.FormatError, match="cfg.json nests deeper"):
        saes.load(d)
    d = _dictionary_learning(tmp_path / "dl", _weights())
    (d / "config.json").write_text('{"trainer": ' + DEEP + "}")
    with pytest.raises(saes.FormatError, match="config.json nests deeper"):
        saes.load(d)
    SNMFResult(torch.rand(2, 4), torch.rand(3, 2), [1.0], 0).save(tmp_path / "snmf")
    (tmp_path / "snmf" / "snmf.json").write_text(DEEP)
    with pytest.raises(saes.FormatError, match="snmf.json nests deeper"):
        SNMFResult.load(tmp_path / "snmf")
    _checkpoint(tmp_path / "ck")
    tensors, meta = durable.read_tensors(checkpoint.checkpoint_path(tmp_path / "ck"))
    durable.atomic_save_tensors(checkpoint.checkpoint_path(tmp_path / "ck"), tensors,
                                {**meta, "state": '{"config": ' + DEEP + "}"})
    with pytest.raises(saes.CheckpointError, match="run state.*nests deeper"):
        checkpoint.read(tmp_path / "ck")


# ------------------------------------------------------------------ sizes taken on trust


def _peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> bool:
    """Reset this process's peak resident size (Linux); whether that was possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


CLAIM = 4_000_000


def _claim_ours(d: Path) -> Path:
    _ours(d)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["d_sae"] = cfg["saes"]["config"]["d_sae"] = CLAIM
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("make", [
    _claim_ours,
    lambda d: _saelens(d, _weights(), d_sae=CLAIM),
    lambda d: _sparsify(d, _weights(), num_latents=CLAIM),
    lambda d: _dictionary_learning(d, _weights(), dict_size=CLAIM),
], ids=["ours", "saelens", "sparsify", "dictionary_learning"])
def test_sizes_claimed_by_the_config_are_checked_before_allocating(tmp_path: Path, make, request) -> None:
    """d_sae = 4,000,000 over weights of 16 latents: refused at once, with both shapes, and
    nothing of the claimed size allocated (it would be 128 MiB per matrix here)."""
    d = make(tmp_path / "sae")
    measured = _reset_peak()
    before, start = _peak_kib(), time.monotonic()
    with pytest.raises(saes.FormatError) as err:
        saes.load(d)
    elapsed, rise_mib = time.monotonic() - start, (_peak_kib() - before) / 1024
    assert f"[{CLAIM}, {D_IN}]" in str(err.value) and f"[{D_SAE}, {D_IN}]" in str(err.value), str(err.value)
    assert elapsed < 10
    if measured:
        assert rise_mib < 100, f"peak memory rose {rise_mib:.0f} MiB while refusing the file"
    record("A cfg.json claiming d_sae=4,000,000 over weights of 16 latents is refused before allocating",
           f"test_security_files.py::test_sizes_claimed_by_the_config_are_checked_before_allocating[{request.node.callspec.id}]",
           processes=1, faults=1, allocated_for_claim=0, seconds=round(elapsed, 3),
           peak_rise_mib=round(rise_mib, 1) if measured else None)


# ------------------------------------------------------------------ dtypes and the checksum requirement


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_our_weights_in_another_dtype_than_cfg_json_says_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    d = _ours(tmp_path)
    tensors = _read_weights(d)
    _rewrite_ours(d, {**tensors, "W_dec": tensors["W_dec"].to(dtype)})
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(saes.FormatError, match=rf"tensor 'W_dec' .*{name}.*float32"):
        saes.load(d)


def test_foreign_weights_must_be_floating_point_and_a_float_mismatch_is_warned(tmp_path: Path) -> None:
    w = _weights()
    with pytest.raises(saes.FormatError, match=r"tensor 'W_dec' has dtype int64"):
        saes.load(_saelens(tmp_path / "int", {**w, "W_dec": w["W_dec"].to(torch.int64)}))
    with pytest.raises(saes.FormatError, match=r"tensor 'W_enc' has dtype bool"):
        saes.load(_sparsify(tmp_path / "bool", {**w, "W_enc": w["W_enc"] > 0}))
    with pytest.raises(saes.FormatError, match=r"tensor 'W_dec' has dtype int64"):
        saes.load(_dictionary_learning(tmp_path / "dl", {**w, "W_dec": w["W_dec"].to(torch.int64)}))
    # SAELens itself casts to the dtype its cfg.json gives: loaded, with a warning naming both.
    with pytest.warns(UserWarning, match=r"'W_enc' is stored as float16 but cfg.json says dtype float32"):
        sae = saes.load(_saelens(tmp_path / "half", {**w, "W_enc": w["W_enc"].half()}))
    assert sae.W_enc.dtype == torch.float32


def test_deleting_format_version_does_not_switch_the_checksum_off(tmp_path: Path) -> None:
    d = _ours(tmp_path / "ours")
    cfg = json.loads((d / "cfg.json").read_text())
    del cfg["saes"]["format_version"]
    (d / "cfg.json").write_text(json.dumps(cfg))
    assert isinstance(saes.load(d), saes.TopKSAE)  # a whole file still loads
    # Checksum (and our mark) gone from the header too: the cfg.json is ours, so it is damage.
    save_file(_read_weights(d), str(d / "sae_weights.safetensors"))
    with pytest.raises(saes.FormatError, match="checksum"):
        saes.load(d)
    # Our mark left in the header without its checksum, under a cfg.json without our block.
    d2 = _saelens(tmp_path / "marked", _weights())
    save_file(_weights(), str(d2 / "sae_weights.safetensors"), metadata={WEIGHTS_MARK: "3"})
    with pytest.raises(saes.FormatError, match="checksum"):
        saes.load(d2)
    # A genuine SAELens file (no block, no checksum) loads.
    assert isinstance(saes.load(_saelens(tmp_path / "saelens", _weights())), saes.ReLUSAE)
    with safe_open(str(tmp_path / "saelens" / "sae_weights.safetensors"), "pt") as f:
        assert durable.CHECKSUM_KEY not in (f.metadata() or {})


# ------------------------------------------------------------------ output paths


def _kinds(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a special file inside tmp_path, the words the error uses for it)."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    made = {"symlink": (tmp_path / "link", "a symbolic link"), "fifo": (tmp_path / "fifo", "a named pipe"),
            "directory": (tmp_path / "dir", "a directory")}
    os.symlink(target, made["symlink"][0])
    os.mkfifo(made["fifo"][0])
    made["directory"][0].mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:  # the device /dev/null is, made here (never touching the system's)
            os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            made["device"] = (tmp_path / "null", "a character device")
        except OSError:
            pass
    return made


def _snapshot(path: Path) -> tuple:
    st = os.lstat(path)
    return (stat.S_IFMT(st.st_mode), st.st_ino, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)


def test_writers_refuse_to_replace_anything_but_a_regular_file(tmp_path: Path) -> None:
    kinds = _kinds(tmp_path)
    for kind, (path, words) in kinds.items():
        before = _snapshot(path)
        for write in (lambda p: durable.atomic_write_text(p, "x"),
                      lambda p: durable.atomic_save_tensors(p, {"a": torch.ones(2)})):
            with pytest.raises(saes.WriteError, match=rf"{re.escape(str(path))}: it is {words}") as err:
                write(path)
            assert "not a regular file" in str(err.value), kind
            assert _snapshot(path) == before, f"the {kind} was replaced"
    assert (tmp_path / "elsewhere.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    record("Writers refuse to replace a symlink, FIFO, directory or device node at the output path",
           "test_security_files.py::test_writers_refuse_to_replace_anything_but_a_regular_file",
           processes=1, faults=2 * len(kinds), kinds=sorted(kinds), replaced=0)


def test_an_sae_save_onto_a_special_file_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "sae"
    d.mkdir()
    os.mkfifo(d / "cfg.json")
    with pytest.raises(saes.WriteError, match="cfg.json: it is a named pipe"):
        saes.TopKSAE(D_IN, D_SAE, k=2).save(d)
    assert sorted(p.name for p in d.iterdir()) == ["cfg.json"]  # no weights written before the refusal
    assert stat.S_ISFIFO(os.lstat(d / "cfg.json").st_mode)
    # The SAE's directory itself a FIFO (as `--out /dev/null` names a device): refused, left alone.
    os.mkfifo(tmp_path / "out")
    with pytest.raises(saes.WriteError, match="out: it is a named pipe.*not a directory"):
        saes.TopKSAE(D_IN, D_SAE, k=2).save(tmp_path / "out")
    with pytest.raises(saes.WriteError, match="not a directory"):
        SNMFResult(torch.rand(2, 4), torch.rand(3, 2), [1.0], 0).save(tmp_path / "out")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out").st_mode)
    os.symlink(d, tmp_path / "linked")  # a link to a directory is a directory: saved through it
    saes.TopKSAE(D_IN, D_SAE, k=2).save(tmp_path / "linked" / "inner")
    assert saes.load(d / "inner").k == 2
    os.mkfifo(tmp_path / "ck")
    with pytest.raises(saes.WriteError, match="not a regular file"):
        durable.publish(_tmp_file(tmp_path), tmp_path / "ck")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "ck").st_mode)


def _tmp_file(tmp_path: Path) -> Path:
    p = tmp_path / ".staged"
    p.write_text("x")
    return p
