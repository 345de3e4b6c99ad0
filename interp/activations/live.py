"""Live SAE training: activations straight from a model's forward pass, no store on disk.

:func:`activation_batches` runs the model over the windows of a :class:`TokenSource`, gathers
the activations of one or more hooks from each forward pass (the positions of the source's
keep mask: real tokens, BOS excluded by default, exactly like the harvest), mixes them in a
bounded shuffle buffer and yields ``{hook: [batch, d]}`` batches whose rows are the same
tokens for every hook.

:func:`train_live` makes that one stream with a lane per hook and hands it to
:func:`saes.training.runner.run`: one forward pass trains every hook's SAEs. Each hook gets
its own checkpoint and JSONL log; a resumed run replays the stream from its start
(re-running the model for the batches already trained on, which keeps the shuffle buffer,
and so the weights, identical to an uninterrupted run).

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
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from saes import SAE, TrainConfig, TrainResult
from saes.devices import device_problem
from saes.errors import EmptyDataError
from saes.training.runner import Lane, Stream, run

from interp.activations.tokens import TokenBatch, TokenSource
from interp.errors import InterpError, ShapeError


@dataclass
class LiveConfig:
    """How activations are produced for live training (the data options are the
    :class:`TokenSource`'s).

    Attributes:
        model_batch_size: windows per forward pass.
        buffer_tokens: rows per hook held in the shuffle buffer (memory bound: about
            ``buffer_tokens * sum(d) * 4`` bytes). About half is handed out each time it
            fills, the rest stays to mix with later windows.
    """

    # metadata: the help of the command line's options (interp/cli/options.py).
    model_batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    buffer_tokens: int = field(default=1 << 16, metadata={"help": "shuffle buffer rows"})


def _hook_rows(model: Any, batch: TokenBatch, hooks: Sequence[str], source: TokenSource) -> dict[str, torch.Tensor]:
    """One forward pass: per hook the kept rows ``[rows, d]`` as float32 on the CPU."""
    device = model.device
    mask = batch.attention_mask.to(device)  # always passed: HF warns about unmasked padding otherwise
    with torch.inference_mode():
        _, cache = model.run_with_cache(batch.tokens.to(device), list(hooks), attention_mask=mask, return_logits=False)
    keep = source.keep_mask(batch).to(device)
    return {h: cache[h].reshape(*keep.shape, -1)[keep].float().cpu() for h in hooks}


def activation_batches(
    model: Any,
    source: TokenSource | Any,
    hooks: str | Sequence[str],
    batch_size: int,
    *,
    seed: int = 0,
    config: LiveConfig | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled ``{hook: [batch_size, d]}`` activation batches from one pass over ``source``
    (a :class:`TokenSource`, or data read with its default options).

    Rows are aligned across hooks (row i is the same token everywhere). The order depends
    only on the source, ``seed`` and the config, so the stream can be replayed exactly. The
    final partial batch is dropped.
    """
    cfg = config or LiveConfig()
    source = TokenSource.of(source)
    hooks = [hooks] if isinstance(hooks, str) else list(hooks)
    model.check_hooks(hooks)
    if batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    target = max(cfg.buffer_tokens, 2 * batch_size)
    pool: dict[str, torch.Tensor] = {}
    windows = source.batches(model, cfg.model_batch_size)

    def emit(n_out: int) -> Iterator[dict[str, torch.Tensor]]:
        nonlocal pool
        rows = next(iter(pool.values())).shape[0]
        perm = torch.randperm(rows, generator=gen)
        pool = {h: t[perm] for h, t in pool.items()}
        for a in range(0, n_out, batch_size):
            yield {h: t[a : a + batch_size] for h, t in pool.items()}
        pool = {h: t[n_out:].clone() for h, t in pool.items()}

    for batch in windows:
        rows = _hook_rows(model, batch, hooks, source)
        pool = rows if not pool else {h: torch.cat([pool[h], rows[h]]) for h in hooks}
        n = next(iter(pool.values())).shape[0]
        if n >= target:
            # Hand out about half the buffer; the rest mixes with the windows to come.
            yield from emit((n - target // 2) // batch_size * batch_size)
    if pool:
        n = next(iter(pool.values())).shape[0]
        yield from emit(n // batch_size * batch_size)


def check_devices(devices: Mapping[str, str | torch.device] | None, hooks: list[str]) -> dict[str, str]:
    """``devices`` as hook -> device name, every hook trained and every device usable."""
    out: dict[str, str] = {}
    for hook, device in (devices or {}).items():
        if hook not in hooks:
            raise InterpError(f"devices names hook {hook!r}, which is not trained here; trained hooks: {hooks}")
        problem = device_problem(str(device), f"devices[{hook!r}]={str(device)!r}")
        if problem:
            raise InterpError(problem)
        dev = torch.device(device)
        out[hook] = str(dev)
    return out


def hook_dir_name(hook: str) -> str:
    """A file-system name for a lane: its hook, or ``<in>_to_<out>`` for a transcoder's pair."""
    if PAIR_ARROW in hook:
        return "_to_".join(hook_dir_name(h) for h in hook.split(PAIR_ARROW, 1))
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in hook)


# A transcoder's lane is named by its pair of hooks: "blocks.0.hook_resid_mid->blocks.0.hook_mlp_out".
PAIR_ARROW = "->"
HookKey = str | tuple[str, str]


def lane_name(key: HookKey) -> str:
    """The lane (and result) name of a hook, or of a transcoder's ``(hook_in, hook_out)`` pair."""
    return key if isinstance(key, str) else f"{key[0]}{PAIR_ARROW}{key[1]}"


def key_hooks(key: HookKey) -> tuple[str, ...]:
    """The hooks a lane reads: one, or a transcoder's input and output hooks."""
    if isinstance(key, str):
        return (key,)
    if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(h, str) for h in key)):
        raise InterpError(f"{key!r} is neither a hook name nor a (hook_in, hook_out) pair of hook names")
    return key


PathOrPerHook = str | os.PathLike | Mapping[str, str | os.PathLike] | None


def _per_hook(where: PathOrPerHook, hook: str, suffix: str) -> Path | None:
    """``where/<hook><suffix>``, or the exact path a mapping gives for ``hook``."""
    if where is None:
        return None
    if isinstance(where, Mapping):
        return Path(where[hook])
    return Path(where) / f"{hook_dir_name(hook)}{suffix}"


def hook_lane(
    hook: str,
    saes: SAE | Sequence[SAE],
    config: TrainConfig,
    *,
    data: dict[str, Any],
    origin: dict[str, Any],
    devices: Mapping[str, str],
    checkpoint_dir: PathOrPerHook,
    log_dir: PathOrPerHook,
) -> Lane:
    """The runner lane of one hook: its own device (``devices`` from :func:`check_devices`),
    checkpoint ``checkpoint_dir/<hook>/`` and log ``log_dir/<hook>.jsonl`` (or the paths a
    mapping gives), its records tagged with the hook."""
    return Lane(
        hook, saes, replace(config, device=devices[hook]) if hook in devices else config, data,
        checkpoint_dir=_per_hook(checkpoint_dir, hook, ""), log_path=_per_hook(log_dir, hook, ".jsonl"),
        log_extra={"hook": hook}, origin=origin,
    )

def train_live(
    model: Any,
    data: Any,
    saes_by_hook: Mapping[HookKey, SAE | Sequence[SAE]],
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
        data: a .txt/.jsonl path, a list of strings, token ids or a dataset (as the harvest),
            or a :class:`TokenSource` holding the data options (text field, BOS handling).
        saes_by_hook: hook name -> an SAE or a sweep of SAEs for that hook; a transcoder (or
            a sweep of them) under its ``(hook_in, hook_out)`` pair, e.g.
            ``("blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out")``: the same forward pass
            gives both hooks of each token. Its lane (result, directory, device key) is named
            ``"hook_in->hook_out"``.
        config: the :class:`saes.TrainConfig` shared by every hook.
        context_length: window length of plain ``data`` (default 128).
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
    source = TokenSource.of(data, context_length=context_length)
    keys = list(saes_by_hook)
    if not keys:
        raise InterpError("train_live needs at least one hook with its SAE(s)")
    hooks = list(dict.fromkeys(h for key in keys for h in key_hooks(key)))  # every hook the model must give
    model.check_hooks(hooks)
    names = {lane_name(key): key for key in keys}
    placed = check_devices(devices, list(names))
    described = {"source": source.describe(), "live": _live_settings(source, lc)}
    origin = {"model_name": model.name, "context_size": source.context_length,
              "prepend_bos": source.packing(model).prepend_bos}
    lanes = []
    for name, key in names.items():
        hook, *out = key_hooks(key)
        d = _hook_width(model, key, saes_by_hook[key])
        pair = {"hook_out": out[0]} if out else {}
        data_desc = {"kind": "live", "d": d, "rows": None, "model": model.name, "hook": hook, **pair, **described}
        where = {"hook_name": hook, **({"hook_name_out": out[0]} if out else {})}
        lanes.append(hook_lane(name, saes_by_hook[key], cfg, data=data_desc, origin={**origin, **where},
                               devices=placed, checkpoint_dir=checkpoint_dir, log_dir=log_dir))

    def lane_rows(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # A transcoder's rows are [input | target] of the same tokens (saes.training.data).
        return {name: torch.cat([item[h] for h in key_hooks(key)], -1) if not isinstance(key, str) else item[key]
                for name, key in names.items()}

    def batches_from(start: int) -> Iterator[dict[str, torch.Tensor]]:
        # Replayed from the start: the batches before `start` were trained on before an interruption.
        batches = activation_batches(model, source, hooks, cfg.batch_size, seed=cfg.seed, config=lc)
        return map(lane_rows, islice(batches, start, None))

    stream = Stream(lanes, batches_from, keyed=True, sample_rows=cfg.init_rows,
                    empty="the data produced no activations; check the data path and context length")
    try:
        return run([stream], resume=resume, progress=progress)
    except EmptyDataError as err:
        raise InterpError(str(err)) from None


def _hook_width(model: Any, key: HookKey, saes: SAE | Sequence[SAE]) -> int:
    """The per-token size ``d`` at a hook (for a transcoder's pair, ``d_in + d_out``); raises
    unless every SAE for it fits the hooks."""
    if not isinstance(key, str):
        hook_in, hook_out = key
        d_in, d_out = (math.prod(int(s) for s in model.hook_shape(h)) for h in key)
        for sae in [saes] if isinstance(saes, SAE) else saes:
            if not sae.is_transcoder or (sae.d_in, sae.d_out) != (d_in, d_out):
                shown = f"d_in={sae.d_in}, d_out={sae.d_out}" if sae.is_transcoder else f"an SAE (d_in={sae.d_in})"
                raise ShapeError(
                    f"the dictionary for {hook_in} -> {hook_out} is {shown}, but those hooks of {model.name} have "
                    f"d={d_in} and d={d_out}; build a transcoder with d_in={d_in}, d_out={d_out}")
        return d_in + d_out
    hook = key
    shape = tuple(int(s) for s in model.hook_shape(hook))
    d = math.prod(shape)
    for sae in [saes] if isinstance(saes, SAE) else saes:
        if sae.is_transcoder:
            raise ShapeError(f"a transcoder was given for the single hook {hook}; key it by its (hook_in, hook_out) pair")
        if sae.d_in != d:
            raise ShapeError(
                f"an SAE for {hook} has d_in={sae.d_in}, but {hook} of {model.name} has per-token shape "
                f"{list(shape)} (d={d}); build it with d_in={d}"
            )
    return d


def _live_settings(source: TokenSource, live: LiveConfig) -> dict[str, Any]:
    # What a checkpoint records of how the stream is made; the keys (and their order) are
    # those of the LiveConfig that once held the data options too, so old checkpoints match.
    return {"context_length": source.context_length, "model_batch_size": live.model_batch_size,
            "buffer_tokens": live.buffer_tokens, "exclude_bos": source.exclude_bos,
            "prepend_bos": source.prepend_bos, "text_field": source.text_field}
