"""Training checkpoints: one safetensors file, written atomically.

``<dir>/checkpoint.safetensors`` holds every tensor of the run (SAE parameters and
buffers, Adam moments and step counts, dead-latent counters, the torch RNG state) and, in
the safetensors header metadata, a JSON ``state`` with the configuration, the step, the
tokens seen, the data position and the per-SAE settings. One file means one
``os.replace``: a reader sees the old checkpoint or the new one, never a mix.
Nothing is pickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from saes.formats import schema
from saes.errors import CheckpointError, FormatError
from saes.formats.durable import atomic_save_tensors, read_tensors

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "saes-train-checkpoint"
VERSION = 2  # 2: the header carries a sha256 of the tensors and state (version 1 files still read)
READABLE = ("1", "2")

# What resuming reads from the state; checked so a damaged file fails here, by name.
STATE_FIELDS = {
    "config": schema.Field("dict"),
    "saes": schema.Field("list"),
    "data": schema.Field("dict"),
    "step": schema.Field("int", minimum=0),
    "tokens": schema.Field("int", minimum=0),
    "batches": schema.Field("int", minimum=0),
    "input_scale": schema.Field("number"),
}


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def write(directory: str | os.PathLike, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    path = checkpoint_path(directory)
    meta = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(state)}
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
    try:
        state = json.loads(meta["state"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its recorded run state is not valid JSON ({err}); the file is damaged") from None
    state = schema.check(state, STATE_FIELDS, f"{path} (run state)", CheckpointError, required=tuple(STATE_FIELDS),
                         also_known=("metrics", "done", "skipped_rows"))
    return state, tensors
