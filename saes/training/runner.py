"""The one training driver: any number of Trainers stepped over any number of streams.

:func:`saes.train` (one stream, one Trainer), live training (one model forward pass feeding a
Trainer per hook) and multi-hook store training (a stream and a Trainer per hook) only
describe their streams as :class:`Stream` s of :class:`Lane` s and call :func:`run`, which owns
the frame they share: build the Trainers (closing them all if anything fails), record where
each SAE's data came from, initialise fresh runs from the start of their stream, step every
Trainer in lockstep under one progress bar, and finish.

A stream yields one item per round. A Trainer steps on item ``i`` only when it has consumed
``i`` batches, so Trainers resumed from different checkpoints on one shared stream each
continue from their own position.

Ctrl-C (SIGINT) while training stops at the end of the current round: every Trainer with a
checkpoint directory writes a checkpoint there (consistent: between steps), and
:class:`TrainingInterrupted` says where training stopped and how to continue. A second
Ctrl-C stops at once, leaving the last checkpoint written. Data-parallel runs stop at once
too (ranks could not agree on the round), keeping their last checkpoint.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch

from saes.architectures.base import SAE
from saes.errors import ConfigError, EmptyDataError
from saes.training.config import TrainConfig
from saes.training.data import check_batch, finite_rows, make_source
from saes.training.log import postfix, progress_bar
from saes.training.trainer import Trainer, TrainResult, check_models

EMPTY_STREAM = "the data yielded no batches; pass a non-empty stream of activations"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; the message says at which step, where the last
    checkpoint is and how to continue (``str(err)``).

    Attributes:
        step: the step training reached (of the first Trainer).
        checkpoints: checkpoint directory -> the step of the checkpoint in it (None: none).
    """

    def __init__(self, step: int, checkpoints: dict[str, int | None]):
        self.step = step
        self.checkpoints = checkpoints
        super().__init__(self._message())

    def _message(self) -> str:
        if not self.checkpoints:
            return f"interrupted at step {self.step}; no checkpoint_dir was given, so nothing was saved"
        steps = {s for s in self.checkpoints.values()}
        dirs = ", ".join(self.checkpoints)
        if steps == {None}:
            return (f"interrupted at step {self.step}, before any checkpoint was written in {dirs}: run it again "
                    "(with resume=True or without) to start over")
        if len(steps) == 1:
            where = f"the last checkpoint (step {steps.pop()}) is in {dirs}"
        else:
            where = "the last checkpoints are in " + ", ".join(
                f"{d} (step {s})" for d, s in self.checkpoints.items())
        return f"interrupted at step {self.step}; {where}: run it again with resume=True to continue"

    def __str__(self) -> str:
        return self._message()


@dataclass
class Lane:
    """One Trainer of a run: SAEs (one, or a sweep sharing each batch) and where it writes.

    Attributes:
        name: the key of its result, and of its batch in a keyed stream's items (a hook name).
        saes: one SAE (its result is one :class:`TrainResult`) or a sequence (a list).
        config: its :class:`TrainConfig`.
        data: the stream's JSON description, checked when a checkpoint is resumed.
        checkpoint_dir, log_path, log_extra: as for :class:`Trainer`.
        origin: SAE metadata saying where the activations came from (``model_name``,
            ``hook_name``, ``context_size``, ...), recorded by :func:`record_origin`.
        keep_metadata: the origin fills only metadata the user left unset.
    """

    name: str
    saes: SAE | Sequence[SAE]
    config: TrainConfig
    data: dict[str, Any]
    checkpoint_dir: str | os.PathLike | None = None
    log_path: str | os.PathLike | None = None
    log_extra: dict[str, Any] | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    keep_metadata: bool = False

    @property
    def models(self) -> list[SAE]:
        return [self.saes] if isinstance(self.saes, SAE) else list(self.saes)


