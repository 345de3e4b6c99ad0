"""Feature interventions in the real model: test a hypothesis read off a graph.

An intervention sets, scales or zeroes a transcoder feature's activation at chosen
positions while the real model runs (circuit-tracer's ``feature_intervention``): at each
intervened layer the transcoder encodes the MLP's input of *this* run, and the MLP's output
gets ``(new - current) * W_dec[feature]`` added, so everything downstream (later MLPs,
attention, norms) responds as the model would. Attention patterns can be frozen at their
clean values (the graph's own assumption) or left free.

>>> result = intervene(model, transcoders, prompt, [FeatureEdit(layer=1, feature=42, positions=[-1], value=0.0)])
>>> result.top_changes()      # the logits that moved most at the last position
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interp.circuits.replacement import ReplacementModel, Transcoders, model_hooks
from interp.errors import InterpError


@dataclass(frozen=True)
class FeatureEdit:
    """One feature's new activation at some positions.

    Exactly one of ``value`` (set it; 0 zeroes it) and ``scale`` (multiply the activation
    it has in the intervened run) is given. ``positions`` are token indices of the prompt
    (BOS counts; negative ones count from the end); None means every position.
    """

    layer: int
    feature: int
    positions: Sequence[int] | None = None
    value: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.scale is None):
            raise InterpError(f"FeatureEdit(layer={self.layer}, feature={self.feature}) needs exactly one of value= "
                              "(set; 0 zeroes) and scale= (multiply)")


@dataclass
class InterventionResult:
    """Logits of the clean and the intervened run, ``[pos, d_vocab]`` each."""

    tokens: list[int]
    clean_logits: torch.Tensor
    logits: torch.Tensor
    tokenizer: Any = None

    def logit_change(self, token_ids: Sequence[int], pos: int = -1) -> torch.Tensor:
        """``[k]`` intervened minus clean logit of each token at ``pos``."""
        ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        return (self.logits[pos, ids] - self.clean_logits[pos, ids]).cpu()

    def top(self, k: int = 5, pos: int = -1, clean: bool = False) -> list[tuple[str, float]]:
        """The ``k`` most probable next tokens at ``pos`` with their probabilities."""
        probs = torch.softmax((self.clean_logits if clean else self.logits)[pos].float(), -1)
        p, i = probs.topk(k)
        return [(self._name(t), float(v)) for t, v in zip(i.tolist(), p.tolist())]

    def top_changes(self, k: int = 5, pos: int = -1) -> list[tuple[str, float]]:
        """The ``k`` tokens whose logit moved most (by absolute change) at ``pos``."""
        delta = (self.logits[pos] - self.clean_logits[pos]).float()
        i = delta.abs().topk(k).indices
        return [(self._name(t), float(delta[t])) for t in i.tolist()]

    def _name(self, t: int) -> str:
        return self.tokenizer.decode([t]) if self.tokenizer is not None else str(t)


def _positions(edit: FeatureEdit, n_pos: int) -> torch.Tensor:
    if edit.positions is None:
        return torch.arange(n_pos)
    pos = torch.as_tensor(list(edit.positions), dtype=torch.long)
    if bool(((pos < -n_pos) | (pos >= n_pos)).any()):
        raise InterpError(f"FeatureEdit positions {pos.tolist()} fall outside the prompt's {n_pos} tokens")
    return pos % n_pos


def check_edits(rm: ReplacementModel, edits: Sequence[FeatureEdit]) -> list[torch.Tensor]:
    """Each edit's positions ``[k]``, once its layer, feature and positions are checked against
    the replacement model (an InterpError naming the edit otherwise)."""
    out = []
    for edit in edits:
        if not 0 <= edit.layer < rm.n_layers or rm.layers[edit.layer].sae is None:
            raise InterpError(f"FeatureEdit layer {edit.layer} has no transcoder (layers with one: "
                              f"{[lt.layer for lt in rm.layers if lt.sae is not None]})")
        d_sae = rm.layers[edit.layer].sae.d_sae
        if not 0 <= edit.feature < d_sae:
            raise InterpError(f"FeatureEdit feature {edit.feature} is outside layer {edit.layer}'s {d_sae} features")
        out.append(_positions(edit, rm.n_pos))
    return out


def intervene(model: Any, transcoders: Transcoders | ReplacementModel, prompt: Any = None,
              edits: Sequence[FeatureEdit] = (), *, freeze_attention: bool = True) -> InterventionResult:
    """Run the real model with ``edits`` applied (see the module docstring).

    Args:
        model: the HookedModel.
        transcoders: as :func:`~interp.circuits.attribution.attribute` takes them (a
            ReplacementModel built for the prompt reuses its prompt and transcoders).
        prompt: text or token ids (not needed with a ReplacementModel).
        edits: the features to change.
        freeze_attention: hold attention patterns at the clean run's (True, as the graph
            assumes) or let them respond (False).
    """
    rm = transcoders if isinstance(transcoders, ReplacementModel) else ReplacementModel(model, transcoders, prompt)
    by_layer: dict[int, list[tuple[FeatureEdit, torch.Tensor]]] = {}
    for edit, positions in zip(edits, check_edits(rm, edits)):
        by_layer.setdefault(edit.layer, []).append((edit, positions.to(rm.device)))
    x_in: dict[int, torch.Tensor] = {}

    def read(t: torch.Tensor, hook: Any, layer: int) -> None:
        x_in[layer] = t

    def write(t: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        sae = rm.layers[layer].sae
        current = sae.encode(x_in[layer])                          # [1, pos, d_sae]
        delta = torch.zeros_like(current)
        for edit, pos in by_layer[layer]:
            now = current[:, pos, edit.feature]
            new = torch.full_like(now, edit.value) if edit.value is not None else now * edit.scale
            delta[:, pos, edit.feature] = new - now
        return t + (delta @ sae.W_dec).to(t.dtype)

    hooks = []
    for layer in by_layer:
        lt = rm.layers[layer]
        hooks += [(lt.hook_in, _bound(read, layer)), (lt.hook_out, _bound(write, layer))]
    frozen = rm.freezer.frozen(norms=False) if freeze_attention else contextlib.nullcontext()
    with torch.no_grad(), model_hooks(model, hooks), frozen:
        logits = model(rm.tokens[None])[0]
    return InterventionResult(rm.tokens.tolist(), rm.logits.detach(), logits.detach(), model.tokenizer)


def _bound(fn: Any, layer: int) -> Any:
    return lambda t, hook: fn(t, hook, layer)


def patch_features(base: ReplacementModel, source: ReplacementModel, layers: Sequence[int],
                   positions: Sequence[int]) -> list[FeatureEdit]:
    """Edits that give ``base``'s features at ``layers`` and ``positions`` the activations they
    have on ``source``'s prompt (features active on either; inactive ones set to 0): the
    feature-level version of activation patching between two prompts."""
    if base.n_pos != source.n_pos:
        raise InterpError(f"patching features position by position needs prompts of one length "
                          f"({base.n_pos} and {source.n_pos} tokens)")
    edits = []
    for layer in layers:
        for pos in positions:
            p = pos % base.n_pos
            want = _active(source, layer, p)
            for feature in sorted(set(want) | set(_active(base, layer, p))):
                edits.append(FeatureEdit(layer, feature, [p], value=want.get(feature, 0.0)))
    return edits


def _active(rm: ReplacementModel, layer: int, pos: int) -> dict[int, float]:
    sel = (rm.feature_layer == layer) & (rm.feature_pos == pos)
    return dict(zip(rm.feature_index[sel].tolist(), rm.activations[sel].tolist()))
