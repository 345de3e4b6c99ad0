"""Training settings, one dataclass for every architecture."""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from saes.errors import ConfigError

B_DEC_INITS = ("geometric_median", "mean", "zeros", "keep")
AUTOCASTS = ("auto", "bfloat16", "none")
ON_NONFINITE = ("raise", "skip")

# Settings that only change how a run is observed or saved, not the weights it produces:
# a resumed run may change them freely.
RUN_ONLY_FIELDS = ("log_every", "checkpoint_every", "device")


@dataclass
class TrainConfig:
    """How :func:`saes.train` trains.

    Each field says what it does in its ``metadata["help"]``, the one text behind both the
    attribute list below and ``interp train --help`` (the command line is generated from
    these fields; ``flag``, ``choices`` and ``cli_default`` there are the command's).

    Example:
        >>> from saes import TrainConfig
        >>> TrainConfig(batch_size=256, total_tokens=100_000, lr=1e-3).steps
        391
    """

    batch_size: int = field(default=4096, metadata={"help": "rows (tokens) per optimiser step"})
    total_tokens: int = field(default=10_000_000, metadata={
        "help": "stop after this many training rows (tokens)", "flag": "--tokens", "metavar": "N"})
    lr: float | None = field(default=None, metadata={
        "help": "Adam learning rate", "default_text": "2e-4 / sqrt(d_sae / 16384) per SAE, the width scaling of "
        "Gao et al."})
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={
        "help": "Adam's (beta1, beta2)", "cli": False})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam's epsilon"})
    warmup_frac: float = field(default=0.01, metadata={
        "help": "fraction of total_tokens over which the learning rate rises linearly from 0"})
    decay_frac: float = field(default=0.2, metadata={
        "help": "final fraction of total_tokens over which the learning rate decays linearly to 0"})
    grad_clip: float | None = field(default=1.0, metadata={
        "help": "max global gradient norm per SAE (None: no clipping)", "cli": False})
    seed: int = field(default=0, metadata={"help": "weight initialisation and data order"})
    dead_tokens: int = field(default=10_000_000, metadata={
        "help": "a latent that has not fired for this many tokens counts as dead (AuxK target and dead "
        "fraction); counted in tokens, not steps, so the batch size does not change what dead means"})
    auxk: bool = field(default=True, metadata={
        "help": "use the AuxK loss on dead latents (architectures without pre-activations, like matching "
        "pursuit, never use it)", "off_help": "switch the AuxK loss off"})
    auxk_alpha: float = field(default=1 / 32, metadata={"help": "AuxK weight (Gao et al.: 1/32)"})
    k_aux: int | None = field(default=None, metadata={
        "help": "dead latents used by AuxK", "default_text": "d_in / 2, at most d_sae"})
    init_weights: bool = field(default=True, metadata={
        "help": "re-draw tied unit-norm weights from seed before training; False keeps the SAE's current "
        "weights", "cli": False})
    b_dec_init: str = field(default="geometric_median", metadata={
        "help": "how the decoder bias starts, computed on the first init_rows training rows",
        "choices": B_DEC_INITS})
    init_rows: int = field(default=8192, metadata={
        "help": "rows used for the decoder-bias and normalisation estimates (at most one pass over data "
        "that holds fewer)"})
    normalize_input: bool = field(default=False, metadata={
        "help": "scale inputs by one constant so that E||x - mean x||^2 = d_in during training (measured from "
        "the mean, so a shared offset does not set it); the constant is folded into the weights when training "
        "ends, so the saved SAE acts on raw activations"})
    autocast: str = field(default="auto", metadata={
        "help": "auto: bfloat16 autocast on CUDA only; bfloat16: the same, explicit; none: off. Never "
        "used on CPU", "choices": AUTOCASTS})
    device: str | None = field(default=None, metadata={
        "help": "where training runs, e.g. cpu, cuda or cuda:1",
        "default_text": "the first SAE's device; interp train: the model's when live, else the CPU"})
    log_every: int = field(default=50, metadata={"help": "steps between metric records and progress-bar updates"})
    # The command line always has a checkpoint directory (--out), so it checkpoints as it goes.
    checkpoint_every: int | None = field(default=None, metadata={
        "help": "steps between checkpoints (with a checkpoint directory); None: only at the end",
        "cli_default": 1000})
    on_nonfinite: str = field(default="raise", metadata={
        "help": "what a NaN or inf activation does: raise stops the run with a NonFiniteError naming the "
        "step, hook, batch row and stream token; skip drops the bad rows (warning with the same details) "
        "and trains on the rest", "choices": ON_NONFINITE})

    def __post_init__(self) -> None:
        _check_types(self)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size}: use at least 2 (the loss normalises by batch variance)")
        if self.total_tokens < 1:
            raise ConfigError(f"total_tokens={self.total_tokens} must be positive")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be positive (or None for the width-scaled default)")
        if not (0 <= self.warmup_frac <= 1 and 0 <= self.decay_frac <= 1):
            raise ConfigError("warmup_frac and decay_frac are fractions of total_tokens in [0, 1]")
        if self.warmup_frac + self.decay_frac > 1:
            raise ConfigError(
                f"warmup_frac + decay_frac = {self.warmup_frac + self.decay_frac} > 1: the warm-up and the "
                "decay would overlap; shorten one"
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ConfigError(f"b_dec_init={self.b_dec_init!r} is unknown; use one of {B_DEC_INITS}")
        if self.autocast not in AUTOCASTS:
            raise ConfigError(f"autocast={self.autocast!r} is unknown; use one of {AUTOCASTS}")
        if self.dead_tokens < 1:
            raise ConfigError(f"dead_tokens={self.dead_tokens} must be positive")
        if self.log_every < 1:
            raise ConfigError(f"log_every={self.log_every} must be at least 1")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} must be at least 1 (or None)")
        if self.k_aux is not None and self.k_aux < 1:
            raise ConfigError(f"k_aux={self.k_aux} must be at least 1 (or None for d_in / 2)")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"on_nonfinite={self.on_nonfinite!r} is unknown; use one of {ON_NONFINITE}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ConfigError(f"adam_eps={self.adam_eps} must be a positive number")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas={list(self.adam_betas)}: each beta must be in [0, 1)")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"grad_clip={self.grad_clip} must be positive (or None for no clipping)")
        if not (math.isfinite(self.auxk_alpha) and self.auxk_alpha >= 0):
            raise ConfigError(f"auxk_alpha={self.auxk_alpha} must be a non-negative number")
        if self.init_rows < 1:
            raise ConfigError(f"init_rows={self.init_rows} must be at least 1")
        if self.lr is not None and not math.isfinite(self.lr):
            raise ConfigError(f"lr={self.lr} must be a finite positive number")

    @property
    def steps(self) -> int:
        """Optimiser steps for a source of full batches."""
        return math.ceil(self.total_tokens / self.batch_size)

    def lr_for(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def lr_factor(self, tokens_seen: int, batch_rows: int) -> float:
        """Schedule multiplier for the step that starts after ``tokens_seen`` rows.

        Linear warm-up over the first ``warmup_frac`` of the tokens (counting the current
        batch, so the first step already moves), constant, then linear decay to 0 over
        the last ``decay_frac``.
        """
        total = self.total_tokens
        f = 1.0
        warm = self.warmup_frac * total
        if warm > 0:
            f = min(f, (tokens_seen + batch_rows) / warm)
        decay = self.decay_frac * total
        if decay > 0 and tokens_seen > total - decay:
            f = min(f, max(0.0, (total - tokens_seen) / decay))
        return f

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}; known: {sorted(names)}")
        return cls(**d)