@dataclass
class Stream:
    """Batches read by one or more lanes in lockstep.

    Attributes:
        lanes: the Trainers reading this stream.
        open: ``open(start)`` gives the items from batch index ``start`` on (the lanes'
            smallest position: 0 for a fresh run).
        keyed: an item is ``{lane name: batch}``; else it is the batch of the one lane.
        sample_rows: rows that initialise a fresh lane (taken from the start of the stream).
        empty: what the error says when the stream yields nothing.
    """

    lanes: list[Lane]
    open: Callable[[int], Iterator[Any]]
    keyed: bool = False
    sample_rows: int | None = None
    empty: str = EMPTY_STREAM

    def __post_init__(self) -> None:
        if not self.lanes or (not self.keyed and len(self.lanes) > 1):
            raise ConfigError(f"a stream needs one lane, or keyed items for several; got {len(self.lanes)} lanes "
                              f"with keyed={self.keyed}")


def record_origin(models: Sequence[SAE], origin: Mapping[str, Any], *, keep_set: bool = False) -> None:
    """Write ``origin`` into each SAE's ``metadata`` (where it came from: model, hook, context
    size, ...), so steering, dashboards and evaluation find the hook without being told.
    ``keep_set`` leaves values the user has already set alone."""
    for m in models:
        for key, value in origin.items():
            if not (keep_set and m.metadata.get(key)):
                m.metadata[key] = value


def initial_sample(
    items: Iterator[Any], parts: Mapping[str | None, Trainer], rows: int, empty: str = EMPTY_STREAM
) -> tuple[list[Any], dict[str | None, torch.Tensor]]:
    """Pull items until each of ``parts`` (key -> Trainer; key None: the item is the batch)
    has ``rows`` rows: (the items, per key the rows stacked).

    The items are still to be trained on: the sample is the start of the stream. A Trainer
    with ``on_nonfinite="skip"`` samples only finite rows (the items stay as they are, the
    training step drops their bad rows and says so); otherwise a bad batch raises here.
    """
    pending: list[Any] = []
    kept: dict[str | None, list[torch.Tensor]] = {key: [] for key in parts}
    counts = dict.fromkeys(parts, 0)
    for item in items:
        for key, t in parts.items():
            raw = item if key is None else item[key]
            if t.cfg.on_nonfinite == "skip":
                x, _ = finite_rows(raw, t.width)
            else:
                x = check_batch(raw, t.width, len(pending), hook=t.hook, first_token=counts[key],
                                target_from=t.d_in if t.d_out is not None else None)
            kept[key].append(x)
            counts[key] += x.shape[0]
        pending.append(item)
        if min(counts.values()) >= rows:
            break
    if not pending:
        raise EmptyDataError(empty)
    if min(counts.values()) == 0:
        raise EmptyDataError("the first batches hold no finite rows; check the harvest")
    return pending, {key: torch.cat(xs)[:rows] for key, xs in kept.items()}


def _open(stream: Stream, trainers: Mapping[str, Trainer]) -> Iterator[Any]:
    """The stream's items from its lanes' position, fresh lanes initialised from its start."""
    own = {lane.name: trainers[lane.name] for lane in stream.lanes}
    items = stream.open(min(t.batches for t in own.values()))
    fresh = {(name if stream.keyed else None): t for name, t in own.items() if t.needs_init}
    if not fresh:
        return items
    rows = stream.sample_rows or min(t.cfg.init_rows for t in fresh.values())
    pending, samples = initial_sample(items, fresh, rows, stream.empty)
    for key, t in fresh.items():
        t.initialise(samples[key])
    return chain(pending, items)


