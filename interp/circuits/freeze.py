"""Attention patterns and normalisation denominators held at their values on one prompt.

With both frozen, everything between the MLPs is linear in the residual stream: attention
mixes value vectors with fixed weights, and a norm divides by a fixed per-token scale. This is
the frozen part of the local replacement model (Ameisen et al. 2025).

* Attention: the pattern depends only on queries and keys, so the query and key projections'
  outputs are recorded on the clean run and substituted afterwards (GPT-2's fused ``c_attn``:
  its query and key thirds; Llama-style ``q_proj`` / ``k_proj``). Values keep flowing.
* Norms: LayerNorm ``(x - mean) * inv * w + b`` and RMSNorm ``x * inv * g`` (``g`` is
  ``w`` or, in Gemma, ``1 + w``) are recomputed with the recorded per-token ``inv``. Which
  form a module computes is checked on the clean run: the recomputation must reproduce its
  output, or the norm is refused by name.

Hooks are plain torch module hooks (the norms and projections are no hook points), added and
removed by one context manager each.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from interp.errors import InterpError
from interp.model.families import TABLES

# Largest relative difference between a norm's output and its frozen recomputation that
# still counts as the same function (float32 rounding is ~1e-7).
NORM_TOLERANCE = 1e-4


@dataclass
class _Norm:
    name: str
    module: nn.Module
    kind: str = ""                    # "layer", "rms" or "rms_plus_one", found on the clean run
    inv: torch.Tensor | None = None   # [1, pos, 1] recorded inverse denominator


@dataclass
class _QK:
    """Where one attention block's queries and keys come from: modules and the slice of
    each module's output that is a query or key (GPT-2 fuses q, k and v in one output)."""

    name: str
    modules: list[nn.Module]
    width: list[int | None]           # None: the whole output; else its first `width` columns
    cached: list[torch.Tensor] = field(default_factory=list)


