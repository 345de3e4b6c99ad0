"""Streaming harvest: run a model over a dataset and write chosen hooks to a store.

One forward pass per batch caches every requested hook (the pass stops after the last one
needed); kept rows are copied into a preallocated shard buffer, which is written as one
safetensors file when the next window would not fit. So at most one shard buffer plus one
batch of activations are in memory, whatever ``max_tokens`` is. The slow part of finishing
a shard (fsync, checksum, rename, manifest) runs in a background thread while the next
batches are computed; it needs no second buffer, because it only touches the file.

Resuming: a shard holds whole windows and the manifest is rewritten (atomically) after each
shard, so after an interruption a re-run with the same arguments skips the windows of the
complete shards and continues. It restarts at the batch boundary before the first missing
window, so the model sees exactly the batches of an uninterrupted run and the final content
is the same bit for bit.

One writer at a time: the harvest holds :func:`saes.locks.directory_lock` on the store for
its whole run, so a second harvest into the same directory fails at once, naming the first.

Ctrl-C: while the harvest runs, SIGINT only sets a flag, read between batches. The harvest
then finishes committing the shard in flight and raises :class:`HarvestInterrupted` (an
:class:`InterpError` and a ``KeyboardInterrupt``) saying how much the store holds. So the
interrupt never lands inside torch's or safetensors' native code, where an exception
cannot propagate (the process would abort), and the store is left with complete shards
and a valid manifest. A second Ctrl-C interrupts at once, as usual.
"""
from __future__ import annotations

import os
import signal
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saes.locks import LOCK_NAME, directory_lock

from interp.activations.tokens import TokenBatch, TokenSource
from interp.errors import InterpError, StoreError
from interp.activations.store import (
    DTYPES,
    MANIFEST,
    ActivationStore,
    MAX_SHARDS,
    HookInfo,
    Manifest,
    ShardInfo,
    act_key,
    atomic_write_text,
    check_shard_headers,
    check_shard_sizes,
    commit_shard,
    remove_stray_files,
    serialize_shard,
    store_dtype,
)

# Default shard size: large enough that per-file overhead (fsync, manifest rewrite) is
# negligible, small enough that one shard in RAM is harmless on a laptop.
DEFAULT_SHARD_BYTES = 256 << 20


class HarvestInterrupted(InterpError, KeyboardInterrupt):
    """The harvest stopped on Ctrl-C (SIGINT); the store holds the shards completed so far,
    and the same harvest run again continues after them.

    Both an :class:`InterpError` (the command line reports it in one line) and a
    ``KeyboardInterrupt`` (code that handles Ctrl-C sees one).
    """

    readme = "Activation store"


class _InterruptFlag:
    """SIGINT sets ``self.raised`` instead of raising, for the duration of a ``with`` block.

    Python raises KeyboardInterrupt wherever the main thread is when the signal arrives,
    which can be inside a callback from native code that cannot pass an exception on: the
    process then aborts (``terminate called ... KeyboardInterrupt``, SIGABRT) mid-write.
    A flag read between batches stops the harvest at a point where everything is Python.
    A second SIGINT restores the previous handler and raises at once. Outside the main
    thread (signals are delivered only there), or where SIGINT is ignored or handled by
    the program itself, this does nothing.
    """

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # asked twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.raised = True

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def __enter__(self) -> _InterruptFlag:  # noqa: PYI034 (never subclassed)
        # Only over Python's own handler, the one that raises anywhere: an ignored SIGINT
        # (a job started in the background by a script) stays ignored, and a program's own
        # handler stays in charge.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except ValueError:  # not the main interpreter: leave SIGINT as it is
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


@dataclass
class HarvestConfig:
    """Settings of one harvest besides its data (see :func:`harvest` for their meaning; the
    data options are the :class:`TokenSource`'s)."""

    hooks: list[str]
    out: Path
    max_tokens: int | None = None
    batch_size: int = 8
    dtype: str = "float32"
    shard_tokens: int | None = None
    device: str | torch.device | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.hooks = [self.hooks] if isinstance(self.hooks, str) else list(dict.fromkeys(self.hooks))
        self.out = Path(self.out)
        self.dtype = store_dtype(self.dtype)