def run(
    streams: Sequence[Stream],
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[Trainer, list[dict[str, Any]] | None], None] | None = None,
) -> dict[str, TrainResult | list[TrainResult]]:
    """Train every lane of ``streams`` to its ``total_tokens`` (or until its stream ends).

    Args:
        streams: the streams and the lanes reading them.
        resume: continue the lanes' checkpoints (see :class:`Trainer`).
        progress: one tqdm bar for the run (stream tokens: per stream, its slowest lane's).
        on_step: called after every step with the Trainer and its logged records (None on
            steps that are not logged); raising from it stops training.

    Returns:
        lane name -> its :class:`TrainResult` (a list when the lane's ``saes`` is a list).
    """
    if not streams:
        raise ConfigError("run() needs at least one stream of batches")
    trainers: dict[str, Trainer] = {}
    try:
        for stream in streams:
            for lane in stream.lanes:
                record_origin(lane.models, lane.origin, keep_set=lane.keep_metadata)
                trainers[lane.name] = Trainer(
                    lane.models, lane.config, data=lane.data, checkpoint_dir=lane.checkpoint_dir, resume=resume,
                    log_path=lane.log_path, log_extra=lane.log_extra,
                )
        items = [_open(stream, trainers) for stream in streams]
        ended = _step_all(streams, items, trainers, progress, on_step)
    except KeyboardInterrupt as err:
        for t in trainers.values():
            t.close()
        if isinstance(err, TrainingInterrupted) or not trainers:
            raise
        raise _interrupted(trainers) from None
    except BaseException:
        for t in trainers.values():
            t.close()
        raise
    results: dict[str, TrainResult | list[TrainResult]] = {}
    for stream, stream_ended in zip(streams, ended):
        for lane in stream.lanes:
            t = trainers[lane.name]
            res = t.finish(stopped_early=stream_ended and not t.done)
            results[lane.name] = res[0] if isinstance(lane.saes, SAE) else res
    return results


def _interrupted(trainers: Mapping[str, Trainer]) -> TrainingInterrupted:
    first = next(iter(trainers.values()))
    return TrainingInterrupted(int(first.state["step"]), {
        str(t.checkpoint_dir): t.checkpoint_step for t in trainers.values() if t.checkpoint_dir is not None})


