"""Train SAEs on several hooks of one activation store at once, each hook on its own device.

A harvest stores many hooks side by side; :func:`train_store` trains a sweep per hook in
lockstep, one batch of every hook per round, with each hook's SAEs wherever ``devices``
puts them (one GPU per layer, say). Each hook is an ordinary :class:`saes.training.trainer.Trainer`
over its own stream (the same seeded shard order and shuffle for every hook, so row ``i``
of a round is the same token everywhere), with its own checkpoint and log, so a hook
trained here ends with exactly the weights ``saes.train`` gives it alone. This module only
builds those streams; :func:`saes.training.runner.run` steps them.

Example::

    results = train_store("runs/l3", {"blocks.3.hook_resid_post": sae_a, "blocks.3.mlp.hook_post": sae_b},
                          cfg, devices={"blocks.3.hook_resid_post": "cuda:0", "blocks.3.mlp.hook_post": "cuda:1"})
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from saes import SAE, TrainConfig, TrainResult
from saes.training.data import PairedStoreSource, StoreSource
from saes.training.runner import Stream, run
from saes.training.trainer import check_models

from interp.errors import InterpError
from interp.activations.live import HookKey, PathOrPerHook, check_devices, hook_lane, key_hooks, lane_name
from interp.activations.store import ActivationStore


def store_origin(store: ActivationStore) -> dict[str, Any]:
    """The metadata an SAE trained on ``store`` (at its selected hook) records: model, hook,
    context length, BOS setting and the store's directory."""
    return {"model_name": store.model_name, "hook_name": store.hook, "context_size": store.context_length,
            "prepend_bos": getattr(store.manifest, "prepend_bos", None),
            "dataset_path": str(Path(store.directory).resolve())}


def train_store(
    store: str | os.PathLike | ActivationStore,
    saes_by_hook: Mapping[HookKey, SAE | Sequence[SAE]],
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: PathOrPerHook = None,
    resume: bool = False,
    log_dir: PathOrPerHook = None,
    progress: bool = True,
    devices: Mapping[str, str | torch.device] | None = None,
) -> dict[str, TrainResult | list[TrainResult]]:
    """Train ``saes_by_hook`` (hook -> an SAE or a sweep) on the hooks of one store.

    Args:
        store: the store directory (or an open store: any of its hooks).
        saes_by_hook: hook -> an SAE or a sweep; a transcoder under its ``(hook_in,
            hook_out)`` pair of stored hooks (its lane is named ``"hook_in->hook_out"``).
        config: the shared :class:`saes.TrainConfig`.
        checkpoint_dir, log_dir: ``dir/<hook>`` and ``dir/<hook>.jsonl`` (or mappings).
        resume: continue those checkpoints.
        devices: hook -> device for that hook's SAEs; others use ``config.device``.

    Returns:
        hook -> :class:`saes.TrainResult` (a list for a sweep).
    """
    cfg = config or TrainConfig()
    keys = list(saes_by_hook)
    if not keys:
        raise InterpError("train_store needs at least one hook with its SAE(s)")
    base = store if isinstance(store, ActivationStore) else ActivationStore.open(store, hook=key_hooks(keys[0])[0])
    placed = check_devices(devices, [lane_name(k) for k in keys])
    streams = []
    for key in keys:
        views = [base.select(h) for h in key_hooks(key)]
        view = views[0]
        sweep = [saes_by_hook[key]] if isinstance(saes_by_hook[key], SAE) else list(saes_by_hook[key])
        check_models(sweep)  # before its d_in is read
        origin = store_origin(view)
        if len(views) == 2:  # a transcoder: its input and target rows, from one harvest of both hooks
            if not sweep[0].is_transcoder:
                raise InterpError(f"{lane_name(key)} pairs two hooks, but its dictionary is an SAE; build it with "
                                  f"d_out={views[1].d} (a transcoder)")
            source = PairedStoreSource(view, views[1], sweep[0].d_in, sweep[0].d_out, cfg.batch_size)
            origin["hook_name_out"] = views[1].hook
        else:
            if sweep[0].is_transcoder:
                raise InterpError(f"the dictionary for {key} is a transcoder; key it by its (hook_in, hook_out) pair "
                                  "of stored hooks")
            source = StoreSource(view, sweep[0].d_in, cfg.batch_size)
        lane = hook_lane(lane_name(key), saes_by_hook[key], cfg, data=source.fingerprint(), origin=origin,
                         devices=placed, checkpoint_dir=checkpoint_dir, log_dir=log_dir)
        # Bound now: each stream keeps its own source.
        streams.append(Stream([lane], lambda start, source=source: source.iterate(cfg.batch_size, cfg.seed, skip=start),
                              sample_rows=min(cfg.init_rows, len(view))))
    return run(streams, resume=resume, progress=progress)
