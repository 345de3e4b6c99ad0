"""The SAE base class every architecture derives from.

Notation (shapes in jaxtyping style): ``x [batch, d_in]`` activations, ``h [batch, d_sae]``
pre-activations ``h = (x - b_dec) @ W_enc + b_enc``, codes as ``values/indices [batch, k]``
(the sparse form used end to end) or dense ``z [batch, d_sae]``, reconstruction
``x_hat = z @ W_dec + b_dec``. A transcoder (built with ``d_out``, see
:attr:`SAE.is_transcoder`) reconstructs another hook's ``y [batch, d_out]`` instead:
``h = x @ W_enc + b_enc``, ``y_hat = z @ W_dec + b_dec (+ x @ W_skip.T)``.

An architecture supplies only:

* :meth:`SAE.encode_sparse` (inference codes),
* :meth:`SAE.training_forward` (codes, reconstruction and its own loss terms for one batch),
* :meth:`SAE.arch_config` (the settings that define it, for files and checkpoints).

Everything else (batching, optimiser, schedule, AuxK, decoder normalisation,
checkpoints, metrics) is the trainer's, in :mod:`saes.training.trainer`.

Public methods accept any leading batch shape ``[..., d_in]`` and give back the same
leading shape.
"""
from __future__ import annotations

import inspect
import math
import operator
import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from saes import kernels
from saes.architectures import registry
from saes.dtypes import parse_dtype
from saes.errors import ConfigError, ShapeMismatchError

# Model/hook description carried in files (SAELens names them the same).
METADATA_KEYS = (
    "model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "dataset_path",
)


class StepOutput:
    """What an architecture hands the trainer for one training batch.

    Attributes:
        x_hat: ``[batch, d_out]`` full reconstruction (decoded with ``b_dec``; ``d_out = d_in``
            for an SAE; a skip-transcoder's skip path included).
        values, indices: ``[batch, k']`` codes; padding entries have value 0.
        pre_acts: ``[batch, d_sae]`` pre-activations for AuxK, or None where the
            architecture has none (matching pursuit), which switches AuxK off. May be
            given as a zero-argument function: it is then called on first access only,
            so a step without AuxK never pays for dense pre-activations the fused
            encoder did not keep.
        losses: named loss terms, already weighted; the trainer sums them.
        metrics: extra numbers to log (floats or 0-d tensors).
        aux_codes: optional ``(dead [d_sae] bool, k) -> (values, indices)``: ReLU codes
            of the top-k pre-activations among the dead latents only, differentiable with
            a sparse backward. Cheaper than masking dense ``pre_acts`` (the products run
            over the dead latents alone); AuxK may use it instead.
        fired: optional ``[d_sae]`` bool, the latents with a non-zero code in the batch,
            where the architecture knows it more cheaply than the trainer's scan of
            ``indices`` (dense codes: one reduction instead of listing every entry).
    """

    def __init__(
        self,
        x_hat: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        pre_acts: torch.Tensor | Callable[[], torch.Tensor] | None,
        losses: dict[str, torch.Tensor],
        metrics: dict[str, Any] | None = None,
        aux_codes: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
        fired: torch.Tensor | None = None,
    ):
        self.x_hat = x_hat
        self.values = values
        self.indices = indices
        self._pre_acts = pre_acts
        self.losses = losses
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.aux_codes = aux_codes
        self.fired = fired

    @property
    def pre_acts(self) -> torch.Tensor | None:
        if callable(self._pre_acts):
            self._pre_acts = self._pre_acts()
        return self._pre_acts

    @pre_acts.setter
    def pre_acts(self, value: torch.Tensor | Callable[[], torch.Tensor] | None) -> None:
        self._pre_acts = value


