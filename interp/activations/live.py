"""Live SAE training: activations straight from a model's forward pass, no store on disk.

:func:`activation_batches` runs the model over packed windows of a dataset, gathers the
activations of one or more hooks from each forward pass (real tokens only, BOS excluded by
default, exactly like the harvest), mixes them in a bounded shuffle buffer and yields
``{hook: [batch, d]}`` batches whose rows are the same tokens for every hook.

:func:`train_live` feeds those batches to one :class:`saes.training.trainer.Trainer` per hook, all in
lockstep: one forward pass trains every hook's SAEs. Each hook gets its own checkpoint and
JSONL log; a resumed run replays the stream from its start (re-running the model for the
batches already trained on, which keeps the shuffle buffer, and so the weights, identical to
an uninterrupted run).

>>> import saes
>>> from interp.activations.live import train_live
>>> from interp.model.tiny import tiny_model
>>> model = tiny_model("gpt2")
>>> texts = ["the cat sat on the mat and the dog ran under the tree"] * 80
>>> hooks = {"blocks.0.hook_resid_post": saes.TopKSAE(32, 64, k=4),
...          "blocks.1.hook_mlp_out": saes.TopKSAE(32, 64, k=4)}
>>> cfg = saes.TrainConfig(batch_size=64, total_tokens=640, lr=1e-3)
>>> results = train_live(model, texts, hooks, cfg, context_length=16, progress=False)
>>> results["blocks.1.hook_mlp_out"].tokens
640
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from saes import SAE, TrainConfig, TrainResult
from saes.errors import SAEError
from saes.training.log import postfix, progress_bar
from saes.training.trainer import Trainer

from interp.activations.tokens import describe_source
from interp.errors import InterpError, ShapeError
from interp.evaluation.splice import keep_mask, token_batches


@dataclass
class LiveConfig:
    """How activations are produced for live training.

    Attributes:
        context_length: tokens per window.
        model_batch_size: windows per forward pass.
        buffer_tokens: rows per hook held in the shuffle buffer (memory bound: about
            ``buffer_tokens * sum(d) * 4`` bytes). About half is handed out each time it
            fills, the rest stays to mix with later windows.
        exclude_bos: skip the BOS position of each window (as the harvest does).
        prepend_bos: BOS at the start of every window; default when the model has one.
        text_field: field of .jsonl records / dataset rows holding the text.
    """

    context_length: int = 128
    model_batch_size: int = 8
    buffer_tokens: int = 1 << 16
    exclude_bos: bool = True
    prepend_bos: bool | None = None
    text_field: str = "text"


def _hook_rows(model: Any, batch: Any, hooks: Sequence[str], exclude_bos: bool) -> dict[str, torch.Tensor]:
    """One forward pass: per hook the kept rows ``[rows, d]`` as float32 on the CPU."""
    device = model.device
    mask = batch.attention_mask.to(device)  # always passed: HF warns about unmasked padding otherwise
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.tokens.to(device), list(hooks), attention_mask=mask, return_logits=False)
    keep = keep_mask(batch, exclude_bos).to(device)
    return {h: cache[h].reshape(*keep.shape, -1)[keep].float().cpu() for h in hooks}


def activation_batches(
    model: Any,
    data: Any,
    hooks: str | Sequence[str],
    batch_size: int,
    *,
    seed: int = 0,
    config: LiveConfig | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled ``{hook: [batch_size, d]}`` activation batches from one pass over ``data``.

    Rows are aligned across hooks (row i is the same token everywhere). The order depends
    only on ``data``, ``seed`` and the config, so the stream can be replayed exactly. The
    final partial batch is dropped.
    """
    cfg = config or LiveConfig()
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    model.check_hooks(hooks)
    if batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    target = max(cfg.buffer_tokens, 2 * batch_size)
    pool: dict[str, torch.Tensor] = {}
    windows = token_batches(model, data, cfg.model_batch_size, context_length=cfg.context_length,
                            prepend_bos=cfg.prepend_bos, text_field=cfg.text_field)

    def emit(n_out: int) -> Iterator[dict[str, torch.Tensor]]:
        nonlocal pool
        rows = next(iter(pool.values())).shape[0]
        perm = torch.randperm(rows, generator=gen)
        pool = {h: t[perm] for h, t in pool.items()}
        for a in range(0, n_out, batch_size):
            yield {h: t[a : a + batch_size] for h, t in pool.items()}
        pool = {h: t[n_out:].clone() for h, t in pool.items()}

    for batch in windows:
        rows = _hook_rows(model, batch, hooks, cfg.exclude_bos)
        pool = rows if not pool else {h: torch.cat([pool[h], rows[h]]) for h in hooks}
        n = next(iter(pool.values())).shape[0]
        if n >= target:
            # Hand out about half the buffer; the rest mixes with the windows to come.
            yield from emit((n - target // 2) // batch_size * batch_size)
    if pool:
        n = next(iter(pool.values())).shape[0]
        yield from emit(n // batch_size * batch_size)


def _as_list(x: SAE | Sequence[SAE]) -> list[SAE]:
    return [x] if isinstance(x, SAE) else list(x)


def _check_devices(devices: Mapping[str, str | torch.device] | None, hooks: list[str]) -> dict[str, str]:
    """``devices`` as hook -> device name, every hook trained and every device usable."""
    out: dict[str, str] = {}
    for hook, device in (devices or {}).items():
        if hook not in hooks:
            raise InterpError(f"devices names hook {hook!r}, which is not trained here; trained hooks: {hooks}")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise InterpError(f"devices[{hook!r}]={device!r} is not a device name (e.g. 'cpu', 'cuda:1'): {err}") from None
        if dev.type == "cuda":
            n = torch.cuda.device_count()
            if dev.index is not None and dev.index >= n or n == 0:
                raise InterpError(f"devices[{hook!r}]={device!r}: this machine has {n} CUDA device(s)")
        out[hook] = str(dev)
    return out


def hook_dir_name(hook: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in hook)


PathOrPerHook = str | os.PathLike | Mapping[str, str | os.PathLike] | None


def _per_hook(where: PathOrPerHook, hook: str, suffix: str) -> Path | None:
    """``where/<hook><suffix>``, or the exact path a mapping gives for ``hook``."""
    if where is None:
        return None
    if isinstance(where, Mapping):
        return Path(where[hook])
    return Path(where) / f"{hook_dir_name(hook)}{suffix}"


def train_live(
    model: Any,
    data: Any,
    saes_by_hook: Mapping[str, SAE | Sequence[SAE]],
    config: TrainConfig | None = None,
    *,
    context_length: int | None = None,
    live: LiveConfig | None = None,
    checkpoint_dir: PathOrPerHook = None,
    resume: bool = False,
    log_dir: PathOrPerHook = None,
    progress: bool = True,
    devices: Mapping[str, str | torch.device] | None = None,
) -> dict[str, TrainResult | list[TrainResult]]:
    """Train SAEs on several hooks of ``model`` at once, from one forward pass per batch.

    Args:
        model: a HookedModel.
        data: a .txt/.jsonl path, a list of strings, token ids or a dataset (as the harvest).
        saes_by_hook: hook name -> an SAE or a sweep of SAEs for that hook.
        config: the :class:`saes.TrainConfig` shared by every hook.
        context_length: shorthand for ``live.context_length``.
        live: how activations are produced (:class:`LiveConfig`).
        checkpoint_dir: checkpoints go to ``checkpoint_dir/<hook>/`` (or give a mapping
            hook -> directory).
        resume: continue those checkpoints.
        log_dir: JSONL metrics go to ``log_dir/<hook>.jsonl`` (or a mapping hook -> file).
        progress: one tqdm bar for the run.
        devices: hook -> device for that hook's SAEs (e.g. one GPU per layer); hooks not
            named use ``config.device``. Activations leave the model on the CPU and each
            hook's batch goes to its own device, so the model may sit elsewhere too.

    Returns:
        hook -> :class:`saes.TrainResult` (or a list of them for a sweep). Each SAE's
        ``metadata`` records the model, hook, context length and BOS setting.
    """
    cfg = config or TrainConfig()
    lc = live or LiveConfig()
    if context_length is not None:
        lc = LiveConfig(**{**lc.__dict__, "context_length": context_length})
    hooks = list(saes_by_hook)
    if not hooks:
        raise InterpError("train_live needs at least one hook with its SAE(s)")
    model.check_hooks(hooks)
    placed = _check_devices(devices, hooks)
    source = describe_source(data, lc.text_field)
    prepend = (model.bos_token_id is not None) if lc.prepend_bos is None else lc.prepend_bos
    trainers: dict[str, Trainer] = {}
    try:
        for hook in hooks:
            shape = tuple(int(s) for s in model.hook_shape(hook))
            d = math.prod(shape)
            for sae in _as_list(saes_by_hook[hook]):
                if sae.d_in != d:
                    raise ShapeError(
                        f"an SAE for {hook} has d_in={sae.d_in}, but {hook} of {model.name} has per-token shape "
                        f"{list(shape)} (d={d}); build it with d_in={d}"
                    )
                sae.metadata.update(model_name=model.name, hook_name=hook, context_size=lc.context_length,
                                    prepend_bos=prepend)
            fingerprint = {"kind": "live", "d": d, "rows": None, "model": model.name, "hook": hook,
                           "source": source, "live": lc.__dict__}
            hook_cfg = replace(cfg, device=placed[hook]) if hook in placed else cfg
            trainers[hook] = Trainer(
                _as_list(saes_by_hook[hook]), hook_cfg, data=fingerprint,
                checkpoint_dir=_per_hook(checkpoint_dir, hook, ""), resume=resume,
                log_path=_per_hook(log_dir, hook, ".jsonl"), log_extra={"hook": hook},
            )
    except SAEError:
        for t in trainers.values():
            t.close()
        raise

    stream: Iterator[dict[str, torch.Tensor]] = activation_batches(model, data, hooks, cfg.batch_size, seed=cfg.seed, config=lc)
    fresh = [t for t in trainers.values() if t.needs_init]
    if fresh:
        # A fresh hook starts at batch 0, so its sample is the start of the stream.
        pending: list[dict[str, torch.Tensor]] = []
        rows = 0
        for b in stream:
            pending.append(b)
            rows += next(iter(b.values())).shape[0]
            if rows >= cfg.init_rows:
                break
        if not pending:
            raise InterpError("the data produced no activations; check the data path and context length")
        for hook, t in trainers.items():
            if t.needs_init:
                t.initialise(torch.cat([b[hook] for b in pending]))
        stream = chain(pending, stream)

    start = min(t.batches for t in trainers.values())
    bar = progress_bar(cfg.total_tokens, min(t.tokens for t in trainers.values()), progress)
    stopped_early = True
    try:
        for index, batch in enumerate(stream):
            if all(t.done for t in trainers.values()):
                stopped_early = False
                break
            if index < start:
                continue  # replayed for a resumed run: trained on before the interruption
            before = min(t.tokens for t in trainers.values())
            for hook, t in trainers.items():
                # Hooks resumed from different checkpoints step only from their own position.
                if t.batches == index and not t.done:
                    logged = t.step(batch[hook])
                    if logged and hook == hooks[0]:
                        bar.set_postfix(postfix(logged), refresh=False)
            bar.update(min(t.tokens for t in trainers.values()) - before)
        else:
            stopped_early = not all(t.done for t in trainers.values())
    except BaseException:
        for t in trainers.values():
            t.close()
        raise
    finally:
        bar.close()
    results: dict[str, TrainResult | list[TrainResult]] = {}
    for hook, t in trainers.items():
        res = t.finish(stopped_early=stopped_early and not t.done)
        results[hook] = res[0] if isinstance(saes_by_hook[hook], SAE) else res
    return results