def _options_for(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that are fields of the dataclass ``cls``."""
    return {f.name: options[f.name] for f in fields(cls) if f.name in options}


@dataclass
class _ShardBuffer:
    """Preallocated rows of one shard: ``acts[hook] [capacity, d]``, ``seq``/``pos [capacity]``.

    Allocated once per harvest and reused, so the peak memory is fixed up front.
    """

    hooks: list[HookInfo]
    capacity: int
    dtype: torch.dtype
    rows: int = 0
    tokens: list[torch.Tensor] = field(default_factory=list)  # one [pos] int32 per window
    seq_start: int = 0

    def __post_init__(self) -> None:
        self.acts = {h.name: torch.empty(self.capacity, h.d, dtype=self.dtype) for h in self.hooks}
        self.seq = torch.empty(self.capacity, dtype=torch.int64)
        self.pos = torch.empty(self.capacity, dtype=torch.int32)

    @property
    def n_seqs(self) -> int:
        return len(self.tokens)

    def fits(self, n: int) -> bool:
        return self.rows + n <= self.capacity

    def add(self, kept: dict[str, torch.Tensor], tokens: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> None:
        """Append windows: ``kept[hook] [n, d]``, ``tokens [windows, pos]``, ``seq``/``pos [n]``."""
        n = seq.shape[0]
        a, b = self.rows, self.rows + n
        for name, t in kept.items():
            self.acts[name][a:b] = t
        self.seq[a:b] = seq
        self.pos[a:b] = pos
        self.tokens.extend(tokens.to(torch.int32).unbind(0))
        self.rows = b

    def tensors(self) -> dict[str, torch.Tensor]:
        # Slices of the preallocated buffers: written to disk without a copy.
        out = {act_key(name): t[: self.rows] for name, t in self.acts.items()}
        out["tokens"] = torch.stack(self.tokens)
        out["seq"] = self.seq[: self.rows]
        out["pos"] = self.pos[: self.rows]
        return out

    def reset(self, seq_start: int) -> None:
        self.rows = 0
        self.tokens = []
        self.seq_start = seq_start


def _resolve_shard_tokens(shard_tokens: int | None, hooks: list[HookInfo], dtype: torch.dtype, ctx: int) -> int:
    if shard_tokens is None:
        row_bytes = sum(h.d for h in hooks) * torch.finfo(dtype).bits // 8
        shard_tokens = max(1, DEFAULT_SHARD_BYTES // row_bytes)
    if shard_tokens < 1:
        raise InterpError(f"shard_tokens must be positive, got {shard_tokens}")
    # A shard holds whole windows, so it must have room for at least one.
    return max(shard_tokens, ctx)


def _prepare_directory(out: Path, wanted: Manifest) -> Manifest:
    """The manifest to continue from: ``wanted`` for a fresh store, or the stored one."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"output path {out} exists and is not a directory")
    if (out / MANIFEST).is_file():
        stored = Manifest.read(out)
        if not stored.shards and not stored.complete:
            # Stopped before its first shard: nothing to keep, so any settings may start over.
            remove_stray_files(out, stored)
            return wanted
        diffs = stored.differences(wanted)
        if diffs:
            raise StoreError(
                f"{out} already holds a harvest made with different settings:\n  "
                + "\n  ".join(diffs)
                + f"\nUse another output directory, or delete {out} to start this harvest afresh."
            )
        check_shard_sizes(out, stored)
        check_shard_headers(out, stored)
        remove_stray_files(out, stored)
        stored.batch_size = wanted.batch_size
        return stored
    _check_foreign_directory(out)
    out.mkdir(parents=True, exist_ok=True)
    return wanted


def _check_foreign_directory(out: Path) -> None:
    """Refuse a directory that holds other files and no store (the lock file does not count)."""
    if out.is_dir() and not (out / MANIFEST).is_file() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StoreError(
            f"output directory {out} is not empty and holds no {MANIFEST}; "
            "harvest into a new or empty directory so no other files are mixed in"
        )


def harvest(
    model: Any,
    data: Any,
    hooks: str | Sequence[str],
    out: str | os.PathLike,
    max_tokens: int | None = None,
    context_length: int | None = None,
    batch_size: int = 8,
    dtype: str = "float32",
    exclude_bos: bool = True,
    shard_tokens: int | None = None,
    *,
    prepend_bos: bool | None = None,
    text_field: str = "text",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Run ``model`` over ``data`` and store the activations of ``hooks`` in ``out``.

    Args:
        model: a HookedModel (or anything :func:`interp.load` accepts).
        data: a ``.txt`` path (one document per line), a ``.jsonl`` path (``text_field`` per
            record), a list of strings, a token tensor ``[seq, pos]`` (used as windows) or
            1-D (packed), or a ``datasets`` Dataset/IterableDataset with a ``text_field``
            column. Read as a stream; see :mod:`interp.activations.tokens` for the packing rule.
            Or a :class:`TokenSource`, which binds the data options (``context_length``,
            ``exclude_bos``, ``prepend_bos``, ``text_field``) itself.
        hooks: hook names; all are saved from the same forward pass.
        out: store directory. If it holds an unfinished harvest with the same settings,
            the harvest resumes; different settings raise :class:`StoreError`.
        max_tokens: stop after storing this many rows (token positions); None = all data.
        context_length: window length; defaults to a 2-D token tensor's width, else 128.
        batch_size: windows per forward pass (not part of the content; may change on resume).
        dtype: store dtype, "float32", "bfloat16" or "float16".
        exclude_bos: skip position 0 of windows that start with BOS. Padding positions are
            always skipped (they are not text).
        shard_tokens: rows per shard (at least one window); default about 256 MiB a shard.
        prepend_bos: BOS at the start of every packed window; default: when the model has one.
        device: where to load the model when ``model`` is a name (a HookedModel runs where
            it is; move it first with ``model.model.to(...)``).
        progress: show a tqdm bar.

    Returns:
        The store, reading the first hook (``store.select(name)`` reads another).
    """
    options = dict(locals())  # every argument by name: each goes to the TokenSource or the HarvestConfig
    if isinstance(model, (str, os.PathLike)):
        from interp.model.loading import load  # only needed for this convenience

        model = load(str(model), device=device)
    source = TokenSource.of(**_options_for(TokenSource, options))  # data plus its options
    return run_harvest(model, source, HarvestConfig(**_options_for(HarvestConfig, options)))


def _wanted_manifest(model: Any, source: TokenSource, cfg: HarvestConfig) -> Manifest:
    if not cfg.hooks:
        raise InterpError("give at least one hook to harvest (see `interp hooks --model ...`)")
    model.check_hooks(cfg.hooks)
    infos = [HookInfo(h, tuple(int(x) for x in model.hook_shape(h))) for h in cfg.hooks]
    if cfg.max_tokens is not None and cfg.max_tokens < 1:
        raise InterpError(f"max_tokens must be positive, got {cfg.max_tokens}")
    if cfg.batch_size < 1:
        raise InterpError(f"batch_size must be at least 1, got {cfg.batch_size}")
    packing = source.packing(model)
    ctx = packing.context_length
    store_dtype = DTYPES[cfg.dtype]
    return Manifest(
        model=model.name,
        hooks=infos,
        dtype=cfg.dtype,
        context_length=ctx,
        prepend_bos=packing.prepend_bos,
        exclude_bos=source.exclude_bos,
        source=source.describe(),
        max_tokens=cfg.max_tokens,
        shard_tokens=_resolve_shard_tokens(cfg.shard_tokens, infos, store_dtype, ctx),
        bos_token_id=packing.bos_token_id,
        eos_token_id=packing.eos_token_id,
        batch_size=cfg.batch_size,
    )


class _Committer:
    """Finishes shards in one background thread: fsync, checksum, rename, manifest update.

    The disk wait then overlaps the next forward passes. The shard buffer is free as soon
    as the shard is serialized, so this costs no memory; at most one shard is pending, and
    shards and manifest updates happen strictly in order.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interp-shard")
        self._pending: Future[None] | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(fn)

    def wait(self) -> None:
        """Block until the pending shard is committed; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self, raise_errors: bool = True) -> None:
        try:
            self.wait()
        except BaseException:
            if raise_errors:
                raise
        finally:
            self._pool.shutdown(wait=True)


def run_harvest(model: Any, source: TokenSource | Any, cfg: HarvestConfig) -> ActivationStore:
    """:func:`harvest` with its data in a :class:`TokenSource` (plain data takes the default
    options) and its other settings in a :class:`HarvestConfig`."""
    source = TokenSource.of(source)
    wanted = _wanted_manifest(model, source, cfg)
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise StoreError(f"output path {out} exists and is not a directory")
    _check_foreign_directory(out)  # before the lock, so a directory of other files gets no lock file
    if wanted.max_tokens is not None and -(-wanted.max_tokens // wanted.shard_tokens) > MAX_SHARDS:
        raise InterpError(
            f"max_tokens={wanted.max_tokens:,} in shards of {wanted.shard_tokens:,} rows would make more than "
            f"{MAX_SHARDS:,} shards; use a larger shard_tokens"
        )
    with _InterruptFlag() as interrupt, directory_lock(out, what="activation store"):
        return _harvest_locked(model, source, cfg, wanted, interrupt)


def _harvest_locked(
    model: Any, source: TokenSource, cfg: HarvestConfig, wanted: Manifest, interrupt: _InterruptFlag
) -> ActivationStore:
    out = cfg.out
    manifest = _prepare_directory(out, wanted)
    first_hook = manifest.hooks[0].name
    if manifest.complete:
        return ActivationStore.open(out, hook=first_hook, model=model)
    atomic_write_text(out / MANIFEST, manifest.to_json())

    store_dtype = DTYPES[manifest.dtype]
    device = getattr(model, "device", torch.device("cpu"))
    start_seq = manifest.shards[-1].seq_end if manifest.shards else 0
    done = sum(s.rows for s in manifest.shards)
    buf = _ShardBuffer(manifest.hooks, manifest.shard_tokens, store_dtype, seq_start=start_seq)
    committer = _Committer()

    def flush() -> None:
        if buf.n_seqs == 0:
            return
        committer.wait()  # the previous shard is in the manifest: this one's index is known
        index, rows, seq_start, seq_end = len(manifest.shards), buf.rows, buf.seq_start, buf.seq_start + buf.n_seqs
        if index >= MAX_SHARDS:
            raise StoreError(
                f"{out} holds {MAX_SHARDS:,} shards, the most a store may list; the shards so far are complete. "
                f"Harvest into a new directory with a larger shard_tokens (now {manifest.shard_tokens:,})"
            )
        tmp = serialize_shard(out, index, buf.tensors())

        def commit() -> None:
            name, size, digest = commit_shard(out, index, tmp)
            manifest.shards.append(ShardInfo(name, rows, seq_start, seq_end, size, digest))
            manifest.n_tokens += rows
            manifest.n_sequences = seq_end
            atomic_write_text(out / MANIFEST, manifest.to_json())  # the shard counts only from here

        committer.submit(commit)
        buf.reset(seq_end)  # safe: the rows are in the file now

    limit = manifest.max_tokens
    stopped = False  # by Ctrl-C, before the data or max_tokens ran out
    bar = tqdm(total=limit, initial=done, unit="tok", desc="harvest", disable=not cfg.progress, dynamic_ncols=True)
    try:
        if limit is None or done < limit:
            # Restart at a batch boundary so every batch is the one an uninterrupted run
            # would have computed; windows before start_seq are recomputed and dropped.
            batch_start = start_seq // cfg.batch_size * cfg.batch_size
            for batch in source.batches(model, cfg.batch_size, start_seq=batch_start):
                if interrupt.raised:  # between batches: nothing native is running
                    stopped = True
                    break
                skip = max(0, start_seq - batch.first_seq)
                keep = source.keep_mask(batch)
                keep[:skip] = False  # windows the interrupted run already stored
                kept = _forward(model, batch, keep, manifest.hooks, device, store_dtype)
                done = _buffer_batch(buf, flush, batch, keep, kept, skip, done, limit)
                bar.n = done
                bar.refresh()
                del kept  # drop this batch's activations before the next forward pass
                if limit is not None and done >= limit:
                    break
        if not stopped:
            flush()
        committer.close()  # the shard in flight is committed either way
    except BaseException:
        committer.close(raise_errors=False)  # finish or drop the pending shard; report the first error
        raise
    finally:
        bar.close()
    if stopped:
        # The partial buffer is dropped: a shard cut short here would change the shard
        # layout, so the resumed store would differ from an uninterrupted one.
        held = (f"the store holds the complete shards: {manifest.n_tokens:,} tokens in {len(manifest.shards)} "
                f"shard{'s' if len(manifest.shards) != 1 else ''}" if manifest.shards
                else "no shard was complete, so the store holds no rows yet")
        raise HarvestInterrupted(
            f"interrupted after {done:,} tokens; {held} ({out}). Run the same harvest again to continue"
        ) from None
    if done == 0:
        raise InterpError(f"the data ({manifest.source.get('kind')}) produced no tokens to store")
    if limit is not None and done < limit:
        warnings.warn(f"the data ran out after {done} of max_tokens={limit} tokens; the store holds {done}", stacklevel=4)
    manifest.complete = True
    atomic_write_text(out / MANIFEST, manifest.to_json())
    return ActivationStore.open(out, hook=first_hook, model=model)


def _forward(
    model: Any,
    batch: TokenBatch,
    keep: torch.Tensor,
    hooks: list[HookInfo],
    device: torch.device,
    store_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """One forward pass; per hook the kept rows ``[n_kept, d]`` on CPU, in row-major order."""
    names = [h.name for h in hooks]
    with torch.inference_mode():
        # The mask is always passed (measured: no cost when all ones), so HF never guesses
        # padding from token ids. return_logits=False: the pass stops after the last hook.
        mask = batch.attention_mask.to(device)
        _, cache = model.run_with_cache(batch.tokens.to(device), names, attention_mask=mask, return_logits=False)
        keep_dev = keep.to(device)
        kept = {}
        for h in hooks:
            act = cache.pop(h.name)
            if tuple(act.shape[2:]) != h.shape:
                raise StoreError(f"hook {h.name} gave per-token shape {tuple(act.shape[2:])}, expected {h.shape}")
            # Convert on the device: bfloat16 halves the transfer as well as the store.
            kept[h.name] = act.reshape(*act.shape[:2], h.d)[keep_dev].to(store_dtype).to("cpu")
            del act
        del cache
    return kept


def _buffer_batch(
    buf: _ShardBuffer,
    flush: Callable[[], None],
    batch: TokenBatch,
    keep: torch.Tensor,
    kept: dict[str, torch.Tensor],
    skip: int,
    done: int,
    limit: int | None,
) -> int:
    """Move a batch's kept rows into the shard buffer, flushing whole windows as it fills.

    Returns the new total of stored rows.
    """
    n_per_seq = keep.sum(1).tolist()
    pos_all = keep.nonzero()[:, 1].to(torch.int32)  # row-major, the order of `kept`
    row = 0  # first row of window b in `kept` (skipped windows have no rows)
    b = skip
    while b < len(batch):
        # Take as many whole windows as fit in the buffer (and in max_tokens).
        e, n = b, 0
        while e < len(batch):
            take = n_per_seq[e]
            if limit is not None:
                take = min(take, limit - done - n)
            if not buf.fits(n + take):
                break
            n += take
            e += 1
            if limit is not None and done + n >= limit:
                break
        if e == b:  # the buffer is full: write it and start the next shard at window b
            flush()
            continue
        # Only the last window can be cut short by max_tokens, hence the final [:n].
        seq = torch.repeat_interleave(
            torch.arange(batch.first_seq + b, batch.first_seq + e), torch.tensor(n_per_seq[b:e])
        )[:n]
        buf.add({k: v[row : row + n] for k, v in kept.items()}, batch.tokens[b:e], seq, pos_all[row : row + n])
        row += sum(n_per_seq[b:e])
        done += n
        b = e
        if limit is not None and done >= limit:
            break
    return done
