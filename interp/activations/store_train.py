"""Train SAEs on several hooks of one activation store at once, each hook on its own device.

A harvest stores many hooks side by side; :func:`train_store` trains a sweep per hook in
lockstep, one batch of every hook per round, with each hook's SAEs wherever ``devices``
puts them (one GPU per layer, say). Each hook is an ordinary :class:`saes.training.trainer.Trainer`
over its own stream (the same seeded shard order and shuffle for every hook, so row ``i``
of a round is the same token everywhere), with its own checkpoint and log, so a hook
trained here ends with exactly the weights ``saes.train`` gives it alone.

Example::

    results = train_store("runs/l3", {"blocks.3.hook_resid_post": sae_a, "blocks.3.mlp.hook_post": sae_b},
                          cfg, devices={"blocks.3.hook_resid_post": "cuda:0", "blocks.3.mlp.hook_post": "cuda:1"})
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from saes import SAE, TrainConfig, TrainResult
from saes.training.data import StoreSource
from saes.errors import SAEError
from saes.training.log import postfix, progress_bar
from saes.training.trainer import Trainer, initial_sample

from interp.errors import InterpError
from interp.activations.live import PathOrPerHook, _as_list, _check_devices, _per_hook
from interp.activations.store import ActivationStore


def train_store(
    store: str | os.PathLike | ActivationStore,
    saes_by_hook: Mapping[str, SAE | Sequence[SAE]],
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
        config: the shared :class:`saes.TrainConfig`.
        checkpoint_dir, log_dir: ``dir/<hook>`` and ``dir/<hook>.jsonl`` (or mappings).
        resume: continue those checkpoints.
        devices: hook -> device for that hook's SAEs; others use ``config.device``.

    Returns:
        hook -> :class:`saes.TrainResult` (a list for a sweep).
    """
    cfg = config or TrainConfig()
    hooks = list(saes_by_hook)
    if not hooks:
        raise InterpError("train_store needs at least one hook with its SAE(s)")
    base = store if isinstance(store, ActivationStore) else ActivationStore.open(store, hook=hooks[0])
    placed = _check_devices(devices, hooks)
    views = {h: base.select(h) for h in hooks}
    trainers: dict[str, Trainer] = {}
    streams: dict[str, Iterator[Any]] = {}
    try:
        for h in hooks:
            models = _as_list(saes_by_hook[h])
            for sae in models:
                sae.metadata.update(model_name=base.model_name, hook_name=h, context_size=base.context_length,
                                    dataset_path=str(Path(base.directory).resolve()))
            source = StoreSource(views[h], models[0].d_in, cfg.batch_size)
            trainers[h] = Trainer(
                models, replace(cfg, device=placed[h]) if h in placed else cfg, data=source.fingerprint(),
                checkpoint_dir=_per_hook(checkpoint_dir, h, ""), resume=resume,
                log_path=_per_hook(log_dir, h, ".jsonl"), log_extra={"hook": h},
            )
            stream = source.iterate(cfg.batch_size, cfg.seed, skip=trainers[h].batches)
            if trainers[h].needs_init:
                rows = min(cfg.init_rows, len(views[h]))
                pending, sample = initial_sample(stream, models[0].d_in, rows, cfg.on_nonfinite == "skip", h)
                trainers[h].initialise(sample)
                stream = chain(pending, stream)
            streams[h] = stream
    except SAEError:
        for t in trainers.values():
            t.close()
        raise

    bar = progress_bar(cfg.total_tokens * len(hooks), sum(t.tokens for t in trainers.values()), progress)
    try:
        while not all(t.done for t in trainers.values()):
            for h, t in trainers.items():
                if t.done:
                    continue
                before = t.tokens
                logged = t.step(next(streams[h]))  # store streams are endless (epochs)
                if logged and h == hooks[0]:
                    bar.set_postfix(postfix(logged), refresh=False)
                bar.update(t.tokens - before)
    except BaseException:
        for t in trainers.values():
            t.close()
        raise
    finally:
        bar.close()
    results: dict[str, TrainResult | list[TrainResult]] = {}
    for h, t in trainers.items():
        res = t.finish()
        results[h] = res[0] if isinstance(saes_by_hook[h], SAE) else res
    return results