def _input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _norm_parts(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    eps = getattr(module, "variance_epsilon", None)
    eps = getattr(module, "eps", 1e-6) if eps is None else eps
    return getattr(module, "weight", None), getattr(module, "bias", None), float(eps)


def _inv(kind: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    if kind == "layer":
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _frozen_norm(kind: str, module: nn.Module, x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The norm's output with its denominator fixed at ``inv`` (linear in ``x``)."""
    w, b, _ = _norm_parts(module)
    y = x.float()
    if kind == "layer":
        y = y - y.mean(-1, keepdim=True)
    y = y * inv
    if w is not None:
        y = y * (1 + w.float() if kind == "rms_plus_one" else w.float())
    if b is not None:
        y = y + b.float()
    return y.to(x.dtype)


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith(("LayerNorm", "RMSNorm"))


def _attention_qk(hf: nn.Module, model_type: str, block: nn.Module, layer: int) -> _QK:
    table = TABLES[model_type]
    path = table.block_hooks["attn.hook_z"].path.rsplit(".", 1)[0]
    attn = block.get_submodule(path)
    name = f"blocks.{layer}.{path}"
    if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return _QK(name, [attn.q_proj, attn.k_proj], [None, None])
    if hasattr(attn, "c_attn") and hasattr(attn, "split_size"):
        return _QK(name, [attn.c_attn], [2 * int(attn.split_size)])
    raise InterpError(f"cannot freeze the attention pattern of {name} ({type(attn).__name__}): attribution graphs "
                      "support GPT-2-style (fused c_attn) and Llama-style (q_proj, k_proj) attention")


class Freezer:
    """Records one clean run's attention queries/keys and norm denominators, then holds them.

    >>> freezer = Freezer(model)
    >>> with freezer.record():
    ...     model(tokens)                       # one prompt, batch 1
    >>> with freezer.frozen():
    ...     model(tokens.expand(8, -1))         # same patterns and denominators, any batch
    """

    def __init__(self, model: Any) -> None:
        hf = model.hf_model
        if model.backend != "hf" or hf is None:
            raise InterpError(f"attribution graphs run on HF-backed models; {model.name} is a TransformerLens model: "
                              "load the HF model with interp.load(name) instead")
        model_type = getattr(hf.config, "model_type", None)
        if getattr(hf.config, "final_logit_softcapping", None):
            raise InterpError(f"{model.name} caps its logits with a tanh (final_logit_softcapping), which no frozen "
                              "linear system reproduces; attribution graphs need plain logits")
        blocks = hf.get_submodule(TABLES[model_type].blocks)
        self.norms = [_Norm(n, m) for n, m in hf.named_modules() if _is_norm(m)]
        self.qk = [_attention_qk(hf, model_type, block, i) for i, block in enumerate(blocks)]
        self.recorded = False

    @contextlib.contextmanager
    def _hooks(self, pairs: list[tuple[nn.Module, Any]]) -> Iterator[None]:
        handles = [m.register_forward_hook(fn, with_kwargs=True) for m, fn in pairs]
        try:
            yield
        finally:
            for h in reversed(handles):
                h.remove()

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Record the denominators and queries/keys of the next forward pass (batch 1)."""
        for qk in self.qk:
            qk.cached = [None] * len(qk.modules)  # type: ignore[list-item]

        def norm_hook(norm: _Norm):
            def fn(module, args, kwargs, output):
                x = _input(args, kwargs)
                y = output[0] if isinstance(output, tuple) else output
                norm.kind, norm.inv = _identify(norm, x, y)
            return fn

        def qk_hook(qk: _QK, i: int, width: int | None):
            def fn(module, args, kwargs, output):
                qk.cached[i] = (output if width is None else output[..., :width]).detach()
            return fn

        pairs = [(n.module, norm_hook(n)) for n in self.norms]
        pairs += [(m, qk_hook(qk, i, w)) for qk in self.qk for i, (m, w) in enumerate(zip(qk.modules, qk.width))]
        with self._hooks(pairs):
            yield
        self.recorded = all(c is not None for qk in self.qk for c in qk.cached)

    @contextlib.contextmanager
    def frozen(self, attention: bool = True, norms: bool = True) -> Iterator[None]:
        """Forward passes inside the block use the recorded patterns and/or denominators; every
        prompt in the batch must be the recorded prompt's length."""
        if not self.recorded:
            raise RuntimeError("Freezer.frozen() before record(): run the clean prompt under record() first")

        def norm_hook(norm: _Norm):
            def fn(module, args, kwargs, output):
                x = _input(args, kwargs)
                if norm.inv is None:  # a norm the clean pass never ran (e.g. unused by this model)
                    return None
                return _frozen_norm(norm.kind, module, x, _broadcast(norm.inv, x, norm.name))
            return fn

        def qk_hook(qk: _QK, i: int, width: int | None):
            def fn(module, args, kwargs, output):
                cached = _broadcast(qk.cached[i], output, qk.name).to(output.dtype)
                return cached if width is None else torch.cat([cached, output[..., width:]], dim=-1)
            return fn

        pairs = [(n.module, norm_hook(n)) for n in self.norms] if norms else []
        if attention:
            pairs += [(m, qk_hook(qk, i, w)) for qk in self.qk for i, (m, w) in enumerate(zip(qk.modules, qk.width))]
        with self._hooks(pairs):
            yield


def _broadcast(cached: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    if cached.shape[1:-1] != like.shape[1:-1]:
        raise InterpError(f"{name}: frozen at {cached.shape[1]} positions but run on {like.shape[1]}; a frozen "
                          "replacement model runs its own prompt only")
    return cached.expand(like.shape[0], *cached.shape[1:])


def _identify(norm: _Norm, x: torch.Tensor, y: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Which norm form reproduces the module's output on ``x``, and its inverse denominator."""
    _, _, eps = _norm_parts(norm.module)
    kinds = ("layer",) if isinstance(norm.module, nn.LayerNorm) or "LayerNorm" in type(norm.module).__name__ \
        else ("rms", "rms_plus_one")
    scale = y.detach().float().abs().max().clamp_min(1e-12)
    for kind in kinds:
        inv = _inv(kind, x.detach(), eps)
        again = _frozen_norm(kind, norm.module, x.detach(), inv)
        if float((again.float() - y.detach().float()).abs().max() / scale) < NORM_TOLERANCE:
            return kind, inv
    raise InterpError(f"cannot freeze the norm {norm.name} ({type(norm.module).__name__}): it computes neither a "
                      "LayerNorm nor an RMSNorm (weight w or 1 + w) as this package knows them")
