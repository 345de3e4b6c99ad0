"""Training checkpoints: one safetensors file, written atomically.

``<dir>/checkpoint.safetensors`` holds every tensor of the run (SAE parameters and
buffers, Adam moments and step counts, dead-latent counters, the torch RNG state) and, in
the safetensors header metadata, a JSON ``state`` with the configuration, the step, the
tokens seen, the data position and the per-SAE settings. One file means one
``os.replace``: a reader sees the old checkpoint or the new one, never a mix.
Nothing is pickled.

Reading checks everything resuming uses before it is used: the state's keys and the types
of their entries, and every tensor (finite; Adam moments of their parameter's shape and
dtype; step counts whole and not negative; dead-latent counters one per latent), so a
damaged or crafted checkpoint is a :class:`CheckpointError` naming the key or tensor,
never a traceback from deep inside torch or a run that carries on with NaN weights.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from saes.errors import CheckpointError, FormatError
from saes.formats import schema
from saes.formats.durable import (
    atomic_save_tensors,
    read_tensors,
    remove_stale_temporaries,
    require_finite,
)

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "saes-train-checkpoint"
VERSION = 2  # 2: the header carries a sha256 of the tensors and state (version 1 files still read)
READABLE = ("1", "2")

F = schema.Field
# What resuming reads from the state; checked so a damaged file fails here, by name.
STATE_FIELDS = {
    "config": F("dict"),
    "saes": F("list"),
    "data": F("dict"),
    "step": F("int", minimum=0),
    "tokens": F("int", minimum=0),
    "batches": F("int", minimum=0),
    "input_scale": F("number"),
}
# output_scale: a transcoder's target scale (absent from checkpoints of SAEs written before it).
OPTIONAL_FIELDS = {"metrics": F("list"), "done": F("bool"), "skipped_rows": F("int", minimum=0),
                   "output_scale": F("number")}
SAE_FIELDS = {"architecture": F("str"), "config": F("dict")}
# The data description resuming compares; other keys (a live run's source) are compared as written.
DATA_FIELDS = {"kind": F("str", optional=True), "d": F("int", optional=True, minimum=1),
               "rows": F("int", optional=True, minimum=0), "hook": F("str", optional=True),
               "hook_out": F("str", optional=True)}

_ADAM = re.compile(r"sae(\d+)\.adam\.(.+)\.(exp_avg|exp_avg_sq|max_exp_avg_sq|step)")
_SINCE_FIRED = re.compile(r"sae(\d+)\.since_fired")
_SAE_STATE = re.compile(r"sae(\d+)\.state\..+")
# Adam's own step counter dtype (float64 read too); a half-precision one cannot count past 2048.
STEP_DTYPES = (torch.float32, torch.float64)
NONFINITE_FIX = ("the run had diverged when it was written, or the file is damaged: delete the checkpoint to "
                 "start afresh (with a lower learning rate), or restore it from a copy")


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def write(directory: str | os.PathLike, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    path = checkpoint_path(directory)
    meta = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(state)}
    remove_stale_temporaries(path.parent, (CHECKPOINT_FILE,))  # left by writes killed mid-way
    atomic_save_tensors(path, tensors, metadata=meta)
    return path


def read(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(state, tensors)`` of the checkpoint in ``directory``, or None if there is none."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:
        # From version 2 on the checksum must be there (a damaged header may have lost it).
        tensors, meta = read_tensors(path, require_checksum=lambda m: m.get("version") != "1")
    except FormatError as err:
        raise CheckpointError(
            f"{err}. This is the training checkpoint: delete it to start the run afresh, or restore it from a copy"
        ) from err
    if meta.get("format") != FORMAT or "state" not in meta:
        raise CheckpointError(f"{path} is not a training checkpoint of this package")
    if meta.get("version") not in READABLE:
        raise CheckpointError(
            f"{path} has checkpoint version {meta.get('version')}, this package reads {', '.join(READABLE)}"
        )
    # The logged metrics may be inf or NaN (an FVU over constant data), which json.dumps
    # writes as the literals NaN/Infinity: accepted here, and every value resuming uses is
    # checked below.
    state = schema.parse_json(meta["state"], f"{path} (run state)", CheckpointError, allow_nan=True)
    state = check_state(state, f"{path} (run state)")
    check_tensors(state, tensors, path)
    return state, tensors


def check_state(state: Any, where: str) -> dict[str, Any]:
    """The run state, each key and nested entry of the right type (else CheckpointError)."""
    state = schema.check(state, {**STATE_FIELDS, **OPTIONAL_FIELDS}, where, CheckpointError,
                         required=tuple(STATE_FIELDS))
    for key in ("input_scale", "output_scale"):
        if key in state and not state[key] > 0:
            raise CheckpointError(
                f"{where}: {key!r} is {state[key]!r} but must be a number > 0 (the rows are multiplied by it); the "
                "file is damaged: delete the checkpoint to start afresh, or restore it from a copy"
            )
    state["saes"] = [schema.check(entry, SAE_FIELDS, f"{where} 'saes'[{i}]", CheckpointError,
                                  required=tuple(SAE_FIELDS), warn_unknown=False)
                     for i, entry in enumerate(state["saes"])]
    state["data"] = schema.check(state["data"], DATA_FIELDS, f"{where} 'data'", CheckpointError, warn_unknown=False)
    for i, entry in enumerate(state.get("metrics") or []):
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: 'metrics'[{i}] is {type(entry).__name__} but must be an object; "
                                  "the file is damaged")
    return state


def _fail(path: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: tensor {name!r} {problem}; the checkpoint is damaged or was not written by this package: delete "
        "it to start the run afresh, or restore it from a copy"
    )


def check_tensors(state: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor resuming loads: finite, and each Adam moment, step count and dead-latent
    counter consistent with the parameter it belongs to."""
    require_finite(tensors, path, CheckpointError, NONFINITE_FIX)
    n = len(state["saes"])
    for name, t in sorted(tensors.items()):
        m = _ADAM.fullmatch(name) or _SINCE_FIRED.fullmatch(name) or _SAE_STATE.fullmatch(name)
        if m is not None and int(m.group(1)) >= n:
            raise _fail(path, name, f"belongs to SAE {m.group(1)}, but the run state describes {n} SAE(s)")
        if _SAE_STATE.fullmatch(name) and not t.is_floating_point():
            raise _fail(path, name, f"has dtype {t.dtype}, but SAE parameters and buffers are floating point")
        if name == "calibration_rows" and (not t.is_floating_point() or t.ndim != 2):
            raise _fail(path, name, f"must be floating-point rows [n, d_in], found {t.dtype} {list(t.shape)}")
    for name, t in sorted(tensors.items()):  # the parameters are known good from here on
        adam = _ADAM.fullmatch(name)
        if adam is not None:
            _check_adam(path, name, t, tensors.get(f"sae{adam.group(1)}.state.{adam.group(2)}"), adam.group(3))
    for i in range(n):
        name, decoder = f"sae{i}.since_fired", tensors.get(f"sae{i}.state.W_dec")
        t = tensors.get(name)
        if t is None:
            raise _fail(path, name, "is missing")
        if t.dtype != torch.int64 or t.ndim != 1 or (decoder is not None and t.shape[0] != decoder.shape[0]):
            raise _fail(path, name, f"must be int64 [d_sae] (one count per latent), found {t.dtype} {list(t.shape)}")
        if t.numel() and int(t.min()) < 0:
            raise _fail(path, name, "holds negative counts")


def _check_adam(path: Path, name: str, t: torch.Tensor, param: torch.Tensor | None, kind: str) -> None:
    if param is None:
        raise _fail(path, name, "is Adam state of a parameter the checkpoint does not hold")
    if kind == "step":
        if t.numel() != 1 or t.dtype not in STEP_DTYPES:
            raise _fail(path, name, f"must be one float32 step count, found {t.dtype} {list(t.shape)}")
        step = float(t.flatten()[0])
        if step < 0 or step != int(step):
            raise _fail(path, name, f"is {step:g}, but an optimiser step count is a whole number >= 0")
        return
    if t.shape != param.shape or t.dtype != param.dtype:
        raise _fail(path, name, f"is {t.dtype} {list(t.shape)}, but its parameter is {param.dtype} {list(param.shape)}")
    if kind != "exp_avg" and t.numel() and bool((t < 0).any()):
        raise _fail(path, name, "holds negative values, but it is a running mean of squares")
