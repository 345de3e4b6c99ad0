"""Hook points bound to live modules, and exception-safe hook lifetimes.

A :class:`HookPoint` names one place in a model (a TransformerLens hook name) and knows how
to attach a function there with a torch module hook. Hook functions follow the field's
convention ``fn(tensor, hook=hook_point)`` and return a replacement tensor or None.

Every attachment returns a torch handle; :class:`HookSet` keeps the handles of one scope
and removes exactly those, so scopes nest and nothing outlives its ``with`` block, also
when the body raises.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HookFn = Callable[..., "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside the forward pass once everything asked for has been computed."""


@dataclass(eq=False)
class HookPoint:
    """One named place in a model where activations can be read or replaced.

    ``io`` says whether the hook sees the module's input (its first positional argument, or
    ``hidden_states``) or its output (the first element when the module returns a tuple).
    ``head_shape`` unflattens the last dimension, e.g. ``(n_heads, d_head)`` for
    ``attn.hook_z`` whose module input is ``[batch, pos, n_heads * d_head]``.
    """

    name: str
    module: nn.Module
    io: str
    layer_index: int | None = None
    order: tuple[int, int] = (0, 0)  # execution order: (layer, position inside the block)
    head_shape: tuple[int, ...] | None = None
    # A TransformerLens HookPoint module: its own ``hook_conversion`` (a TransformerBridge
    # fires attn.hook_z flat and reshapes it to heads only for hooks added through
    # TransformerLens) is applied around the hook function here too.
    transformer_lens: bool = False

    def layer(self) -> int | None:
        """The block index, as TransformerLens's ``hook.layer()``; None outside blocks."""
        return self.layer_index

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"

    # -- attaching -----------------------------------------------------------------
    def attach(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        """Register ``fn`` here; returns the handle that removes it."""
        if self.io == "input":
            return self.module.register_forward_pre_hook(self._pre_hook(fn), with_kwargs=True)
        return self.module.register_forward_hook(self._post_hook(fn))

    def _call(self, fn: HookFn, tensor: torch.Tensor) -> torch.Tensor | None:
        conversion = getattr(self.module, "hook_conversion", None) if self.transformer_lens else None
        if conversion is not None:
            view = conversion.convert(tensor)
        else:
            view = tensor.unflatten(-1, self.head_shape) if self.head_shape else tensor
        new = fn(view, hook=self)
        if new is None:
            return None
        if not isinstance(new, torch.Tensor):
            raise TypeError(f"hook function on {self.name} returned {type(new).__name__}; return a tensor or None")
        if new.shape != view.shape:
            raise ValueError(
                f"hook function on {self.name} returned shape {tuple(new.shape)} but the activation has "
                f"shape {tuple(view.shape)}; return a tensor of the same shape"
            )
        if conversion is not None:
            return conversion.revert(new)
        return new.flatten(-len(self.head_shape)) if self.head_shape else new

    def _pre_hook(self, fn: HookFn):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if args:
                new = self._call(fn, args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = self._call(fn, kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return hook

    def _post_hook(self, fn: HookFn):
        def hook(module: nn.Module, args: tuple, output: Any):
            if isinstance(output, tuple):
                new = self._call(fn, output[0])
                return None if new is None else (new, *output[1:])
            return self._call(fn, output)

        return hook


class HookSet:
    """The handles one scope added; ``remove()`` takes away exactly those."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, point: HookPoint, fn: HookFn) -> None:
        self._handles.append(point.attach(fn))

    def remove(self) -> None:
        # Reverse order so a hook added later never outlives one it may depend on.
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def stop_after(point: HookPoint) -> HookFn:
    """A hook function that halts the forward pass once ``point`` has been reached."""

    def stop(tensor: torch.Tensor, hook: HookPoint) -> None:
        raise StopForward(hook.name)

    return stop


def count_hooks(module: nn.Module) -> int:
    """Number of forward and pre-forward hooks on ``module`` and all its children."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
