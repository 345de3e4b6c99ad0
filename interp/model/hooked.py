"""`HookedModel`: one interface over HF causal LMs and TransformerLens models.

Both backends expose TransformerLens hook names. HF models are hooked in place through the
declarative tables in :mod:`interp.model.families`, so their numerics are exactly HF's.
TransformerLens models (a ``HookedTransformer`` from TransformerLens 3, or a
``TransformerBridge`` from TransformerLens 3 or 4) already carry HookPoints, which are used as
they are. A bridge runs the HF model it wraps, so it takes the HF cache and masks.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import torch
from torch import nn

from interp.compat import hf_cache_kwarg
from interp.errors import HookNameError, LayerRangeError, ModelLoadError, close_matches
from interp.model.families import TABLES, ArchTable
from interp.model.generation import (DecodeState, GenerationResult, PositionedEdit, edit_hooks, edited_positions,
                                     generate_tokens, left_padded)
from interp.model.hooks import HookFn, HookPoint, HookSet, StopForward, stop_after

NameOrPredicate = Union[str, Callable[[str], bool]]
TokensOrText = Union[str, Sequence[str], torch.Tensor]

# Position of each TransformerLens block hook inside a block, in execution order. Used to
# stop the forward pass right after the last hook a caller needs.
_TL_BLOCK_ORDER = [
    "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
    "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
]


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path) if path else module


class HookedModel:
    """A causal LM with named hook points, caching, scoped hooks and generation.

    Build it with :func:`interp.load`. ``points`` maps every hook name to its
    :class:`~interp.model.hooks.HookPoint`, in execution order.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, points: dict[str, HookPoint], *,
                 name: str, n_layers: int, d_model: int, backend: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.points = points
        self.name = name
        self.n_layers = n_layers
        self.d_model = d_model
        self.backend = backend  # "hf" or "transformer_lens" (a HookedTransformer or a TransformerBridge)
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._cache_name: str | None = None
        self._kv_cache_ignored = False  # set once generation finds the model leaves its KV cache empty

    def __repr__(self) -> str:
        return f"HookedModel({self.name!r}, backend={self.backend}, n_layers={self.n_layers}, d_model={self.d_model})"

    # -- hook names ------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        """Every hook name of this model, in execution order."""
        return list(self.points)

    def check_hooks(self, names: str | Sequence[str]) -> list[str]:
        """Validate hook names; unknown ones raise with the closest valid names."""
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name in self.points:
                continue
            layer = layer_of(name)
            if layer is not None and not 0 <= layer < self.n_layers:
                raise LayerRangeError(
                    f"hook {name!r} names layer {layer}, but {self.name} has {self.n_layers} layers "
                    f"(valid: 0 to {self.n_layers - 1})"
                )
            hint = close_matches(name, self.points)
            did_you_mean = f" Did you mean: {', '.join(hint)}?" if hint else ""
            raise HookNameError(
                f"unknown hook {name!r} for {self.name}.{did_you_mean} "
                f"List them all with model.hook_names() or `interp hooks --model ...`."
            )
        return names

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model can embed, where it has learnt absolute position
        embeddings (``hook_pos_embed``: GPT-2, the world model); None where positions are
        rotary or relative, which run past their trained length without an error."""
        if "hook_pos_embed" not in self.points:
            return None
        config = getattr(self.model, "config", None) or getattr(self.model, "cfg", None)
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def hook_shape(self, name: str) -> tuple[int, ...]:
        """The per-token shape at a hook, e.g. ``(d_model,)`` or ``(n_heads, d_head)``."""
        self.check_hooks(name)
        if self._shapes is None:
            # One forward pass on a single token measures every hook that fires: exact for any
            # family. (Some TransformerLens hooks only fire under config flags.)
            probe = torch.zeros(1, 1, dtype=torch.long)
            _, cache = self.run_with_cache(probe, names=[lambda n: True], attention_mask=torch.ones_like(probe))
            self._shapes = {n: tuple(t.shape[2:]) for n, t in cache.items()}
        if name not in self._shapes:
            raise HookNameError(f"hook {name!r} exists on {self.name} but does not fire in a forward pass "
                                "(a TransformerLens hook switched off by its config); enable it or pick another")
        return self._shapes[name]

    # -- hooks -------------------------------------------------------------------------
    def _expand(self, hooks: Sequence[tuple[NameOrPredicate, HookFn]]) -> list[tuple[HookPoint, HookFn]]:
        pairs = []
        for key, fn in hooks:
            if callable(key):
                pairs += [(self.points[n], fn) for n in self.points if key(n)]
            else:
                pairs += [(self.points[n], fn) for n in self.check_hooks(key)]
        return pairs

    @contextlib.contextmanager
    def hooks(self, hooks: Sequence[tuple[NameOrPredicate, HookFn]]) -> Iterator[HookedModel]:
        """Attach ``(name_or_predicate, fn)`` pairs for the body of a ``with`` block.

        ``fn(tensor, hook=hook_point)`` returns a replacement tensor or None. On exit the
        context removes exactly the hooks it added, also when the body raises; contexts nest.

        >>> with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: x * 0)]):
        ...     logits = model(tokens)
        """
        pairs = self._expand(hooks)  # validate every name before attaching anything
        with HookSet() as hook_set:
            for point, fn in pairs:
                hook_set.add(point, fn)
            yield self

    # -- running -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, tokens_or_text: TokensOrText, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]``."""
        tokens, mask = self._as_tokens(tokens_or_text, attention_mask)
        return self._forward(tokens, mask)

    @property
    def hf_model(self) -> nn.Module | None:
        """The HF ``PreTrainedModel`` that runs the forward pass: the model itself on the HF
        backend, the wrapped model of a TransformerLens ``TransformerBridge``, and None for a
        ``HookedTransformer`` (TransformerLens 3), which is not an HF model."""
        if self.backend == "hf":
            return self.model
        return getattr(self.model, "original_model", None)

    def _cache_kwarg(self) -> str:
        if self._cache_name is None:
            self._cache_name = hf_cache_kwarg(self.hf_model)
        return self._cache_name

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor | None, start: int = 0, cache: Any = None) -> torch.Tensor:
        """Logits for columns ``start:`` of ``tokens``; earlier columns live in ``cache``.

        Position ids follow the attention mask, so a left-padded row sees the same positions
        as the same prompt unpadded.
        """
        if self.hf_model is None:  # HookedTransformer: its own cache class and mask handling
            if cache is not None:
                return self.model(tokens[:, start:], past_kv_cache=cache)
            return self.model(tokens, attention_mask=mask)
        kwargs: dict[str, Any] = {"use_cache": cache is not None}
        if mask is not None:
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        if cache is not None:
            kwargs[self._cache_kwarg()] = cache
        if self.backend == "transformer_lens":
            # A TransformerBridge hands these keywords to the HF model it wraps; its own
            # position-id derivation stays off because position_ids is given.
            return self.model(tokens[:, start:], **kwargs)
        return self.model(input_ids=tokens[:, start:], **kwargs).logits

    @torch.no_grad()
    def run_with_cache(
        self,
        tokens_or_text: TokensOrText,
        names: Sequence[NameOrPredicate] | NameOrPredicate | None = None,
        stop_at_layer: int | None = None,
        device: str | torch.device | None = None,
        attention_mask: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Run the model and cache activations ``[batch, pos, ...]`` at the named hooks.

        ``names`` is a list of hook names or predicates (all hooks when None). With
        ``return_logits=False`` or ``stop_at_layer=N`` (run blocks ``0..N-1`` only) the pass
        stops right after the last hook needed and the logits returned are None.

        >>> logits, cache = model.run_with_cache("the cat sat", names=["blocks.1.hook_resid_post"])
        >>> cache["blocks.1.hook_resid_post"].shape   # [batch, pos, d_model]
        """
        if names is None or isinstance(names, str) or callable(names):
            names = [names] if names is not None else [lambda n: True]
        # Hooks named outright must fire; those matched by a predicate may be ones that the
        # model's config switches off (some TransformerLens hooks).
        explicit = {n for n in names if isinstance(n, str)}
        wanted = [p.name for p, _ in self._expand([(n, None) for n in names])]
        if stop_at_layer is not None:
            if not 0 <= stop_at_layer <= self.n_layers:
                raise LayerRangeError(f"stop_at_layer={stop_at_layer} is outside 0..{self.n_layers} for {self.name}")
            late = [n for n in wanted if self.points[n].order[0] >= stop_at_layer]
            if late:
                raise LayerRangeError(
                    f"hooks {late} lie at or after stop_at_layer={stop_at_layer}; raise stop_at_layer or drop them"
                )
            return_logits = False
        tokens, mask = self._as_tokens(tokens_or_text, attention_mask)
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = tensor.detach().to(device) if device is not None else tensor.detach()

        hooks: list[tuple[NameOrPredicate, HookFn]] = [(n, save) for n in wanted]
        if not return_logits and wanted:
            last = max(wanted, key=lambda n: self.points[n].order)
            # Registered after the saving hooks, so it fires after they have run.
            hooks.append((self._stop_point(last), stop_after(self.points[last])))
        logits = None
        with self.hooks(hooks):
            try:
                out = self._forward(tokens, mask)
                logits = out if return_logits else None
            except StopForward:
                pass
        missing = [n for n in wanted if n not in cache and n in explicit]
        if missing:
            raise RuntimeError(f"hooks {missing} were never reached in the forward pass of {self.name}")
        return logits, {n: cache[n] for n in wanted if n in cache}

    def _stop_point(self, last: str) -> str:
        """The hook after which nothing requested remains to be computed."""
        if self.backend == "transformer_lens" and self.points[last].layer_index is not None:
            # TransformerLens registers some HookPoints out of execution order; the block's
            # resid_post is certainly last in its block.
            return f"blocks.{self.points[last].layer_index}.hook_resid_post"
        return last

    # -- tokens ------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)

    @property
    def pad_token_id(self) -> int | None:
        """The padding id; models without one (GPT-2) pad with EOS, masked out."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else self.eos_token_id

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ModelLoadError(
                f"{self.name} has no tokenizer: pass token ids, or load with interp.load(model, tokenizer=...)"
            )
        return self.tokenizer

    def to_tokens(
        self,
        text: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: str = "right",
        return_attention_mask: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[batch, pos]`` with BOS and padding made explicit.

        ``prepend_bos`` defaults to True when the tokenizer has a BOS token. The tokenizer's
        own special-token insertion is off, so BOS appears exactly once or not at all.
        Several texts are padded on ``padding_side`` with :attr:`pad_token_id`; ask for the
        attention mask to tell padding apart from real tokens.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tok = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        if prepend_bos is None:
            prepend_bos = self.bos_token_id is not None
        if prepend_bos and self.bos_token_id is None:
            raise ValueError(f"the tokenizer of {self.name} has no BOS token; use prepend_bos=False")
        ids = [([self.bos_token_id] if prepend_bos else []) + tok(t, add_special_tokens=False)["input_ids"]
               for t in texts]
        width = max(len(i) for i in ids)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        tokens = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
            tokens[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return (tokens, mask) if return_attention_mask else tokens

    def to_string(self, tokens: torch.Tensor | Sequence[int]) -> str | list[str]:
        """Decode ``[pos]`` to a string or ``[batch, pos]`` to a list of strings."""
        tok = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 1:
            return tok.decode(tokens.tolist())
        return [tok.decode(row.tolist()) for row in tokens]

    def _as_tokens(self, tokens_or_text: TokensOrText, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(tokens_or_text, torch.Tensor):
            tokens = tokens_or_text if tokens_or_text.ndim == 2 else tokens_or_text.unsqueeze(0)
        else:
            tokens, mask = self.to_tokens(tokens_or_text, return_attention_mask=True)
            if bool(mask.all()):
                mask = None  # an all-ones mask only costs time
        device = self.device
        return tokens.to(device), (mask.to(device) if mask is not None else None)

    # -- generation ----------------------------------------------------------------------
    def generate(
        self,
        tokens_or_text: TokensOrText,
        max_new_tokens: int = 20,
        steering: Sequence[PositionedEdit] = (),
        hooks: Sequence[tuple[NameOrPredicate, HookFn]] = (),
        use_cache: bool = True,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = False,
        return_steered: bool = False,
    ) -> GenerationResult:
        """Generate with steering and hooks active and the KV cache on.

        Several prompts are left-padded with an attention mask (position ids follow the
        mask), so a batch gives the same tokens as its prompts one by one. ``steering`` takes
        :class:`~interp.interventions.steering.Steering` or :class:`~interp.interventions.steering.Clamp` specs whose
        positions are resolved against the prompt and the generated steps separately.

        >>> out = model.generate(["the cat", "a dog"], max_new_tokens=8, steering=[spec])
        >>> out.texts, out.new_tokens.shape
        """
        tokens, mask = left_padded(self, tokens_or_text)
        state = DecodeState(prompt_length=tokens.shape[1], pad=(mask == 0).sum(1))
        record: dict[str, list] | None = {} if return_steered else None
        with self.hooks([*hooks, *edit_hooks(steering, state, record)]):
            out, out_mask = generate_tokens(self, tokens, mask, state, max_new_tokens, use_cache=use_cache,
                                            do_sample=do_sample, temperature=temperature, top_k=top_k, seed=seed,
                                            stop_at_eos=stop_at_eos)
        texts = self.to_string(out[:, tokens.shape[1]:]) if self.tokenizer is not None else []
        result = GenerationResult(out, tokens.shape[1], out_mask, texts)
        if record is not None:
            result.steered = edited_positions(record, out.shape)
        return result


def layer_of(name: str) -> int | None:
    """The layer of a per-layer hook name (``blocks.L....``), or None for the others."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


# -- building HookedModels ------------------------------------------------------------------
def _config_int(config: Any, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def hf_hook_points(model: nn.Module, table: ArchTable) -> tuple[dict[str, HookPoint], int]:
    """Bind a family table to a HF model's modules; returns ``(points, n_layers)``."""
    config = model.config
    blocks = _get(model, table.blocks)
    n_heads = _config_int(config, "num_attention_heads", "n_head")
    d_model = _config_int(config, "hidden_size", "n_embd")
    d_head = _config_int(config, "head_dim") or d_model // n_heads
    points: dict[str, HookPoint] = {"hook_embed": HookPoint("hook_embed", _get(model, table.embed), "output", None, (-1, 0))}
    for name, site in table.extra_hooks.items():
        points[name] = HookPoint(name, _get(model, site.path), site.io, None, (-1, 1))
    for layer, block in enumerate(blocks):
        for position, (suffix, site) in enumerate(table.block_hooks.items()):
            if site.when is not None and not site.when(config):
                continue
            name = f"blocks.{layer}.{suffix}"
            points[name] = HookPoint(name, _get(block, site.path), site.io, layer, (layer, position),
                                     head_shape=(n_heads, d_head) if suffix == "attn.hook_z" else None)
    points["ln_final.hook_normalized"] = HookPoint(
        "ln_final.hook_normalized", _get(model, table.final_norm), "output", None, (len(blocks), 0))
    return points, len(blocks)


def _tl_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    points = {}
    n_layers = model.cfg.n_layers
    for name, module in model.hook_dict.items():
        layer = layer_of(name)
        if layer is None:
            # Outside the blocks: embeddings first; the final norm, then (a TransformerBridge
            # only) the unembedding last.
            order = {"ln_final": (n_layers, 0), "unembed": (n_layers, 1), "hook_unembed": (n_layers, 1)}.get(
                name.split(".")[0], (-1, 0))
        else:
            suffix = name.split(".", 2)[2]
            order = (layer, _TL_BLOCK_ORDER.index(suffix) if suffix in _TL_BLOCK_ORDER else len(_TL_BLOCK_ORDER))
        points[name] = HookPoint(name, module, "output", layer, order, transformer_lens=True)
    return dict(sorted(points.items(), key=lambda kv: kv[1].order))


def wrap_hf(model: nn.Module, tokenizer: Any = None, name: str | None = None) -> HookedModel:
    """A HookedModel over an already-built HF causal LM (weights untouched)."""
    model_type = getattr(model.config, "model_type", None)
    table = TABLES.get(model_type)
    if table is None:
        raise ModelLoadError(
            f"no hook table for HF model_type {model_type!r}; supported: {', '.join(sorted(TABLES))}. "
            f"Add a table to interp/model/families.py (a dozen lines) or load it through TransformerLens."
        )
    points, n_layers = hf_hook_points(model, table)
    name = name or getattr(model.config, "_name_or_path", None) or model_type
    return HookedModel(model.eval(), tokenizer, points, name=name, n_layers=n_layers,
                       d_model=_config_int(model.config, "hidden_size", "n_embd"), backend="hf")


def is_transformer_lens(model: nn.Module) -> bool:
    """Whether ``model`` is a TransformerLens model: a ``HookedTransformer`` (TransformerLens 3)
    or a ``TransformerBridge`` (TransformerLens 3 and 4), subclasses included."""
    return any(c.__name__ in ("HookedTransformer", "TransformerBridge") for c in type(model).__mro__)


def wrap_transformer_lens(model: nn.Module, name: str | None = None) -> HookedModel:
    """A HookedModel over a TransformerLens ``HookedTransformer`` or ``TransformerBridge``;
    its HookPoints (a bridge's hook aliases included) are used as they are."""
    cfg = model.cfg
    return HookedModel(model.eval(), model.tokenizer, _tl_hook_points(model), name=name or cfg.model_name,
                       n_layers=cfg.n_layers, d_model=cfg.d_model, backend="transformer_lens")
