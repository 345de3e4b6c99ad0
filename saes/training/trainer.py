"""The one training loop for every architecture, and sweeps that share one data stream.

The loop owns: batching and data position, Adam with linear warm-up and decay, b_dec from
the geometric median, tied initialisation, unit-norm decoder rows (parallel gradient
component removed before each step, rows re-normalised after), AuxK with dead latents
counted in tokens, optional input normalisation (folded into the weights at the end),
bfloat16 autocast on CUDA only, gradient clipping, seeds, atomic checkpoints that resume
exactly (only on the data they were written for, one writer per directory), warnings about
data with nothing to learn, JSONL metrics, and the final calibration of the BatchTopK inference threshold
(on the first training rows, which the run keeps and checkpoints). Architectures supply only
their encode, decode and loss terms (:meth:`saes.SAE.training_forward`). Driving Trainers over data (initial sample, lockstep
steps, progress bar, finishing) is :mod:`saes.training.runner`'s.

A sweep passes several SAEs: each batch is read (and checked, moved, normalised) once and
every SAE takes its own step on it. With the same config, an SAE trained in a sweep ends
with exactly the weights it would get trained alone.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saes import kernels
from saes.training import checkpoint, distributed
from saes.devices import device_problem
from saes.architectures.base import SAE, StepOutput, batch_variance, default_k_aux, remove_parallel_grad_, unit_rows_
from saes.training.config import RUN_ONLY_FIELDS, TrainConfig
from saes.training.data import check_batch, data_identity, describe_data, finite_rows, needs_rescaling, spread_warning
from saes.training.distributed import DataParallel
from saes.errors import CheckpointError, ConfigError, DegenerateDataWarning, NonFiniteError
from saes.training.init import geometric_median, normalisation_scale
from saes.training.log import JsonlLog
from saes.locks import directory_lock


@dataclass
class TrainResult:
    """What :func:`saes.train` returns for each SAE.

    Attributes:
        sae: the trained SAE (acting on raw activations: normalisation already folded in).
        steps, tokens: optimiser steps and training rows of the whole run (resumes included).
        metrics: the last logged step's numbers (the final step is always logged): ``fvu``,
            ``l0``, ``dead_fraction``, ``auxk``, ``loss``, ``lr`` (and architecture extras).
        history: every logged record of this run (this call only).
        input_scale: the normalisation constant folded in at the end (1.0 when off).
        output_scale: a transcoder's constant for its target, folded in alike.
        checkpoint: path of the final checkpoint, if one was written.
        stopped_early: the data ran out before ``total_tokens``.
    """

    sae: SAE
    steps: int
    tokens: int
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    input_scale: float = 1.0
    output_scale: float = 1.0
    checkpoint: Path | None = None
    stopped_early: bool = False


def auxk_loss(
    sae: SAE, x: torch.Tensor, out: StepOutput, dead: torch.Tensor, k_aux: int, variance: torch.Tensor,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """AuxK: the top-``k_aux`` dead latents regress the (detached) residual ``x - x_hat``
    (``target - x_hat`` for a transcoder).

    Decoded without ``b_dec`` (the residual already accounts for it), ReLU on the codes,
    normalised by the batch variance of ``x`` like the main loss, and scaled down by
    ``n_dead / k_aux`` while fewer than ``k_aux`` latents are dead (as sparsify does).
    """
    assert out.pre_acts is not None
    n_dead = int(dead.sum())
    k = min(k_aux, n_dead)
    e = ((x if target is None else target) - out.x_hat).detach()
    masked = out.pre_acts.masked_fill(~dead, -float("inf"))
    values, indices = kernels.topk(masked, k)
    e_hat = kernels.sparse_decode(values.clamp_min(0), indices, sae.W_dec)
    scale = min(1.0, n_dead / k_aux)
    return scale * (e_hat.float() - e.float()).pow(2).sum(-1).mean() / variance


class _Slot:
    """One SAE of a run with its optimiser and dead-latent counters."""

    def __init__(self, sae: SAE, cfg: TrainConfig, device: torch.device):
        self.sae = sae
        self.cfg = cfg
        self.lr = cfg.lr_for(sae.d_sae)
        self.opt = torch.optim.Adam(sae.parameters(), lr=self.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        # Tokens since each latent last fired; "dead" means >= dead_tokens.
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
        self.k_aux = cfg.k_aux or default_k_aux(sae.d_out, sae.d_sae)  # half the reconstructed width
        self.k_aux = min(self.k_aux, sae.d_sae)
        self.use_auxk = cfg.auxk and sae.supports_auxk
        self.last: dict[str, float] = {}

    def dead(self) -> torch.Tensor:
        return self.since_fired >= self.cfg.dead_tokens

    def step(
        self, x: torch.Tensor, variance: torch.Tensor, lr_factor: float, autocast: Any, want: bool,
        dp: DataParallel | None = None, global_rows: int | None = None, target: torch.Tensor | None = None,
    ) -> dict[str, Any] | None:
        """One step on ``x`` (this rank's rows; a transcoder's ``target`` rows beside them);
        ``variance`` (of the target) and ``global_rows`` describe the whole batch, which in a
        data-parallel run spans all ranks."""
        sae, cfg = self.sae, self.cfg
        n_global = global_rows or x.shape[0]
        lr = self.lr * lr_factor
        for g in self.opt.param_groups:
            g["lr"] = lr
        with autocast(), distributed.global_batch_selection(dp, n_global):
            # An SAE is called as before, so families that take no target still train.
            out = sae.training_forward(x, variance) if target is None else sae.training_forward(x, variance, target)
            loss = sum(out.losses.values())
            aux = None
            if self.use_auxk:
                dead = self.dead()
                if bool(dead.any()):
                    aux = auxk_loss(sae, x, out, dead, self.k_aux, variance, target)
                    loss = loss + cfg.auxk_alpha * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if dp is not None:
            # Weighted so the sum is the gradient of the global mean loss, whatever the split.
            dp.reduce_grads(list(sae.parameters()), x.shape[0] / n_global)
        if sae.unit_norm_decoder:  # False where the family's penalty weights free decoder rows
            remove_parallel_grad_(sae.W_dec)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            if sae.unit_norm_decoder:
                unit_rows_(sae.W_dec)
            if out.fired is not None:  # told by the architecture (dense codes)
                fired = out.fired
            else:
                active = out.values.detach() != 0  # signed MP codes fire too
                fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
                fired[out.indices[active]] = True
            if dp is not None:
                fired = dp.any_(fired)
                threshold = getattr(sae, "threshold", None)
                if isinstance(threshold, torch.Tensor) and threshold.ndim == 0:
                    # The EMA of the smallest kept activation: the global batch's is the min over ranks.
                    dp.min_(threshold)
            self.since_fired += n_global
            self.since_fired[fired] = 0
        if not want:
            return None
        with torch.no_grad():
            err = (out.x_hat.float() - (x if target is None else target)).pow(2).sum(-1).mean()
            l0 = _l0(out.values.detach(), out.indices, sae.d_sae)
            rec = {
                "loss": float(loss.detach()),
                "fvu": float(err / variance),
                "l0": l0,
                "dead_fraction": float(self.dead().float().mean()),
                "auxk": float(aux.detach()) if aux is not None else 0.0,
                "lr": lr,
            }
            for k, v in out.metrics.items():
                rec[k] = float(v)
        if dp is not None:
            # Per-rank numbers -> the global batch's (row-weighted means); lr and dead are shared.
            keys = [k for k in rec if k not in ("lr", "dead_fraction")]
            for k, v in zip(keys, dp.weighted_mean([rec[k] for k in keys], x.shape[0] / n_global, x.device)):
                rec[k] = v
        self.last = rec
        return rec


def _l0(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> float:
    """Mean number of distinct latents with a non-zero code per token (repeats count once)."""
    z = torch.zeros(values.shape[0], d_sae, device=values.device, dtype=torch.float32)
    z.scatter_add_(1, indices, values.float())
    return float((z != 0).sum(-1).float().mean())


# ---------------------------------------------------------------- checkpoints


CALIBRATION_KEY = "calibration_rows"


def _needs_calibration(sae: SAE) -> bool:
    """Whether ``sae``'s inference uses a learnt threshold θ (BatchTopK codes)."""
    return bool(getattr(sae, "has_learnt_threshold", False))


