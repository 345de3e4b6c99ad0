"""Steering: add a direction (or clamp an SAE latent) at a hook, at chosen positions.

A :class:`Steering` is a declarative, serialisable spec: hook, vector, scale, positions.
Positions keep two things apart, because under a KV cache every decode step sees a
sequence of length one and indices computed per forward call would be wrong:

* ``prompt``: indices relative to the prompt (``0`` first real token, ``-1`` last);
* ``generated``: a window ``[start, stop)`` of generated steps (step ``j`` is the
  position holding the j-th generated token).

>>> spec = Steering.from_sae(sae, latent=12, scale=8.0, positions="all")   # adds a vector of norm 8
>>> out = model.generate("the cat", max_new_tokens=10, steering=[spec])
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch

from interp.errors import InterpError
from interp.evaluation.losses import token_kl
from interp.model.generation import DecodeState, edit_hooks, left_padded
from saes.formats import schema

ALL = "all"


@dataclass(frozen=True)
class Positions:
    """Which positions to steer.

    ``prompt``: ``"all"``, None, or prompt-relative indices (negative count from the end).
    ``generated``: ``"all"``, None, or a window ``(start, stop)`` of generated steps
    (``stop`` None for open-ended).
    """

    prompt: Union[Literal["all"], tuple[int, ...], None] = ALL
    generated: Union[Literal["all"], tuple[int, Union[int, None]], None] = ALL

    @classmethod
    def parse(cls, spec: Union[str, Positions, dict]) -> Positions:
        """``"all"``, ``"prompt"``, ``"generated"``, a dict of the fields, or a Positions."""
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, dict):
            unknown = sorted(str(k) for k in spec if k not in ("prompt", "generated"))
            if unknown:
                raise ValueError(f"positions has unknown key(s) {unknown}; use 'prompt' and 'generated'")
            return cls(_prompt_positions(spec.get("prompt")), _generated_window(spec.get("generated")))
        named = {"all": cls(ALL, ALL), "prompt": cls(ALL, None), "generated": cls(None, ALL),
                 "last_prompt": cls((-1,), None)}
        if not isinstance(spec, str) or spec not in named:
            raise ValueError(f"unknown positions {spec!r}; use one of {', '.join(named)} or "
                             "{'prompt': [...], 'generated': [start, stop]}")
        return named[spec]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt if self.prompt in (ALL, None) else list(self.prompt),
                "generated": self.generated if self.generated in (ALL, None) else list(self.generated)}

    def mask(self, state: DecodeState, batch: int, device: torch.device) -> torch.Tensor | None:
        """Bool [batch, width] of the current forward call's columns to steer; None for all of them."""
        if state.offset >= state.prompt_length and self.generated == ALL:
            return None  # a decode step of an open-ended generated window: the hot path
        absolute = torch.arange(state.offset, state.offset + state.width, device=device)[None].expand(batch, -1)
        in_prompt = absolute < state.prompt_length
        out = torch.zeros(batch, state.width, dtype=torch.bool, device=device)
        if self.prompt == ALL:
            out |= in_prompt & (absolute >= state.pad.to(device)[:, None])
        elif self.prompt is not None:
            for index in self.prompt:
                target = (state.pad.to(device) + index) if index >= 0 else torch.full(
                    (batch,), state.prompt_length + index, device=device)
                out |= in_prompt & (absolute == target[:, None])
        if self.generated is not None:
            step = absolute - state.prompt_length
            window = step >= 0
            if self.generated != ALL:
                start, stop = self.generated
                window &= step >= start
                if stop is not None:
                    window &= step < stop
            out |= window
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt_positions(value: Any) -> Literal["all"] | tuple[int, ...] | None:
    if value is None or value == ALL:
        return value
    if isinstance(value, (list, tuple)) and all(_is_int(i) for i in value):
        return tuple(value)
    raise ValueError(f"positions 'prompt' must be 'all', null or a list of integers, got {value!r:.60}")


def _generated_window(value: Any) -> Literal["all"] | tuple[int, int | None] | None:
    if value is None or value == ALL:
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2 and _is_int(value[0]) and value[0] >= 0
            and (value[1] is None or (_is_int(value[1]) and value[1] >= value[0]))):
        return (value[0], value[1])
    raise ValueError(f"positions 'generated' must be 'all', null or a window [start, stop] of generated steps "
                     f"(0 <= start <= stop, stop null for open-ended), got {value!r:.60}")