def _attribute_docs(cls: type) -> str:
    """The docstring's attribute list, from each field's help (the text --help shows too)."""
    lines = ["", "    Attributes:"]
    for f in fields(cls):
        default = f.metadata.get("default_text") if f.default is None else None
        lines.append(f"        {f.name}: {f.metadata['help']}" + (f"; None: {default}" if default else ""))
    return "\n".join(lines) + "\n"


TrainConfig.__doc__ = (TrainConfig.__doc__ or "") + _attribute_docs(TrainConfig)

# Field -> (accepted types, what to write). Checked before any arithmetic on the values, so
# a wrong type is a ConfigError naming the field, never a TypeError from a comparison.
_INT, _REAL = (int,), (int, float)
_TYPES: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "batch_size": (_INT, False, "an integer"),
    "total_tokens": (_INT, False, "an integer"),
    "lr": (_REAL, True, "a number or None"),
    "adam_eps": (_REAL, False, "a number"),
    "warmup_frac": (_REAL, False, "a number in [0, 1]"),
    "decay_frac": (_REAL, False, "a number in [0, 1]"),
    "grad_clip": (_REAL, True, "a number or None"),
    "seed": (_INT, False, "an integer"),
    "dead_tokens": (_INT, False, "an integer"),
    "auxk": ((bool,), False, "True or False"),
    "auxk_alpha": (_REAL, False, "a number"),
    "k_aux": (_INT, True, "an integer or None"),
    "init_weights": ((bool,), False, "True or False"),
    "b_dec_init": ((str,), False, f"one of {B_DEC_INITS}"),
    "init_rows": (_INT, False, "an integer"),
    "normalize_input": ((bool,), False, "True or False"),
    "autocast": ((str,), False, f"one of {AUTOCASTS}"),
    "device": ((str,), True, "a device name like 'cpu' or 'cuda:0', or None"),
    "log_every": (_INT, False, "an integer"),
    "checkpoint_every": (_INT, True, "an integer or None"),
    "on_nonfinite": ((str,), False, f"one of {ON_NONFINITE}"),
}


def _normalised(value: Any, types: tuple[type, ...]) -> Any:
    """``value`` as a plain int / float / str if it is one in substance (numpy scalars, a
    torch.device), else None. bool is an int in Python; a flag where a count is meant is a
    mistake, not a 1."""
    if isinstance(value, bool):
        return value if bool in types else None
    if int in types:
        try:
            return operator.index(value)
        except TypeError:
            pass
    if float in types and isinstance(value, numbers.Real):
        return float(value)
    if str in types:
        if isinstance(value, str):
            return value
        if type(value).__name__ == "device" and type(value).__module__.startswith("torch"):
            return str(value)  # torch.device("cuda:1") -> "cuda:1" (the config is saved as JSON)
    return None


def _check_types(cfg: TrainConfig) -> None:
    for name, (types, optional, what) in _TYPES.items():
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        normal = _normalised(value, types)
        if normal is None:
            raise ConfigError(f"TrainConfig.{name}={value!r} ({type(value).__name__}): {name} must be {what}")
        if isinstance(normal, float) and not math.isfinite(normal):
            raise ConfigError(f"TrainConfig.{name}={value!r} must be a finite number")
        setattr(cfg, name, normal)
    betas = cfg.adam_betas
    if (
        not isinstance(betas, (tuple, list))
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b) for b in betas)
    ):
        raise ConfigError(f"TrainConfig.adam_betas={betas!r} must be two numbers in [0, 1), e.g. (0.9, 0.999)")