class _DeferredInterrupt:
    """Within the block, a first SIGINT only sets ``requested`` (the loop stops at the end of
    its round, after checkpointing); a second raises KeyboardInterrupt at once. Installed
    only where it can be (the main thread, Python's own SIGINT handler in place)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> None:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def _stop_here(trainers: Mapping[str, Trainer]) -> None:
    """Checkpoint every Trainer that can (all are between steps), then stop the run."""
    for t in trainers.values():
        t.save_checkpoint()
    raise _interrupted(trainers)


def _step_all(
    streams: Sequence[Stream],
    items: list[Iterator[Any]],
    trainers: Mapping[str, Trainer],
    progress: bool,
    on_step: Callable[[Trainer, list[dict[str, Any]] | None], None] | None,
) -> list[bool]:
    """Round after round, one item of every stream that has a lane still training; returns
    per stream whether it ran out first."""
    lanes = [[trainers[lane.name] for lane in s.lanes] for s in streams]
    first = lanes[0][0]

    def count() -> int:
        return sum(min(t.tokens for t in ts) for ts in lanes)

    total = sum(max(lane.config.total_tokens for lane in s.lanes) for s in streams)
    bar = progress_bar(total, count(), progress and all(t.is_main for t in trainers.values()))
    ended = [False] * len(streams)
    position = [min(t.batches for t in ts) for ts in lanes]
    interrupt = _DeferredInterrupt(all(t.dp is None for t in trainers.values()))
    try:
        with interrupt:
            while True:
                if interrupt.requested:
                    _stop_here(trainers)
                active = [i for i, ts in enumerate(lanes) if not ended[i] and not all(t.done for t in ts)]
                if not active:
                    return ended
                for i in active:
                    training = [(lane.name, t) for lane, t in zip(streams[i].lanes, lanes[i]) if not t.done]
                    item = next(items[i], _END)
                    if item is _END:
                        ended[i] = True
                        continue
                    index, position[i] = position[i], position[i] + 1
                    for name, t in training:
                        if t.batches != index:
                            continue  # resumed further along this shared stream: not its batch yet
                        before = count()
                        logged = t.step(item[name] if streams[i].keyed else item)
                        if logged and t is first:
                            bar.set_postfix(postfix(logged), refresh=False)
                        bar.update(count() - before)
                        if on_step is not None:
                            on_step(t, logged)
    finally:
        bar.close()


_END = object()


def train(
    sae: SAE | Sequence[SAE],
    data: Any,
    config: TrainConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log_path: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult | list[TrainResult]:
    """Train one SAE, or a sweep of SAEs reading each batch once.

    Args:
        sae: an SAE, or a list of SAEs with the same ``d_in`` (a sweep; returns a list).
        data: a tensor ``[N, d_in]``, an ``ActivationStore``, or an iterable of batches. A
            transcoder (an SAE built with ``d_out``) trains on ``(input, target)`` pairs:
            ``(x [N, d_in], y [N, d_out])`` of the same tokens, two hooks of one store
            ``(store.select(hook_in), store.select(hook_out))``, or an iterable of ``(x, y)``
            batches.
        config: training settings (:class:`TrainConfig`).
        checkpoint_dir: where ``checkpoint.safetensors`` goes (every
            ``config.checkpoint_every`` steps, at the end, and on Ctrl-C). The run holds
            its write lock: a second run writing there fails at once, naming this one.
        resume: continue the checkpoint in ``checkpoint_dir`` (a fresh start if there is
            none yet). Without it, an existing checkpoint is an error rather than being
            overwritten. A checkpoint trained on other data (another store, tensor or
            text) is refused.
        log_path: JSONL metrics file (one record per SAE per logged step).
        progress: show the tqdm bar.
        callback: called after every step with ``{"step", "tokens", "records"}``
            (``records`` is None on steps that are not logged); raising from it stops
            training (the last checkpoint stays valid).

    Returns:
        A :class:`TrainResult`, or a list of them for a sweep.

    Raises:
        TrainingInterrupted: on Ctrl-C, after checkpointing the step reached; it says how
            to continue. A ``KeyboardInterrupt``, so code that expects one still stops.

    Example:
        >>> import torch, saes
        >>> data = saes.synthetic.superposition(n_features=32, d=16, n_samples=4096, seed=0)
        >>> sae = saes.TopKSAE(16, 32, k=3)
        >>> cfg = saes.TrainConfig(batch_size=256, total_tokens=20_000, lr=3e-3)
        >>> result = saes.train(sae, data.x, cfg, progress=False)
        >>> result.metrics["fvu"] < 0.5
        True
    """
    cfg = config or TrainConfig()
    models = [sae] if isinstance(sae, SAE) else list(sae)
    check_models(models)
    d_out = models[0].d_out if models[0].is_transcoder else None
    source = make_source(data, models[0].d_in, cfg.batch_size, check_finite=cfg.on_nonfinite != "skip", d_out=d_out)
    # Trained on an activation store, an SAE remembers its hook and model (read by duck
    # typing: saes does not import the store's package); what the user set is kept. A
    # transcoder trained on two views of a store remembers both hooks.
    inp, out = (data[0], data[1]) if d_out is not None and isinstance(data, (tuple, list)) and len(data) == 2 \
        else (data, None)
    found = {"hook_name": getattr(inp, "hook", None), "model_name": getattr(inp, "model_name", None),
             "hook_name_out": getattr(out, "hook", None)}
    lane = Lane("", sae if isinstance(sae, SAE) else models, cfg, source.fingerprint(), checkpoint_dir, log_path,
                origin={k: v for k, v in found.items() if isinstance(v, str)}, keep_metadata=True)
    # The sample takes at most one pass over finite data: repeated rows add nothing to the estimates.
    stream = Stream([lane], lambda start: source.iterate(cfg.batch_size, cfg.seed, skip=start),
                    sample_rows=min(cfg.init_rows, source.n_rows) if source.n_rows else cfg.init_rows)

    def report(t: Trainer, logged: list[dict[str, Any]] | None) -> None:
        if callback is not None:
            callback({"step": int(t.state["step"]), "tokens": t.tokens, "records": logged})

    return run([stream], resume=resume, progress=progress, on_step=report)[""]
