"""The local replacement model of a HookedModel and its transcoders on one prompt.

Every MLP is replaced by its transcoder; attention patterns and norm denominators are frozen
at their values on the prompt (:mod:`.freeze`); each MLP's output is split exactly as

    mlp_out[L] = skip_L(x_in[L]) + sum_f a_f W_dec[f] + error[L] + offset[L]

where ``x_in[L]`` is what the transcoder reads, ``a_f`` the active features' codes, ``error``
the part the transcoder misses (an error node per layer and position) and ``offset`` the
constant ``b_dec`` (at positions left out of the graph, by default BOS, it is the whole
``mlp_out - skip``: those features and errors are no nodes, as in circuit-tracer). With the
features held at fixed values, the residual stream is then linear in the sources (token
embeddings, features, errors) plus constants (biases, position embeddings): the frozen
linear system whose direct effects an attribution graph lists.

A layer without a transcoder is allowed: its whole MLP output is error.

>>> rm = ReplacementModel(model, transcoders, "the flag of the land whose capital is mip is")
>>> run = rm.run()                         # the frozen system at the prompt's own sources
>>> torch.allclose(run.logits, rm.logits)  # reproduces the model
True
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.circuits.freeze import Freezer
from interp.errors import InterpError
from interp.evaluation.transcoders import mlp_hooks
from interp.model.hooks import HookPoint, HookSet, StopForward

Transcoders = Mapping[int, Any] | Sequence[Any] | str | os.PathLike
_LAYER_DIR = re.compile(r"^layer_(\d+)$")
# How far an active code may sit from its pre-activation and still count as equal (the
# attribution reads a feature's input as its pre-activation).
CODE_TOLERANCE = 1e-4


def load_transcoders(source: Transcoders, model: Any | None = None) -> dict[int, Any]:
    """``{layer: transcoder}`` from a mapping, a list (index = layer, None for none) or a
    directory: a circuit-tracer set (``config.yaml`` + ``layer_<i>.safetensors``) or
    ``interp transcoders --out DIR`` (``layer_<L>/`` each a saved transcoder)."""
    if isinstance(source, (str, os.PathLike)):
        return _load_directory(Path(source))
    if isinstance(source, Mapping):
        out = {int(k): v for k, v in source.items() if v is not None}
    elif isinstance(source, Sequence):
        out = {i: v for i, v in enumerate(source) if v is not None}
    else:
        raise InterpError(f"transcoders must be a {{layer: SAE}} dict, a list or a directory, not {type(source).__name__}")
    if not out:
        raise InterpError("no transcoders given; a replacement model needs at least one")
    return out


def _load_directory(d: Path) -> dict[int, Any]:
    import saes
    from saes.formats.circuit_tracer import CONFIG_FILE, load_circuit_tracer

    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise InterpError(f"no transcoders at {d}: it {what}; give the directory `interp transcoders --out` wrote")
    if (d / CONFIG_FILE).is_file():
        return dict(enumerate(load_circuit_tracer(d)))
    layers = {int(m.group(1)): p for p in d.iterdir() if (m := _LAYER_DIR.match(p.name)) and p.is_dir()}
    if not layers:
        raise InterpError(f"{d} holds neither a circuit-tracer set ({CONFIG_FILE}) nor layer_<L>/ transcoder "
                          "directories; point --transcoders at the --out of `interp transcoders`")
    return {layer: saes.load(p) for layer, p in sorted(layers.items())}


def mlp_input_names(layer: int) -> tuple[str, ...]:
    """Names for the MLP's own (normalised) input that HF models have no hook point for:
    TransformerLens's ``ln2.hook_normalized`` and circuit-tracer's ``mlp.hook_in``. A
    transcoder recorded at either reads the MLP module's input (Llama-style transcoders do)."""
    return (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.mlp.hook_in")


def _mlp_input_point(model: Any, name: str, layer: int) -> HookPoint:
    from interp.model.families import TABLES

    table = TABLES[model.hf_model.config.model_type]
    path = table.block_hooks["mlp.hook_post"].path.rsplit(".", 1)[0]
    block = model.hf_model.get_submodule(table.blocks)[layer]
    return HookPoint(name, block.get_submodule(path), "input", layer, (layer, 0))


@contextlib.contextmanager
def model_hooks(model: Any, pairs: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """``model.hooks(pairs)``, where a name may also be an MLP's own input (:func:`mlp_input_names`)."""
    named = [(n, fn) for n, fn in pairs if n in model.points]
    extra = [(n, fn) for n, fn in pairs if n not in model.points]
    with model.hooks(named), HookSet() as hook_set:
        for name, fn in extra:
            hook_set.add(_mlp_input_point(model, name, int(name.split(".")[1])), fn)
        yield


@dataclass
class _Layer:
    """One layer's transcoder and the hooks it reads and writes."""

    layer: int
    sae: Any | None
    hook_in: str
    hook_out: str


def _layers(model: Any, transcoders: dict[int, Any]) -> list[_Layer]:
    out = []
    for layer in range(model.n_layers):
        sae = transcoders.get(layer)
        default_in, default_out = mlp_hooks(model, layer)
        if sae is None:
            out.append(_Layer(layer, None, default_in, default_out))
            continue
        if not getattr(sae, "is_transcoder", False):
            raise InterpError(f"the dictionary for layer {layer} is an SAE, not a transcoder (built with d_out); "
                              "attribution graphs replace MLPs with transcoders")
        meta = getattr(sae, "metadata", {}) or {}
        hook_in, hook_out = meta.get("hook_name") or default_in, meta.get("hook_name_out") or default_out
        if hook_out != default_out:
            raise InterpError(f"the transcoder for layer {layer} writes {hook_out}, not {default_out}: a replacement "
                              f"model replaces each MLP's output; pass it under the layer it replaces")
        if hook_in not in model.points and hook_in not in mlp_input_names(layer):
            model.check_hooks(hook_in)  # raises, naming the closest hooks
        if hook_in in model.points and (model.points[hook_in].order >= model.points[hook_out].order
                                        or model.points[hook_in].layer_index != layer):
            raise InterpError(f"the transcoder for layer {layer} reads {hook_in}, which is not before {hook_out} in "
                              f"block {layer}; it must read its MLP's input (e.g. {default_in})")
        if sae.d_in != model.d_model or sae.d_out != model.d_model:
            raise InterpError(f"the transcoder for layer {layer} maps {sae.d_in} -> {sae.d_out}, but {model.name}'s "
                              f"residual stream is {model.d_model} wide")
        out.append(_Layer(layer, sae.eval(), hook_in, hook_out))
    extra = sorted(set(transcoders) - set(range(model.n_layers)))
    if extra:
        raise InterpError(f"transcoders given for layers {extra}, but {model.name} has layers 0 to {model.n_layers - 1}")
    return out


@dataclass
class Run:
    """One forward pass of the frozen system, batch ``B``."""

    x_in: list[torch.Tensor]        # per layer [B, pos, d_model]: what each transcoder reads
    final: torch.Tensor             # [B, pos, d_model]: the final norm's output
    logits: torch.Tensor | None     # [B, pos, d_vocab], None when the pass stopped at the final norm
    rest: list[torch.Tensor]        # per layer [B, pos, d_model]: the MLP output less its skip path
    mlp_out: list[torch.Tensor]     # per layer [B, pos, d_model]: the MLP output
    embed: torch.Tensor             # [B, pos, d_model]: token embeddings (hook_embed)


class ReplacementModel:
    """The local replacement model of ``model`` with ``transcoders`` on one prompt.

    Attributes (``pos`` the prompt's length, ``n`` the active features):
        tokens: ``[pos]`` the prompt's token ids (BOS first where the tokenizer has one).
        logits: ``[pos, d_vocab]`` the model's own logits.
        feature_layer, feature_pos, feature_index, activations: ``[n]`` the active features
            (sorted by layer, position, index: circuit-tracer's node order) and their codes.
        decoder: ``[n, d_model]`` each active feature's decoder row (not scaled by its code).
        errors: ``[n_layers, pos, d_model]`` the error nodes' vectors.
        embed: ``[pos, d_model]`` the token embeddings.
        excluded: ``[pos]`` bool, positions whose features and errors are no nodes.
    """

    def __init__(self, model: Any, transcoders: Transcoders, prompt: str | torch.Tensor | Sequence[int], *,
                 exclude_bos: bool = True) -> None:
        self.model = model
        self.layers = _layers(model, load_transcoders(transcoders, model))
        self.tokens = _tokens(model, prompt)
        self.n_pos = int(self.tokens.shape[0])
        self.freezer = Freezer(model)
        bos = model.bos_token_id
        self.excluded = torch.zeros(self.n_pos, dtype=torch.bool)
        if exclude_bos and bos is not None and int(self.tokens[0]) == bos:
            self.excluded[0] = True
        with torch.no_grad(), self.freezer.record():
            clean = self._forward(self.tokens[None], None, stop=False)
        assert clean.logits is not None
        self.logits = clean.logits[0]
        self.embed = clean.embed[0]
        self.x_in = [x[0] for x in clean.x_in]
        self._split_mlp_outputs([m[0] for m in clean.mlp_out])

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_features(self) -> int:
        return int(self.activations.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ the clean split

    @torch.no_grad()
    def _split_mlp_outputs(self, mlp_out: list[torch.Tensor]) -> None:
        """Active features, error and offset of each layer's MLP output on the prompt."""
        keep = ~self.excluded.to(self.device)[:, None]
        found, values, decoders, errors, offsets = [], [], [], [], []
        for lt, x, out in zip(self.layers, self.x_in, mlp_out):
            if lt.sae is None:
                errors.append(torch.where(keep, out, 0))
                offsets.append(torch.where(keep, 0, out))
                continue
            codes = _codes(lt, x) * keep
            pos, feat = codes.nonzero(as_tuple=True)
            decoder = lt.sae.W_dec[feat].detach().to(out.dtype)
            skip = lt.sae.add_skip(torch.zeros_like(out), x)
            decoded = torch.zeros_like(out).index_add_(0, pos, codes[pos, feat, None] * decoder)
            b_dec = lt.sae.b_dec.detach().to(out.dtype).expand_as(out)
            errors.append(torch.where(keep, out - skip - decoded - b_dec, 0))
            offsets.append(torch.where(keep, b_dec, out - skip))
            found.append(torch.stack([torch.full_like(pos, lt.layer), pos, feat], 1))
            values.append(codes[pos, feat])
            decoders.append(decoder)
        device, d = self.device, self.model.d_model
        table = torch.cat(found) if found else torch.empty(0, 3, dtype=torch.long, device=device)
        self.feature_layer, self.feature_pos, self.feature_index = table.unbind(1)
        self.activations = torch.cat(values) if values else torch.empty(0, device=device)
        self.decoder = torch.cat(decoders) if decoders else torch.empty(0, d, device=device)
        self.errors = torch.stack(errors)
        self.offsets = torch.stack(offsets)

    # ------------------------------------------------------------------ running the frozen system

    def run(self, activations: torch.Tensor | None = None, errors: torch.Tensor | None = None,
            embed: torch.Tensor | None = None, *, grad: bool = False, stop: bool = False,
            freeze: bool = True) -> Run:
        """The frozen linear system with the given sources (default: the prompt's own).

        Args:
            activations: ``[B, n]`` or ``[n]`` feature values (held fixed: features are sources).
            errors: ``[B, n_layers, pos, d_model]`` or ``[n_layers, pos, d_model]`` error vectors.
            embed: ``[B, pos, d_model]`` or ``[pos, d_model]`` token embeddings.
            grad: make the embeddings and each layer's ``rest`` leaves that require grad (for
                attribution); the forward pass keeps its graph.
            stop: stop after the final norm (no logits).
            freeze: freeze attention and norms (False only for diagnostics).
        """
        sources = [s for s in (activations, errors, embed) if s is not None]
        batch = max([s.shape[0] for s, full in zip(sources, (2, 4, 3)) if s.ndim == full] or [1]) if sources else 1
        acts = _batched(self.activations if activations is None else activations, batch, 2)
        errs = _batched(self.errors if errors is None else errors, batch, 4)
        emb = None if embed is None else _batched(embed, batch, 3)
        rest = self._rest(acts, errs)
        tokens = self.tokens[None].expand(batch, -1)
        context = self.freezer.frozen() if freeze else contextlib.nullcontext()
        with context, torch.set_grad_enabled(grad):
            return self._forward(tokens, rest, stop=stop, embed=emb, grad=grad)

    def _rest(self, acts: torch.Tensor, errors: torch.Tensor) -> list[torch.Tensor]:
        """Per layer ``[B, pos, d]``: decoded features + error + offset."""
        out = []
        for lt in self.layers:
            rest = errors[:, lt.layer] + self.offsets[lt.layer]
            sel = (self.feature_layer == lt.layer).nonzero().squeeze(1).to(acts.device)
            if len(sel):
                pos = self.feature_pos[sel].to(acts.device)
                rest = rest.index_add(1, pos, acts[:, sel, None] * self.decoder[sel])
            out.append(rest)
        return out

    def _forward(self, tokens: torch.Tensor, rest: list[torch.Tensor] | None, *, stop: bool,
                 embed: torch.Tensor | None = None, grad: bool = False) -> Run:
        """One pass with the MLP outputs set to ``skip(x_in) + rest`` (``rest`` None: record the
        model's own MLP outputs, less the skip path, untouched)."""
        x_in: list[torch.Tensor | None] = [None] * self.n_layers
        rests: list[torch.Tensor | None] = [None] * self.n_layers
        outs: list[torch.Tensor | None] = [None] * self.n_layers
        seen: dict[str, torch.Tensor] = {}

        def on_embed(t: torch.Tensor, hook: Any) -> torch.Tensor | None:
            e = t if embed is None else embed.to(t.dtype)
            if grad:
                e = e.detach().requires_grad_(True)
            seen["embed"] = e
            return e if (grad or embed is not None) else None

        def on_in(t: torch.Tensor, hook: Any, layer: int) -> None:
            x_in[layer] = t

        def on_out(t: torch.Tensor, hook: Any, layer: int) -> torch.Tensor | None:
            lt, x = self.layers[layer], x_in[layer]
            skip = lt.sae.add_skip(torch.zeros_like(t), x) if lt.sae is not None else torch.zeros_like(t)
            if rest is None:
                rests[layer], outs[layer] = t - skip, t
                return None
            r = rest[layer].to(t.dtype)
            if grad:
                r = r.detach().requires_grad_(True)
            rests[layer], outs[layer] = r, skip + r
            return outs[layer]

        def on_final(t: torch.Tensor, hook: Any) -> None:
            seen["final"] = t
            if stop:
                raise StopForward(hook.name)

        hooks: list[tuple[str, Any]] = [("hook_embed", on_embed), ("ln_final.hook_normalized", on_final)]
        for lt in self.layers:
            hooks += [(lt.hook_in, _bind(on_in, lt.layer)), (lt.hook_out, _bind(on_out, lt.layer))]
        logits = None
        with model_hooks(self.model, hooks):
            try:
                logits = self.model(tokens)
            except StopForward:
                pass
        return Run(x_in=x_in, final=seen["final"], logits=logits, rest=rests, mlp_out=outs,  # type: ignore[arg-type]
                   embed=seen["embed"])

    # ------------------------------------------------------------------ node inputs

    def feature_inputs(self, x_in: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, n]`` every active feature's pre-activation given the transcoder inputs."""
        cols = []
        for lt in self.layers:
            sel = (self.feature_layer == lt.layer).nonzero().squeeze(1)
            if len(sel):
                pre = lt.sae.pre_acts(x_in[lt.layer])                      # [B, pos, d_sae]
                cols.append(pre[:, self.feature_pos[sel], self.feature_index[sel]])
        return torch.cat(cols, 1) if cols else x_in[0].new_zeros(x_in[0].shape[0], 0)

    def unembedding(self) -> torch.Tensor:
        """``[d_vocab, d_model]`` the output embedding."""
        return self.model.hf_model.get_output_embeddings().weight.detach()

    @contextlib.contextmanager
    def no_param_grads(self) -> Iterator[None]:
        """Parameters of the model and transcoders stop requiring grad for the block (so a
        backward pass through the frozen system keeps no weight gradients); restored after."""
        params = list(self.model.model.parameters()) + [p for lt in self.layers if lt.sae is not None
                                                         for p in lt.sae.parameters()]
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)


def _bind(fn: Any, layer: int) -> Any:
    def hook(t: torch.Tensor, hook: Any) -> Any:
        return fn(t, hook, layer)
    return hook


def _batched(t: torch.Tensor, batch: int, ndim: int) -> torch.Tensor:
    return t if t.ndim == ndim else t.unsqueeze(0).expand(batch, *t.shape)


def _tokens(model: Any, prompt: str | torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt)[0]
    else:
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1:
            raise InterpError(f"an attribution graph explains one prompt; got token ids of shape {list(tokens.shape)}")
    if tokens.numel() == 0:
        raise InterpError("the prompt is empty; give at least one token")
    limit = model.max_positions
    if limit is not None and tokens.numel() > limit:
        raise InterpError(f"the prompt has {tokens.numel()} tokens but {model.name} embeds at most {limit}; shorten it")
    return tokens.to(model.device)


def _codes(lt: _Layer, x: torch.Tensor) -> torch.Tensor:
    """``[pos, d_sae]`` dense codes, checked to equal the pre-activations where active."""
    codes = lt.sae.encode(x)
    pre = lt.sae.pre_acts(x)
    active = codes != 0
    gap = (codes - pre).abs()[active]
    if gap.numel() and float(gap.max()) > CODE_TOLERANCE * max(1.0, float(codes.abs().max())):
        raise InterpError(f"the layer-{lt.layer} transcoder ({type(lt.sae).__name__}) gives active codes that differ "
                          "from its pre-activations; attribution reads an active feature's input as its "
                          "pre-activation (ReLU, JumpReLU, TopK, BatchTopK, Gated and Matryoshka codes do)")
    return codes