def batch_variance(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``||x - mean(x)||^2``: the normaliser of the reconstruction loss.

    A single-row batch has no spread; it falls back on ``||x||^2``.
    """
    if x.shape[0] < 2:
        return x.pow(2).sum(-1).mean().clamp_min(1e-12)
    return (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)


def normalized_mse(x_hat: torch.Tensor, x: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``mean ||x - x_hat||^2 / variance`` (the batch FVU when ``variance`` is the batch's)."""
    return (x_hat - x).pow(2).sum(-1).mean() / variance


def flatten_rows(x: torch.Tensor, d: int, who: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    if x.shape[-1] != d:
        raise ShapeMismatchError(
            f"{who} expects activations [..., {d}] but got shape {list(x.shape)}; "
            f"this SAE was built for d_in={d}: use the hook it was trained on"
        )
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, d), lead


def dense_codes(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Dense ``[batch, d_sae]`` codes from ``values/indices [batch, k]`` (repeats add up)."""
    z = values.new_zeros(values.shape[0], d_sae)
    return z.scatter_add(1, indices, values)


class SAE(nn.Module):
    """Base sparse autoencoder: parameters, encode/decode plumbing and file I/O.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
    ``b_dec [d_in]``. Decoder rows start as random unit vectors and the encoder as their
    transpose (tied initialisation; untied afterwards).

    Attributes:
        metadata: where the activations came from (``model_name``, ``hook_name``, ...);
            saved with the SAE.
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (True for everything this
            package trains; some loaded files turn it off).

    Example:
        >>> import torch, saes
        >>> sae = saes.TopKSAE(d_in=8, d_sae=32, k=4)
        >>> x = torch.randn(5, 8)
        >>> sae.encode(x).shape, (sae.encode(x) > 0).sum(-1).max().item() <= 4
        (torch.Size([5, 32]), True)
        >>> sae(x).shape
        torch.Size([5, 8])
    """

    architecture: ClassVar[str] = "base"
    # The SAELens architecture name these weights load as (see saes.formats.native).
    saelens_architecture: ClassVar[str] = "standard"
    # False where the architecture has no pre-activations to run AuxK on.
    supports_auxk: ClassVar[bool] = True
    # False for inference-only architectures read from other libraries' files.
    trainable: ClassVar[bool] = True
    # Whether the trainer keeps decoder rows at unit norm (projecting the gradient, then
    # re-normalising after each step, and at initialisation). A family whose penalty
    # weights codes by decoder-row norms may free the rows, per instance.
    unit_norm_decoder: bool = True
    # False where the encoding itself reads the decoder in input space (matching pursuit),
    # so the family cannot map one hook onto another (see the transcoder notes below).
    can_transcode: ClassVar[bool] = True

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        d_out: int | None = None,
        skip: bool = False,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        if as_count(d_in, "d_in") < 1 or as_count(d_sae, "d_sae") < 1:
            raise ConfigError(f"d_in and d_sae must be positive, got d_in={d_in}, d_sae={d_sae}")
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.d_out, self.skip = self._check_transcoder(d_out, skip)
        # A transcoder's b_dec lives in the output space, so it is never subtracted from the input.
        self.apply_b_dec_to_input = not self.is_transcoder
        self.metadata: dict[str, Any] = {k: None for k in METADATA_KEYS}
        self.metadata.update(metadata or {})
        dt = parse_dtype(dtype)
        try:
            self.W_dec = nn.Parameter(torch.empty(self.d_sae, self.d_out, dtype=dt, device=device))
            self.b_dec = nn.Parameter(torch.zeros(self.d_out, dtype=dt, device=device))
            # [d_out, d_in] as SAELens, sparsify and circuit-tracer store it (output = x @ W_skip.T).
            self.W_skip = (nn.Parameter(torch.zeros(self.d_out, self.d_in, dtype=dt, device=device))
                           if self.skip else None)
            self._build_encoder(dt, torch.device(device))
        except (RuntimeError, MemoryError) as err:  # out of memory, or a device that does not exist
            gib = self.d_in * self.d_sae * (dt.itemsize if hasattr(dt, "itemsize") else 4) / 2**30
            raise ConfigError(
                f"cannot create an SAE with d_in={self.d_in}, d_sae={self.d_sae} on {device!r} "
                f"({gib:,.1f} GiB per weight matrix in {dt}): {str(err).splitlines()[0][:200]}; "
                "use a smaller d_sae, another dtype or another device"
            ) from None
        self.reset_parameters()

    def _check_transcoder(self, d_out: int | None, skip: bool) -> tuple[int, bool]:
        """``(d_out, skip)`` checked: ``d_out`` given makes a transcoder (see :attr:`is_transcoder`)."""
        if not isinstance(skip, bool):
            raise ConfigError(f"skip={skip!r} must be True or False")
        self._transcoder = d_out is not None
        if not self._transcoder:
            if skip:
                raise ConfigError("skip=True adds a linear path from the input hook to the output hook, which "
                                  "only a transcoder has; give d_out (the output hook's width) as well")
            return self.d_in, False
        if not self.can_transcode:
            raise ConfigError(f"{type(self).__name__} cannot be a transcoder: its encoding reads the decoder in the "
                              "input's space; use a TopK, BatchTopK or Matryoshka transcoder instead")
        if as_count(d_out, "d_out") < 1:
            raise ConfigError(f"d_out={d_out} must be positive (the width of the hook the transcoder writes)")
        return int(d_out), skip  # type: ignore[arg-type]

    @classmethod
    def trains_as_transcoder(cls) -> bool:
        """Whether the family can be trained as a transcoder: it may be one, and its training
        step takes the reconstruction target (see :meth:`training_forward`)."""
        return cls.trainable and cls.can_transcode and "target" in inspect.signature(cls.training_forward).parameters

    @property
    def is_transcoder(self) -> bool:
        """Whether this dictionary reads one hook and reconstructs another (built with ``d_out``).

        A transcoder encodes ``x [batch, d_in]`` at its input hook (``metadata["hook_name"]``)
        and decodes to ``y_hat [batch, d_out]`` at its output hook
        (``metadata["hook_name_out"]``); ``W_dec`` is ``[d_sae, d_out]`` and ``b_dec``
        ``[d_out]``, never subtracted from the input. A skip-transcoder (``skip=True``, Paulo
        et al. 2025) adds ``x @ W_skip.T`` with ``W_skip [d_out, d_in]``, starting at zero.
        Every encoder family can be one; only the reconstruction target changes.
        """
        return self._transcoder

    # ------------------------------------------------------------ parameters

    def _build_encoder(self, dtype: torch.dtype, device: torch.device) -> None:
        """Create the encoder parameters (overridden by tied architectures)."""
        self.W_enc = nn.Parameter(torch.empty(self.d_in, self.d_sae, dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, dtype=dtype, device=device))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder rows, ``W_enc = W_dec.T``, zero biases.

        A transcoder's encoder reads another space than its decoder writes, so its columns
        are a second random unit draw instead, and its skip matrix starts at zero.
        ``generator`` (a CPU generator) makes the draw reproducible; the trainer passes
        one seeded from its config.
        """
        w = torch.randn(self.d_sae, self.d_out, generator=generator, dtype=torch.float32)
        w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(w)
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()
        if isinstance(self._parameters.get("W_enc"), nn.Parameter):
            if self.is_transcoder:
                w = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32)
                w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.W_enc.copy_(w.T)
        if isinstance(self._parameters.get("b_enc"), nn.Parameter):
            self.b_enc.zero_()

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def arch_config(self) -> dict[str, Any]:
        """The settings that define this SAE (JSON-able); ``type(self)(**cfg)`` rebuilds it."""
        return {"d_in": self.d_in, "d_sae": self.d_sae, **self.transcoder_config()}

    def transcoder_config(self) -> dict[str, Any]:
        """``d_out`` (and ``skip``) of a transcoder, for :meth:`arch_config`; ``{}`` for an SAE, so
        files and checkpoints of SAEs read as before."""
        if not self.is_transcoder:
            return {}
        return {"d_out": self.d_out, **({"skip": True} if self.skip else {})}

    # -------------------------------------------------------------- encoding

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``h [batch, d_sae] = (x - b_dec) @ W_enc + b_enc`` for ``x [batch, d_in]``."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def _encode_sparse(self, x: torch.Tensor, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference codes for flat ``x [batch, d_in]``: ``(values, indices) [batch, k']``."""
        raise NotImplementedError

    def encode_sparse(self, x: torch.Tensor, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes as ``(values [..., k'], indices [..., k'])``; zero values are padding."""
        flat, lead = flatten_rows(x, self.d_in, f"{type(self).__name__}.encode_sparse")
        v, i = self._encode_sparse(flat, **options)
        return v.reshape(*lead, v.shape[-1]), i.reshape(*lead, i.shape[-1])

    def encode(self, x: torch.Tensor, **options: Any) -> torch.Tensor:
        """Dense codes ``z [..., d_sae]``."""
        flat, lead = flatten_rows(x, self.d_in, f"{type(self).__name__}.encode")
        v, i = self._encode_sparse(flat, **options)
        return dense_codes(v, i, self.d_sae).reshape(*lead, self.d_sae)

    # -------------------------------------------------------------- decoding

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``x_hat [..., d_out]`` from codes ``values/indices [..., k']``, reading only k' rows
        (``d_out = d_in`` for an SAE; a skip-transcoder's skip path is :meth:`add_skip`'s)."""
        lead = tuple(values.shape[:-1])
        v = values.reshape(-1, values.shape[-1])
        i = indices.reshape(-1, indices.shape[-1])
        out = kernels.sparse_decode(v, i, self.W_dec) + self.b_dec
        return out.reshape(*lead, self.d_out)

    def add_skip(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_hat + x @ W_skip.T`` for a skip-transcoder (``x [batch, d_in]`` its input,
        ``x_hat [batch, d_out]`` the decoded codes); ``x_hat`` unchanged otherwise."""
        if self.W_skip is None:
            return x_hat
        return x_hat + x.to(self.W_skip.dtype) @ self.W_skip.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x_hat [..., d_in] = z @ W_dec + b_dec`` for dense ``z [..., d_sae]``."""
        if z.shape[-1] != self.d_sae:
            raise ShapeMismatchError(
                f"decode expects codes [..., {self.d_sae}] (d_sae) but got shape {list(z.shape)}"
            )
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor, **options: Any) -> torch.Tensor:
        """Reconstruction ``x_hat [..., d_out]`` of ``x [..., d_in]`` (a transcoder's output
        hook, its skip path included)."""
        flat, lead = flatten_rows(x, self.d_in, f"{type(self).__name__}.forward")
        v, i = self._encode_sparse(flat, **options)
        return self.add_skip(self.decode_sparse(v, i), flat).reshape(*lead, self.d_out)

    # -------------------------------------------------------------- training

    def set_training_progress(self, fraction: float) -> None:
        """Told by the trainer before each step: the fraction of the run's tokens trained
        once that step ends (the current batch counted, as in the learning-rate warm-up).
        Families with coefficients that warm up read it; by default it is ignored. It is a
        function of the tokens seen, which checkpoints restore, so resumes need no more."""

    def training_forward(self, x: torch.Tensor, variance: torch.Tensor,
                         target: torch.Tensor | None = None) -> StepOutput:
        """Codes, reconstruction and loss terms for one flat batch ``x [batch, d_in]``.

        ``target [batch, d_out]`` is what a transcoder reconstructs (the output hook's
        activations of the same tokens); None means ``x`` itself. ``variance`` is
        :func:`batch_variance` of the target; the reconstruction loss is the normalised MSE
        ``||target - x_hat||^2 / variance``. The default encodes with :meth:`_train_codes`
        and decodes once. A family that overrides this method takes ``target`` too to be
        trainable as a transcoder (the trainer checks).
        """
        enc = self._train_codes(x)
        x_hat = self.add_skip(self.decode_sparse(enc.values, enc.indices), x)
        y = x if target is None else target
        return StepOutput(
            x_hat, enc.values, enc.indices, enc.pre_acts, {"mse": normalized_mse(x_hat, y, variance)},
            aux_codes=self._aux_codes(x),
        )

    def _encoder_args(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(W_enc, b_enc, b_dec or None)`` as :func:`saes.kernels.encode` takes them."""
        return self.W_enc, self.b_enc, (self.b_dec if self.apply_b_dec_to_input else None)

    def _train_codes(self, x: torch.Tensor) -> kernels.Encoded:
        """Training-time codes of flat ``x``. The default runs :meth:`_select` on dense
        pre-activations; architectures with a fused kernel override it."""
        h = self.pre_acts(x)
        values, indices = self._select(h)
        return kernels.Encoded(values, indices, lambda: h)

    def _aux_codes(self, x: torch.Tensor) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        """AuxK codes among the dead latents, through the fused encoder (see StepOutput)."""

        def codes(dead: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            columns = dead.nonzero().squeeze(1)
            enc = kernels.encode(x, *self._encoder_args(), min(int(k), columns.numel()), columns=columns)
            return enc.values, enc.indices

        return codes

    def _select(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time sparse codes from pre-activations (architecture-specific)."""
        raise NotImplementedError

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` act on raw ``x`` with the same codes.

        ``h = (s x - b) W + c = (x - b/s)(s W) + c`` and the raw reconstruction is
        ``x_hat / s``: so ``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``. A transcoder's
        output is scaled on its own (:meth:`fold_output_scale`): here only its encoder
        and skip matrix read the input, so ``W_enc *= s``, ``W_skip *= s``.
        """
        if isinstance(self._parameters.get("W_enc"), nn.Parameter):
            self.W_enc.mul_(scale)
        if self.is_transcoder:
            if self.W_skip is not None:
                self.W_skip.mul_(scale)
            return
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def fold_output_scale(self, scale: float) -> None:
        """Make a transcoder trained to output ``scale * y`` output raw ``y``: ``W_dec``,
        ``b_dec`` and ``W_skip`` divided by ``scale`` (codes unchanged)."""
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
        if self.W_skip is not None:
            self.W_skip.div_(scale)

    # --------------------------------------------------------------- files

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens layout) atomically
        (:func:`saes.formats.native.save`)."""
        registry.saver()(self, directory)

    def extra_repr(self) -> str:
        cfg = self.arch_config()
        return ", ".join(f"{k}={v}" for k, v in cfg.items())


def as_count(value: Any, what: str) -> int:
    """``value`` as an int, or a ConfigError: sizes and counts must be integers, not 3.5,
    "8" or True (which Python would otherwise turn into 3, a crash, or 1)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{what}={value!r} ({type(value).__name__}) must be an integer") from None


def check_k(k: int, d_sae: int, what: str = "k") -> int:
    k = as_count(k, what)
    if k < 1:
        raise ConfigError(f"{what}={k} must be at least 1")
    if k >= d_sae:
        raise ConfigError(
            f"{what}={k} must be smaller than d_sae={d_sae}: with {what} >= d_sae every latent "
            f"fires on every token and nothing is sparse; lower {what} or widen the SAE"
        )
    return k


def jump_codes(h: torch.Tensor, threshold: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """JumpReLU codes ``relu(h) * 1[h > threshold]`` as padded ``values/indices [batch, k']``.

    ``k'`` is the largest number of active latents in the batch (at least 1); rows with
    fewer actives are padded with zero values.
    """
    z = torch.where(h > threshold, h, torch.zeros((), dtype=h.dtype, device=h.device)).clamp_min(0)
    kmax = max(1, int((z > 0).sum(-1).max().item())) if z.numel() else 1
    kmax = min(kmax, h.shape[-1])
    values, indices = torch.topk(z, kmax, dim=-1, sorted=False)
    return values, indices


def unit_rows_(w: torch.Tensor) -> None:
    """Scale each row of ``w`` to unit norm, in place."""
    w.div_(w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).eps))


def remove_parallel_grad_(w: nn.Parameter) -> None:
    """Drop the gradient component along each (unit) row of ``w``, in place.

    The step then moves rows along the sphere to first order; re-normalising after the
    step removes the rest.
    """
    if w.grad is None:
        return
    d = w.detach()
    d = d / d.norm(dim=1, keepdim=True).clamp_min(torch.finfo(d.dtype).eps)
    w.grad.sub_((w.grad * d).sum(1, keepdim=True) * d)


def default_k_aux(d_in: int, d_sae: int) -> int:
    """Default number of AuxK latents: ``d_in / 2`` (Gao et al.), at most ``d_sae``."""
    return max(1, min(d_sae, math.ceil(d_in / 2)))
