"""Token-by-token generation with an explicit KV cache, so hooks know where they are.

HF's ``generate`` hides which absolute positions each forward call covers; steering that
targets "the last prompt token" or "generated steps 3 to 10" needs exactly that. This loop
owns it: before every forward call it records the call's first absolute position in a
:class:`DecodeState` that hooks read. Left padding, attention masks and position ids are
handled here, so a batch generates the same tokens as its prompts run one by one.

Steering enters as *positioned edits*: any object with a ``hook`` name, a ``name``, a
``positions.mask(state, batch, device)`` and an ``apply(x, where)`` (see
:class:`PositionedEdit`). The model knows only that shape; the steering module supplies the
edits, so the model never imports it.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from interp.model.hooked import HookedModel


@dataclass
class DecodeState:
    """Where the current forward call sits in the generation.

    ``prompt_length`` is the padded prompt width P; ``pad`` [batch] the left padding of each
    row; ``offset`` the absolute position of the first column of the current call (0 for the
    prompt pass and for every uncached pass, P + t − 1 for cached step t).
    """

    prompt_length: int
    pad: torch.Tensor
    offset: int = 0
    width: int = 0  # columns in the current call


@dataclass
class GenerationResult:
    """``tokens`` [batch, P + new] (prompt, left-padded, then new tokens) and their texts."""

    tokens: torch.Tensor
    prompt_length: int
    attention_mask: torch.Tensor
    texts: list[str] = field(default_factory=list)
    steered: dict[str, torch.Tensor] = field(default_factory=dict)  # spec name -> bool [batch, P + new]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length:]


class EditPositions(Protocol):
    def mask(self, state: DecodeState, batch: int, device: torch.device) -> torch.Tensor | None: ...


class PositionedEdit(Protocol):
    """An edit of one hook's activation at chosen positions (a steering vector, a clamp)."""

    hook: str
    name: str
    positions: EditPositions

    def apply(self, x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor: ...


def left_padded(model: HookedModel, prompts: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (texts, or token ids ``[pos]``/``[batch, pos]``) as left-padded ids and their
    attention mask ``[batch, pos]`` on the model's device.

    Left padding puts every prompt's last token in the last column, which is where the next
    token is read; given ids are taken as unpadded.
    """
    if isinstance(prompts, torch.Tensor):
        tokens = prompts if prompts.ndim == 2 else prompts[None]
        mask = torch.ones_like(tokens)
    else:
        tokens, mask = model.to_tokens(prompts, padding_side="left", return_attention_mask=True)
    return tokens.to(model.device), mask.to(model.device)


def edit_hooks(edits: Sequence[PositionedEdit], state: DecodeState,
               record: dict[str, list[tuple[int, torch.Tensor]]] | None = None) -> list[tuple[str, Any]]:
    """``(hook name, fn)`` pairs applying each edit at its positions for the call in ``state``.

    With ``record``, each call's steered columns are noted per edit (see :func:`edited_positions`).
    """
    pairs = []
    for i, edit in enumerate(edits):
        def fn(x: torch.Tensor, hook: Any, edit=edit, key=f"{i}:{edit.name or edit.hook}") -> torch.Tensor:
            where = edit.positions.mask(state, x.shape[0], x.device)
            if record is not None:
                full = torch.ones(x.shape[:2], dtype=torch.bool) if where is None else where.cpu()
                record.setdefault(key, []).append((state.offset, full))
            return edit.apply(x, where)

        pairs.append((edit.hook, fn))
    return pairs


def edited_positions(record: dict[str, list[tuple[int, torch.Tensor]]], shape: torch.Size) -> dict[str, torch.Tensor]:
    """Bool [batch, total] per edit: which absolute positions were edited at least once."""
    out = {}
    for key, calls in record.items():
        where = torch.zeros(shape, dtype=torch.bool)
        for offset, mask in calls:
            where[:, offset: offset + mask.shape[1]] |= mask
        out[key] = where
    return out


def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
def generate_tokens(model: HookedModel, tokens: torch.Tensor, mask: torch.Tensor, state: DecodeState,
                    max_new_tokens: int, use_cache: bool = True, do_sample: bool = False, temperature: float = 1.0,
                    top_k: int | None = None, seed: int | None = None, stop_at_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend left-padded ``tokens`` [batch, P]; returns ``(tokens, mask)`` [batch, P + new].

    Hooks already attached to ``model`` run on every forward call and may read ``state``.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = _new_cache(model, len(tokens)) if use_cache and not model._kv_cache_ignored else None
    finished = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
    for step in range(max_new_tokens):
        start = 0 if (step == 0 or cache is None) else tokens.shape[1] - 1
        state.offset, state.width = start, tokens.shape[1] - start
        if model.hf_model is None and not bool(mask.all()):
            raise ValueError("generation on a TransformerLens HookedTransformer takes prompts of equal length; "
                             "run them one by one, or wrap the model in a TransformerBridge or load the HF model")
        logits = model._forward(tokens, mask, start, cache)[:, -1]
        if step == 0 and cache is not None and model.hf_model is not None and cache.get_seq_length() == 0:
            cache = None
            _note_cache_ignored(model)
        nxt = _next_token(logits, do_sample, temperature, top_k, generator)
        new_mask = (~finished).long()  # rows that already ended get masked padding
        if stop_at_eos and model.eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, model.pad_token_id), nxt)
            finished |= nxt == model.eos_token_id
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        mask = torch.cat([mask, new_mask[:, None]], dim=1)
        if bool(finished.all()):
            break
    return tokens, mask


def _note_cache_ignored(model: HookedModel) -> None:
    """The prompt pass left the KV cache empty: decode without it from here on.

    Some TransformerLens bridges compute attention in their own components and look for the
    cache under ``past_key_values``, a name recent transformers releases no longer pass to
    attention layers (they pass ``cache``). Feeding such a model one new token per step would then
    attend to nothing before it; re-running the whole sequence each step is slower but exact.
    """
    if not model._kv_cache_ignored:
        model._kv_cache_ignored = True
        warnings.warn(f"{model.name} did not fill the KV cache during generation (a TransformerLens bridge that "
                      "does not read the cache transformers passes); generating without it, which gives the same "
                      "tokens more slowly (use_cache=False decodes that way from the start).", RuntimeWarning, stacklevel=4)


def _new_cache(model: HookedModel, batch: int) -> Any:
    if model.hf_model is None:  # HookedTransformer (TransformerLens 3) keeps its own cache class
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(model.model.cfg, model.device, batch)
    from transformers import DynamicCache

    return DynamicCache(config=model.hf_model.config)