# What a steering file's spec (its safetensors header) may hold.
_SPEC_FIELDS = {
    "hook": schema.Field("str"), "scale": schema.Field("number"), "positions": schema.Field("any"),
    "name": schema.Field("str", optional=True), "source": schema.Field("dict", optional=True),
    "shape": schema.Field("int_list", optional=True),
}


@dataclass
class Steering:
    """Add ``scale · vector`` to the activation at ``hook`` on the chosen positions.

    One unit for every source: the constructors (:meth:`from_sae`, :meth:`from_snmf`,
    :meth:`from_direction`) store a unit vector, so ``scale`` is the norm of what is added,
    in the hook's own activation units, whatever the vector came from. Compare it with the
    hook's typical activation norm (:func:`typical_norm`), or let :func:`calibrate_scale`
    pick it for a target next-token KL.
    """

    hook: str
    vector: torch.Tensor  # the hook's per-token shape, e.g. [d_model]
    scale: float = 1.0
    positions: Union[Positions, str, dict] = ALL
    name: str = ""
    source: dict = field(default_factory=dict)  # where the vector came from (for the record)

    def __post_init__(self) -> None:
        self.positions = Positions.parse(self.positions)
        self.vector = torch.as_tensor(self.vector).detach().float()
        self._placed: tuple[torch.Tensor, float, torch.Tensor] | None = None  # (vector, scale, the product placed)

    def _delta(self, like: torch.Tensor) -> torch.Tensor:
        """``scale * vector`` on ``like``'s device and dtype, moved once: generation applies
        the steer at every decoding step, and a host-to-GPU copy each time would add up."""
        placed = self._placed
        if (placed is None or placed[0] is not self.vector or placed[1] != self.scale
                or placed[2].device != like.device or placed[2].dtype != like.dtype):
            placed = (self.vector, self.scale, (self.scale * self.vector).to(like.device, like.dtype))
            self._placed = placed
        return placed[2]

    # -- constructors for the usual sources ----------------------------------------------
    @classmethod
    def from_sae(cls, sae: Any, latent: int, scale: float = 1.0, positions: Any = ALL, hook: str | None = None) -> Steering:
        """The latent's decoder row, scaled to unit norm, at the SAE's hook.

        Decoder rows are not always unit: folding an input scale into the weights
        (``normalize_input=True``) leaves them at ``1 / s``. Normalising here keeps ``scale``
        in the hook's units for every SAE. ``source["decoder_norm"]`` records the row's norm:
        to add ``a`` units of the latent's activation (``a · W_dec[latent]``), pass
        ``scale = a * decoder_norm``.
        """
        hook = hook or _sae_hook(sae)
        if not 0 <= latent < sae.W_dec.shape[0]:
            raise ValueError(f"latent {latent} is outside the SAE's {sae.W_dec.shape[0]} latents")
        row = sae.W_dec[latent].detach().float()
        norm = float(row.norm())
        if norm == 0:
            raise ValueError(f"latent {latent}'s decoder row is zero: it has no direction to steer along")
        return cls(hook, row / norm, scale, positions, name=f"sae latent {latent}",
                   source={"kind": "sae", "latent": latent, "decoder_norm": norm})

    @classmethod
    def from_snmf(cls, result: Any, feature: int, hook: str, scale: float = 1.0, positions: Any = ALL) -> Steering:
        """An SNMF feature ``z_i / ‖z_i‖`` at ``blocks.L.mlp.hook_post`` (the space it lives in)."""
        if not hook.endswith("mlp.hook_post"):
            raise ValueError(f"SNMF features live in MLP neuron space: steer at blocks.L.mlp.hook_post, not {hook}")
        z = result.features[feature]
        return cls(hook, z / z.norm(), scale, positions, name=f"snmf feature {feature}",
                   source={"kind": "snmf", "feature": feature})

    @classmethod
    def from_direction(cls, vector: torch.Tensor, hook: str, scale: float = 1.0, positions: Any = ALL,
                       normalize: bool = True, name: str = "direction") -> Steering:
        """A raw, difference-in-means or probe direction (unit-normalised unless told not to)."""
        vector = torch.as_tensor(vector).float()
        return cls(hook, vector / vector.norm() if normalize else vector, scale, positions, name=name,
                   source={"kind": name, "normalized": normalize})

    # -- applying ----------------------------------------------------------------------
    def apply(self, x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
        """``x`` [batch, pos, ...] with the steer added where ``where`` [batch, pos] is true (None: everywhere)."""
        if tuple(self.vector.shape) != tuple(x.shape[2:]):
            raise ValueError(f"steering vector has shape {tuple(self.vector.shape)} but {self.hook} carries "
                             f"{tuple(x.shape[2:])} per token")
        delta = self._delta(x)
        if where is None:
            return x + delta
        gate = where.reshape(*where.shape, *([1] * (x.ndim - 2))).to(x.dtype)
        return x + gate * delta

    def with_scale(self, scale: float) -> Steering:
        return Steering(self.hook, self.vector, scale, self.positions, self.name, self.source)

    # -- files -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"hook": self.hook, "scale": self.scale, "positions": self.positions.to_dict(), "name": self.name,
                "source": self.source, "shape": list(self.vector.shape)}

    def save(self, path: str | os.PathLike) -> None:
        """``path.safetensors`` holds the vector and its JSON spec (in the header metadata)."""
        from saes.formats.durable import atomic_save_tensors

        atomic_save_tensors(_vector_path(path), {"vector": self.vector}, {"steering": json.dumps(self.to_dict())})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Steering:
        """The steering :meth:`save` wrote to ``path``, checked: the file whole (checksum), its
        spec a JSON object with a hook, a finite scale and valid positions, the vector finite.
        Anything else is a :class:`saes.FormatError` naming the file and what is wrong."""
        from saes.errors import FormatError
        from saes.formats.durable import read_tensors

        file = _vector_path(path)
        if not file.exists():
            raise FormatError(f"{file} does not exist; write one with Steering.save() (`interp quickstart` writes "
                              "runs/quickstart/steering.safetensors)")
        if not file.is_file():
            raise FormatError(f"{file} is not a file; give the .safetensors file Steering.save() wrote")
        tensors, header = read_tensors(file, require_checksum=lambda m: "steering" in m)  # a damaged file is named, not used
        vector = tensors.get("vector")
        if "steering" not in header or vector is None:
            raise FormatError(f"{file} holds no steering spec and vector; save one with Steering.save()")
        where = f"{file}: its steering spec"
        meta = schema.check(schema.parse_json(header["steering"], where, FormatError), _SPEC_FIELDS, where, FormatError,
                            required=("hook", "scale"), also_known=("kind",))
        if not vector.is_floating_point() or vector.ndim == 0 or vector.numel() == 0:
            raise FormatError(f"{file}: tensor 'vector' is {vector.dtype} of shape {list(vector.shape)}; a steering "
                              "vector is a non-empty floating-point tensor (the hook's per-token shape)")
        if not torch.isfinite(vector).all():
            raise FormatError(f"{file}: tensor 'vector' holds NaN or infinite values; steering with it would turn every "
                              "activation into NaN. Re-create it from a finite direction")
        try:
            positions = Positions.parse(meta.get("positions", ALL))
        except ValueError as err:
            raise FormatError(f"{where}: {err}") from None
        return cls(meta["hook"], vector, float(meta["scale"]), positions, meta.get("name") or "",
                   meta.get("source") or {})