def _state_tensors(slots: list[_Slot], calibration: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    # No RNG state is needed: the run draws randomness only from generators seeded by
    # (seed, epoch) or at initialisation, and the data position restores both.
    out: dict[str, torch.Tensor] = {}
    if calibration is not None:
        out[CALIBRATION_KEY] = calibration
    for i, s in enumerate(slots):
        for name, t in s.sae.state_dict().items():
            out[f"sae{i}.state.{name}"] = t
        out[f"sae{i}.since_fired"] = s.since_fired
        names = {id(p): n for n, p in s.sae.named_parameters()}
        for p, st in s.opt.state.items():
            n = names[id(p)]
            for key, value in st.items():
                out[f"sae{i}.adam.{n}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    diffs = []
    sc, nc = saved["config"], now["config"]
    defaults = TrainConfig().to_dict()  # a field added since the checkpoint was written had its default
    for key in sorted(set(sc) | set(nc)):
        if key in RUN_ONLY_FIELDS:
            continue
        if sc.get(key, defaults.get(key)) != nc.get(key, defaults.get(key)):
            diffs.append(f"{key}: checkpoint {sc.get(key)!r}, now {nc.get(key)!r}")
    if len(saved["saes"]) != len(now["saes"]):
        diffs.append(f"number of SAEs: checkpoint {len(saved['saes'])}, now {len(now['saes'])}")
    else:
        for i, (a, b) in enumerate(zip(saved["saes"], now["saes"])):
            if a["architecture"] != b["architecture"]:
                diffs.append(f"SAE {i} architecture: checkpoint {a['architecture']}, now {b['architecture']}")
                continue
            for key in sorted(set(a["config"]) | set(b["config"])):
                if a["config"].get(key) != b["config"].get(key):
                    diffs.append(f"SAE {i} {key}: checkpoint {a['config'].get(key)!r}, now {b['config'].get(key)!r}")
    sd, nd = saved["data"], now["data"]
    for key in ("kind", "d", "rows"):
        if sd.get(key) != nd.get(key):
            diffs.append(f"data {key}: checkpoint {sd.get(key)!r}, now {nd.get(key)!r}")
    return diffs


def _restore(slots: list[_Slot], tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    for i, s in enumerate(slots):
        prefix = f"sae{i}.state."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        s.sae.load_state_dict(state)
        s.since_fired.copy_(tensors[f"sae{i}.since_fired"].to(device))
        params = dict(s.sae.named_parameters())
        for name, p in params.items():
            key = f"sae{i}.adam.{name}."
            # Adam keeps its step counter on the CPU (unless capturable); moments go to the device.
            st = {k[len(key):]: (v if k.endswith(".step") else v.to(device)) for k, v in tensors.items() if k.startswith(key)}
            if st:
                s.opt.state[p] = st


# ---------------------------------------------------------------- the loop


def _autocast(cfg: TrainConfig, device: torch.device) -> Callable[[], Any]:
    on = device.type == "cuda" and cfg.autocast in ("auto", "bfloat16")
    if on:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def init_seed(seed: int) -> int:
    """The weight-initialisation seed for config seed ``seed``.

    Mixed so that it never equals ``seed`` itself: data generated with
    ``torch.Generator().manual_seed(seed)`` (as tests and synthetic data do) must not
    reproduce the SAE's initial dictionary.
    """
    return (seed * 0x9E3779B1 + 0x5AE5) % (2**63)


@torch.no_grad()
def _initialise(sae: SAE, sample: torch.Tensor, cfg: TrainConfig, target: torch.Tensor | None = None) -> None:
    if cfg.init_weights:
        sae.reset_parameters(torch.Generator().manual_seed(init_seed(cfg.seed)))
    out = sample if target is None else target  # b_dec lives where the reconstruction does
    if target is not None and cfg.init_weights and isinstance(sae._parameters.get("W_enc"), torch.nn.Parameter):
        # Unit decoder rows turn codes into output one for one: encoder columns scaled to the
        # ratio of the target's spread to the input's start the output at the target's scale
        # (as the tied initialisation of an SAE does), not at the input's.
        sae.W_enc.mul_(_spread(target) / _spread(sample))
    if cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(out).to(sae.b_dec.dtype))
    elif cfg.b_dec_init == "mean":
        sae.b_dec.copy_(out.mean(0).to(sae.b_dec.dtype))
    elif cfg.b_dec_init == "zeros":
        sae.b_dec.zero_()
    if sae.unit_norm_decoder:
        unit_rows_(sae.W_dec)


def _spread(rows: torch.Tensor) -> float:
    """RMS distance of ``rows [n, d]`` from their mean (a positive floor where they are all equal)."""
    return max(float((rows - rows.mean(0)).pow(2).sum(-1).mean().sqrt()), 1e-12)


def check_device(name: str | None) -> str | None:
    """``name`` if this machine has such a device, else a ConfigError saying what it has."""
    if name is None:
        return None
    problem = device_problem(name, f"device={name!r}")
    if problem:
        raise ConfigError(problem)
    return name


def check_models(models: list[SAE]) -> None:
    if not models:
        raise ConfigError("train() needs at least one SAE")
    for m in models:
        if not isinstance(m, SAE):
            raise ConfigError(f"train() takes SAEs from this package, got a {type(m).__name__}")
        if not m.trainable:
            raise ConfigError(
                f"{type(m).__name__} is inference-only (read from another library's file); train a "
                "TopKSAE, BatchTopKSAE, MatryoshkaSAE or MPSAE instead"
            )
    d = {m.d_in for m in models}
    if len(d) > 1:
        raise ConfigError(f"a sweep trains SAEs on one stream, so all need the same d_in; got {sorted(d)}")
    outs = {m.d_out if m.is_transcoder else None for m in models}
    if len(outs) > 1:
        raise ConfigError("a sweep trains on one stream, so its members are all SAEs or all transcoders with one "
                          f"d_out; got d_out {sorted(outs, key=str)} (None: an SAE)")
    for m in models:
        if m.is_transcoder and not m.trains_as_transcoder():
            raise ConfigError(f"{type(m).__name__} cannot train as a transcoder: its training step takes no "
                              "reconstruction target; train a TopK, BatchTopK or Matryoshka transcoder instead")
    if len({id(m) for m in models}) != len(models):
        raise ConfigError("the same SAE object appears twice in the sweep; build separate SAEs")


class Trainer:
    """The training loop as an object: SAEs sharing one stream, stepped batch by batch.

    :func:`saes.training.runner.run` drives Trainers: one over one data source for
    :func:`saes.train`, one per hook in lockstep for live and multi-hook store training.
    Everything a run owns lives here: optimisers, schedule, dead-latent counters, initialisation, checkpoints, the
    JSONL log and the metric history.

    Usage::

        t = Trainer(saes, config, data=fingerprint, checkpoint_dir=..., resume=...)
        if t.needs_init:
            t.initialise(sample)          # [rows, d_in], the first rows of the stream
        for x in stream_from(t.batches):  # skip what a resumed run already consumed
            t.step(x)                     # logs and checkpoints as configured
            if t.done: break
        results = t.finish()

    Args:
        models: the SAEs (same ``d_in``).
        config: the shared :class:`TrainConfig`.
        data: a JSON-able description of the stream (``Source.fingerprint()``); a resumed
            checkpoint must have been written for the same data (the same identity, see
            :func:`saes.training.data.data_identity`).
        checkpoint_dir, resume, log_path: as for :func:`saes.train`. The Trainer holds the
            write lock on ``checkpoint_dir`` (:func:`saes.locks.directory_lock`; rank 0 of a
            data-parallel run) from construction to :meth:`finish` or :meth:`close`, so a
            second run writing there fails at once, naming this one.
    """

    def __init__(
        self,
        models: Sequence[SAE],
        config: TrainConfig,
        *,
        data: dict[str, Any] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        log_path: str | os.PathLike | None = None,
        log_extra: dict[str, Any] | None = None,
        data_parallel: DataParallel | None | bool = True,
    ):
        models = list(models)
        check_models(models)
        self.cfg = config
        self.d_in = models[0].d_in
        # A transcoder's stream carries rows [x | y], its input and its target side by side,
        # so every row-wise piece of the loop (checks, shuffles, shards, samples) serves both.
        self.d_out = models[0].d_out if models[0].is_transcoder else None
        self.width = self.d_in + (self.d_out or 0)
        # True: join the launcher's process group when started by torchrun / accelerate.
        self.dp: DataParallel | None = (
            distributed.current() if data_parallel is True else (data_parallel or None)  # type: ignore[assignment]
        )
        self.is_main = self.dp is None or self.dp.is_main
        if self.dp is not None:
            self.device = self.dp.device(check_device(config.device))
        else:
            self.device = torch.device(check_device(config.device)) if config.device else models[0].device
        for m in models:
            m.to(self.device)
            m.train()
        self.slots = [_Slot(m, config, self.device) for m in models]
        self.data = dict(data or {})
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.autocast = _autocast(config, self.device)
        self.hook = (log_extra or {}).get("hook") or (data or {}).get("hook")
        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "batches": 0, "input_scale": 1.0, "output_scale": 1.0, "done": False,
                                      "skipped_rows": 0}
        self.histories: list[list[dict[str, Any]]] = [[] for _ in self.slots]
        self.log_extra = dict(log_extra or {})
        self.last_records: list[dict[str, Any]] | None = None
        self.final_checkpoint: Path | None = None
        # Step of the checkpoint on disk (None: none yet), named when a run is interrupted.
        self.checkpoint_step: int | None = None
        # Raw training rows (the initial sample) on which finish() sets BatchTopK thresholds.
        self.calibration: torch.Tensor | None = None
        # One writer per checkpoint directory, taken before the checkpoint is read and the log
        # truncated; the other ranks of a data-parallel run share rank 0's directory.
        self._lock = contextlib.ExitStack()
        self.log = JsonlLog(None)
        try:
            if self.checkpoint_dir is not None and self.is_main:
                self._lock.enter_context(directory_lock(self.checkpoint_dir, what="training run"))
            self._load(resume, log_path)
        except BaseException:
            self._lock.close()
            raise

    def _load(self, resume: bool, log_path: str | os.PathLike | None) -> None:
        """Restore the checkpoint (if any, after checking it is this run's) and open the log."""
        saved = checkpoint.read(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if saved is not None and not resume:
            raise CheckpointError(
                f"{checkpoint.checkpoint_path(self.checkpoint_dir)} already exists (a run at step "
                f"{saved[0].get('step')}); pass resume=True (--resume) to continue it, or use an empty directory"
            )
        if saved is not None:
            state, tensors = saved
            diffs = _differences(state, self._run_state())
            if diffs:
                raise CheckpointError(
                    f"the checkpoint in {self.checkpoint_dir} was written by another configuration:\n  "
                    + "\n  ".join(diffs)
                    + "\nresume with the same settings and data, or start fresh in an empty directory"
                )
            self._check_same_data(state["data"])
            try:
                _restore(self.slots, tensors, self.device)
                if CALIBRATION_KEY in tensors:
                    self.calibration = tensors[CALIBRATION_KEY].to(device=self.device, dtype=torch.float32)
            except (RuntimeError, KeyError, ValueError) as err:  # shapes or names that do not fit
                raise CheckpointError(
                    f"{checkpoint.checkpoint_path(self.checkpoint_dir)} holds tensors that do not fit these SAEs "
                    f"({str(err).splitlines()[0][:300]}); it was not written for this run: start fresh in an "
                    "empty directory"
                ) from None
            self.state.update({k: state.get(k, self.state[k]) for k in self.state})
            self.checkpoint_step = int(self.state["step"])
            for slot, last in zip(self.slots, state.get("metrics", [])):
                slot.last = dict(last)
        self.needs_init = saved is None
        # Only rank 0 of a data-parallel run writes the log and the checkpoints.
        self.log = JsonlLog(log_path if self.is_main else None,
                            resume_step=int(self.state["step"]) if saved is not None else None)

    def _check_same_data(self, saved: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other data; warn where its data cannot be told."""
        was, now = data_identity(saved), data_identity(self.data)
        if was is not None and now is not None and was != now:
            raise CheckpointError(
                f"the checkpoint in {self.checkpoint_dir} was trained on other data: on "
                f"{describe_data(saved)}, not on {describe_data(self.data)}. Resume with the data it was "
                "trained on, or start afresh in a new checkpoint_dir"
            )
        if was is None and now is not None and self.is_main:
            warnings.warn(
                f"the checkpoint in {self.checkpoint_dir} records no identity of its data (written before "
                f"checkpoints did), so resuming on {describe_data(self.data)} cannot be checked to be the same "
                "data; resume only with the data it was trained on", UserWarning, stacklevel=4,
            )

    # ------------------------------------------------------------ state

    @property
    def batches(self) -> int:
        """Batches of the stream consumed so far (where a resumed stream restarts)."""
        return int(self.state["batches"])

    @property
    def tokens(self) -> int:
        return int(self.state["tokens"])

    @property
    def input_scale(self) -> float:
        return float(self.state["input_scale"])

    @property
    def done(self) -> bool:
        return bool(self.state["done"]) or self.tokens >= self.cfg.total_tokens

    def _run_state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "saes": [{"architecture": s.sae.architecture, "config": s.sae.arch_config()} for s in self.slots],
            "data": self.data,
            # The last logged numbers, so a finished run resumed later still reports them.
            "metrics": [s.last for s in self.slots],
            **self.state,
        }

    # ------------------------------------------------------------ loop

    @property
    def output_scale(self) -> float:
        """A transcoder's training scale of its target (1.0 for SAEs: their input scale serves both)."""
        return float(self.state.get("output_scale", 1.0))

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x [rows, d_in], y [rows, d_out])`` of a transcoder's rows; ``(rows, None)`` for an SAE."""
        if self.d_out is None:
            return rows, None
        return rows[:, : self.d_in], rows[:, self.d_in :]

    def initialise(self, sample: torch.Tensor) -> None:
        """Normalisation scale, tied weights and b_dec from the first rows ``[rows, width]``."""
        sample, target = self.split(sample[: self.cfg.init_rows].to(device=self.device, dtype=torch.float32))
        self.state["input_scale"] = self._input_scale(sample)
        scale = self.input_scale
        if target is not None:
            self.state["output_scale"] = self._input_scale(target)
            target = target * self.output_scale
        if any(_needs_calibration(s.sae) for s in self.slots):
            self.calibration = sample.clone()
        for s in self.slots:
            _initialise(s.sae, sample * scale, self.cfg, target)
            if self.dp is not None:
                self.dp.broadcast_module(s.sae)  # every rank starts from rank 0's weights
        self.needs_init = False

    def _input_scale(self, sample: torch.Tensor) -> float:
        """The training scale of the inputs, warning about rows with nothing to learn.

        ``normalize_input`` sets it; without it, rows that vary on a scale float32 cannot
        train on (tiny or huge) are scaled anyway, and the scale folded in alike, since the
        unscaled run would learn nothing (rows at 1e-30 ended with an fvu in the thousands).
        """
        problem = spread_warning(sample)
        if problem is not None and self.is_main:
            warnings.warn(problem, DegenerateDataWarning, stacklevel=4)
        if self.cfg.normalize_input:
            return normalisation_scale(sample)
        if problem is None and needs_rescaling(sample) and self.cfg.init_weights and self.cfg.b_dec_init != "keep":
            scale = normalisation_scale(sample)
            if self.is_main:
                warnings.warn(
                    f"the training rows vary on a scale of {1 / scale * sample.shape[-1] ** 0.5:.3g}, which float32 "
                    f"training cannot use as it is (squares underflow or overflow): they are scaled by {scale:.3g} "
                    "for training and the scale folded into the weights at the end, as normalize_input=True does",
                    DegenerateDataWarning, stacklevel=4,
                )
            return scale
        return 1.0

    def step(self, x: torch.Tensor) -> list[dict[str, Any]] | None:
        """One optimiser step of every SAE on the checked batch ``x [batch, d_in]``.

        Returns the logged records on logging steps, else None. Checkpoints when due.
        """
        if self.needs_init:
            raise RuntimeError("call initialise(sample) before the first step of a fresh run")
        step = int(self.state["step"]) + 1
        x = self._checked(x, step)
        if x is None:  # every row was non-finite and on_nonfinite="skip": nothing to learn from
            self.state["batches"] = self.batches + 1
            return None
        x, y = self.split(x.to(device=self.device, dtype=torch.float32, non_blocking=True))
        scale = self.input_scale
        if scale != 1.0:
            x = x * scale
        if y is not None and self.output_scale != 1.0:
            y = y * self.output_scale
        n = x.shape[0]
        # Log every log_every steps, the first step, and the last one (so results report it).
        want = step % self.cfg.log_every == 0 or step == 1 or self.tokens + n >= self.cfg.total_tokens
        lr_factor = self.cfg.lr_factor(self.tokens, n)
        variance = batch_variance(x if y is None else y)  # of the whole (global) batch's target, on every rank
        local = self.dp.shard(x) if self.dp is not None else x
        local_y = self.dp.shard(y) if self.dp is not None and y is not None else y
        for s in self.slots:  # coefficient warm-ups: a function of the tokens, so resumes repeat it exactly
            s.sae.set_training_progress((self.tokens + n) / self.cfg.total_tokens)
        records = [s.step(local, variance, lr_factor, self.autocast, want, self.dp, n, local_y) for s in self.slots]
        self.state["tokens"] = self.tokens + n
        self.state["step"] = step
        self.state["batches"] = self.batches + 1
        logged = None
        if want:
            logged = []
            for i, (s, rec) in enumerate(zip(self.slots, records)):
                assert rec is not None
                full = {"step": step, "tokens": self.tokens, **self.log_extra, "sae": i,
                        "architecture": s.sae.architecture, **rec}
                self.log.write(full)
                self.histories[i].append(full)
                logged.append(full)
            self.last_records = logged
        if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
        return logged

    def _checked(self, raw: Any, step: int) -> torch.Tensor | None:
        """The batch as ``[rows, width]``; non-finite rows raise, or are dropped with a warning."""
        # Position in the stream: rows trained on plus rows dropped before.
        where = {"hook": self.hook, "first_token": self.tokens + int(self.state["skipped_rows"]),
                 "target_from": self.d_in if self.d_out is not None else None}
        if self.cfg.on_nonfinite == "raise":
            return check_batch(raw, self.width, self.batches, **where)
        try:
            return check_batch(raw, self.width, self.batches, **where)
        except NonFiniteError as err:
            x, bad = finite_rows(raw, self.width)
            self.state["skipped_rows"] = int(self.state["skipped_rows"]) + len(bad)
            usable = x.shape[0] >= max(2, self.dp.world if self.dp is not None else 1)
            if self.is_main:
                then = (f"step {step} trains on the other {x.shape[0]} rows" if usable
                        else "the batch is skipped (too few finite rows)")
                warnings.warn(f"{err}; on_nonfinite='skip': {then}", stacklevel=3)
            return x if usable else None

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        path = self._write_checkpoint()
        self.checkpoint_step = int(self.state["step"])
        return path

    def _write_checkpoint(self) -> Path:
        assert self.checkpoint_dir is not None
        if self.dp is None:
            return checkpoint.write(self.checkpoint_dir, self._run_state(), _state_tensors(self.slots, self.calibration))
        # Rank 0 writes; every rank learns whether it could, so that a full disk stops the
        # whole run with rank 0's error instead of leaving the others waiting in a collective.
        failure: BaseException | None = None
        if self.is_main:
            try:
                checkpoint.write(self.checkpoint_dir, self._run_state(), _state_tensors(self.slots, self.calibration))
            except Exception as err:  # re-raised below, after the other ranks have heard
                failure = err
        if self.dp.any_(torch.tensor([failure is not None], device=self.device)).item():
            if failure is not None:
                raise failure
            raise CheckpointError(
                f"rank 0 could not write the checkpoint in {self.checkpoint_dir}; its error says why "
                "(the previous checkpoint is intact)"
            )
        return checkpoint.checkpoint_path(self.checkpoint_dir)

    def finish(self, stopped_early: bool = False) -> list[TrainResult]:
        """Final checkpoint, set BatchTopK thresholds from the final weights, fold the
        normalisation into the weights, close the log.

        The checkpoint holds the training state (θ as the training EMA left it); each SAE
        with a learnt threshold then gets θ from
        :meth:`~saes.architectures.batchtopk.LearntThreshold.calibrate_threshold` on the run's
        first training rows (kept in the checkpoint, so a resumed run ends with the same θ).
        """
        self.state["done"] = True
        try:
            self.final_checkpoint = self.save_checkpoint()
            if self.dp is not None:
                self.dp.barrier()  # no rank returns before the final checkpoint exists
        finally:
            self.close()
        results = []
        for s, hist in zip(self.slots, self.histories):
            s.sae.eval()
            if self.calibration is not None and _needs_calibration(s.sae):
                # θ from the final weights: the EMA of training trails them, and would leave
                # short runs with too few latents per token at inference.
                s.sae.calibrate_threshold(self.calibration * self.input_scale)  # type: ignore[attr-defined]
            if self.input_scale != 1.0:
                s.sae.fold_input_scale(self.input_scale)
            if self.output_scale != 1.0:
                s.sae.fold_output_scale(self.output_scale)
            results.append(
                TrainResult(
                    sae=s.sae,
                    steps=int(self.state["step"]),
                    tokens=self.tokens,
                    metrics=dict(s.last),
                    history=hist,
                    input_scale=self.input_scale,
                    output_scale=self.output_scale,
                    checkpoint=self.final_checkpoint,
                    stopped_early=stopped_early,
                )
            )
        return results

    def close(self) -> None:
        """Release the log and the directory lock without finishing (after an interruption)."""
        try:
            self.log.close()
        finally:
            self._lock.close()