@dataclass
class Clamp:
    """Set one SAE latent to ``value`` at ``hook``, keeping the SAE's error term.

    ``x ← decode(z with z[latent] = value) + (x − decode(encode(x)))``: only the latent's
    contribution changes, so whatever the SAE fails to reconstruct passes through untouched.
    """

    sae: Any
    latent: int
    value: float
    positions: Union[Positions, str, dict] = ALL
    hook: str = ""

    def __post_init__(self) -> None:
        if getattr(self.sae, "is_transcoder", False):
            # Its codes come from one hook and its decoder writes another: one hook's edit
            # cannot clamp it. interp.circuits intervenes on transcoder features.
            raise InterpError("a transcoder cannot be clamped at one hook (it reads "
                              f"{self.sae.metadata.get('hook_name')} and writes {self.sae.metadata.get('hook_name_out')}); "
                              "use interp.circuits feature interventions, or steer along its decoder row")
        self.positions = Positions.parse(self.positions)
        self.hook = self.hook or _sae_hook(self.sae)

    @property
    def name(self) -> str:
        return f"clamp latent {self.latent} = {self.value}"

    def apply(self, x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        sae_dtype = self.sae.W_dec.dtype
        z = self.sae.encode(flat.to(sae_dtype))
        # The clamp changes z[latent] only; decode is linear in z, so the edit is one row.
        delta = (self.value - z[:, self.latent])[:, None] * self.sae.W_dec[self.latent][None]
        gate = 1.0 if where is None else where.reshape(-1, 1).to(delta.dtype)
        return (flat + (gate * delta).to(x.dtype)).reshape(x.shape)


def _sae_hook(sae: Any) -> str:
    """Where the SAE's decoder rows live: its hook, or a transcoder's output hook."""
    meta = getattr(sae, "metadata", None) or {}
    if getattr(sae, "is_transcoder", False):
        hook = meta.get("hook_name_out")
        if not hook:
            raise InterpError("this transcoder does not record its output hook (hook_name_out), where its decoder "
                              "rows live; pass hook='blocks.L.hook_mlp_out' (--hook on the command line)")
        return hook
    hook = meta.get("hook_name")
    if not hook:
        raise InterpError("this SAE does not record its hook; pass hook='blocks.L.hook_resid_post' "
                          "(--hook on the command line)")
    return hook


def _vector_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")


# -- strength calibration -----------------------------------------------------------------
KLPosition = Literal["all", "last"]


@torch.no_grad()
def next_token_kl(model: Any, specs: Sequence[Any], prompts: Any, kl_position: KLPosition = "all") -> float:
    """Mean KL(clean ‖ steered) of the next-token distribution over the prompts' real tokens.

    ``kl_position="last"`` reads it at each prompt's last token only (the SNMF paper's
    protocol): the distribution generation starts from, not the prompt's inner tokens.
    """
    if kl_position not in ("all", "last"):
        raise ValueError(f"kl_position must be 'all' or 'last', got {kl_position!r}")
    tokens, mask = left_padded(model, prompts)
    state = DecodeState(prompt_length=tokens.shape[1], pad=(mask == 0).sum(1), width=tokens.shape[1])
    clean = model(tokens, attention_mask=mask)
    with model.hooks(edit_hooks(specs, state)):
        steered = model(tokens, attention_mask=mask)
    kl = token_kl(clean, steered)
    if kl_position == "last":  # left padding puts every prompt's last token in the last column
        return float(kl[:, -1].mean())
    return float(kl[mask.bool()].mean())


@torch.no_grad()
def typical_norm(model: Any, hook: str, prompts: Any) -> float:
    """Mean activation norm at ``hook`` over the tokens of ``prompts``: the yardstick for a
    steering ``scale`` (a scale of a few tenths of it is usually visible)."""
    norms = []
    for prompt in [prompts] if isinstance(prompts, str) else prompts:   # one at a time: no padding
        _, cache = model.run_with_cache(prompt, names=[hook])
        norms.append(cache[hook].float().norm(dim=-1).flatten())
    return float(torch.cat(norms).mean())


def calibrate_scale(model: Any, spec: Steering, prompts: Any, target_kl: float, rel_tol: float = 0.05,
                    max_iter: int = 40, start: float = 1.0, kl_position: KLPosition = "all") -> tuple[Steering, float]:
    """The scale whose mean next-token KL from the clean model hits ``target_kl``, by bisection.

    The SNMF paper's protocol for comparing steering methods at matched strength. Returns
    the spec at that scale and the KL it reaches. The sign of ``spec.scale`` is kept.
    ``kl_position``: where the KL is read (:func:`next_token_kl`); the paper uses "last".
    """
    if target_kl <= 0:
        raise ValueError(f"target_kl must be positive, got {target_kl}")
    sign = -1.0 if spec.scale < 0 else 1.0
    kl_at = lambda s: next_token_kl(model, [spec.with_scale(sign * s)], prompts, kl_position)  # noqa: E731
    lo, hi = 0.0, start
    kl = kl_at(hi)
    for _ in range(24):  # grow the bracket until it holds the target
        if kl >= target_kl:
            break
        lo, hi = hi, hi * 2
        kl = kl_at(hi)
    else:
        raise ValueError(f"even scale {hi:g} reaches only KL {kl:.4g} < {target_kl}: this direction saturates "
                             "below the target (or is zero); choose a smaller target_kl")
    best = (hi, kl)
    for _ in range(max_iter):
        if abs(best[1] - target_kl) <= rel_tol * target_kl:
            break
        mid = (lo + hi) / 2
        kl = kl_at(mid)
        if abs(kl - target_kl) < abs(best[1] - target_kl):
            best = (mid, kl)
        lo, hi = (mid, hi) if kl < target_kl else (lo, mid)
    return spec.with_scale(sign * best[0]), best[1]

