"""circuit-tracer's per-layer transcoder set, written and read (circuit-tracer is not needed).

The layout is the one circuit-tracer 0.5.0 loads as a ``transcoder_set``: its local cache
(``load_transcoders_from_cache``) and a hub repository (``ReplacementModel.from_pretrained``)
both hold it, read by ``load_transcoder_set`` and ``load_relu_transcoder``::

    config.yaml              model_kind: transcoder_set, model_name, feature_input_hook,
                             feature_output_hook, scan (hooks relative to a block:
                             "hook_resid_mid", "ln2.hook_normalized", "hook_mlp_out")
    layer_0.safetensors      W_enc [d_sae, d_model]   (the transpose of this package's)
    layer_1.safetensors      W_dec [d_sae, d_model], b_enc [d_sae], b_dec [d_model]
    ...                      activation_function.threshold [d_sae]   (JumpReLU only)
                             W_skip [d_model, d_model]               (skip-transcoders only)

circuit-tracer encodes ``act(x @ W_enc.T + b_enc)`` with ``act`` a JumpReLU when the file
has a threshold (``h * 1[h > threshold]``) and a ReLU otherwise, and decodes
``acts @ W_dec + b_dec + x @ W_skip.T``: so a ReLU or JumpReLU transcoder (BatchTopK codes
infer as a JumpReLU with one threshold) is written exactly. TopK codes depend on the other
latents of the token, which no per-latent threshold reproduces; they are refused rather
than written as something else. Every layer from 0 up must have one, of one width, all
with or all without the skip path, reading and writing the same hooks of their block
(circuit-tracer's ``TranscoderSet`` requires it).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.errors import FormatError
from saes.formats.durable import (
    atomic_save_tensors,
    atomic_write_text,
    ensure_directory,
    read_tensors,
)

CONFIG_FILE = "config.yaml"
CONFIG_MAX_BYTES = 1 << 16
THRESHOLD_KEY = "activation_function.threshold"
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def _block_hook(sae: SAE, key: str, index: int) -> tuple[int, str]:
    """``(layer, hook within the block)`` of a transcoder's recorded hook ``key``."""
    name = sae.metadata.get(key)
    found = _BLOCK_HOOK.match(name) if isinstance(name, str) else None
    if found is None:
        raise FormatError(f"transcoder {index} records {key}={name!r}, not a block hook like blocks.0.hook_mlp_out; "
                          "circuit-tracer needs the hooks each layer's transcoder reads and writes")
    return int(found.group(1)), found.group(2)


def layer_tensors(sae: SAE, index: int) -> dict[str, torch.Tensor]:
    """One layer's tensors under circuit-tracer's names (see the module docstring)."""
    arch = sae.saelens_architecture
    if not sae.is_transcoder or sae.d_out != sae.d_in:
        raise FormatError(f"transcoder {index} maps d_in={sae.d_in} to d_out={sae.d_out if sae.is_transcoder else None}"
                          "; circuit-tracer's per-layer transcoders read and write the residual width (d_model)")
    if arch not in ("standard", "jumprelu"):
        raise FormatError(
            f"transcoder {index} is a {type(sae).__name__} with {arch} codes; circuit-tracer runs ReLU and JumpReLU "
            "transcoders only, and TopK codes depend on the token's other latents, which no per-latent threshold "
            "reproduces: train a BatchTopK transcoder (its inference form is a JumpReLU) or a JumpReLU one")
    params = dict(sae.named_parameters())
    out = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": params["b_enc"], "b_dec": sae.b_dec}
    if sae.W_skip is not None:
        out["W_skip"] = sae.W_skip
    threshold = getattr(sae, "threshold", None)
    if arch == "jumprelu":
        assert isinstance(threshold, torch.Tensor)
        theta = threshold if threshold.ndim else threshold.expand(sae.d_sae)
        if bool((theta < 0).any()):
            raise FormatError(f"transcoder {index} has a negative threshold (an untrained BatchTopK θ?); "
                              "circuit-tracer's JumpReLU keeps negative codes there, this package's does not")
        out[THRESHOLD_KEY] = theta
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def save_circuit_tracer(
    transcoders: Sequence[SAE], directory: str | os.PathLike, *, model_name: str | None = None,
    scan: str | None = None,
) -> Path:
    """Write ``transcoders`` (layer 0, 1, ... in order) as a circuit-tracer transcoder set.

    Args:
        transcoders: one per layer, each recording its hooks (``metadata["hook_name"]`` and
            ``["hook_name_out"]``, e.g. ``blocks.3.hook_resid_mid`` -> ``blocks.3.hook_mlp_out``).
        directory: where ``config.yaml`` and ``layer_<i>.safetensors`` go.
        model_name: the model they were trained on (default: the one they record).
        scan: circuit-tracer's name for the set (default: the directory's name).

    Load it in circuit-tracer with
    ``load_transcoders_from_cache(name, cache_dir=parent)`` (``directory = parent/name``) or
    ``load_transcoder_set({i: path of layer_i.safetensors}, ...)``.
    """
    if not transcoders:
        raise FormatError("a circuit-tracer transcoder set needs at least one transcoder (layer 0)")
    hooks, widths, skips = set(), set(), set()
    tensors = []
    for i, sae in enumerate(transcoders):
        tensors.append(layer_tensors(sae, i))
        (layer_in, hook_in), (layer_out, hook_out) = _block_hook(sae, "hook_name", i), _block_hook(sae, "hook_name_out", i)
        if layer_in != i or layer_out != i:
            raise FormatError(f"transcoder {i} reads blocks.{layer_in} and writes blocks.{layer_out}; circuit-tracer "
                              f"needs layer {i}'s transcoder at position {i} (pass them in layer order, 0 first)")
        hooks.add((hook_in, hook_out))
        widths.add(sae.d_sae)
        skips.add(sae.skip)
    if len(hooks) > 1 or len(widths) > 1 or len(skips) > 1:
        raise FormatError(f"circuit-tracer's transcoder set shares one input and output hook, one width and one skip "
                          f"setting across layers; got hooks {sorted(hooks)}, d_sae {sorted(widths)}, skip {sorted(skips)}")
    (hook_in, hook_out), = hooks
    d = Path(directory)
    names = sorted({sae.metadata.get("model_name") for sae in transcoders} - {None}, key=str)
    config = {"model_kind": "transcoder_set", "model_name": model_name or (names[0] if len(names) == 1 else None),
              "feature_input_hook": hook_in, "feature_output_hook": hook_out, "scan": scan or d.resolve().name}
    ensure_directory(d)
    for i, t in enumerate(tensors):
        atomic_save_tensors(d / layer_file(i), t)
    # JSON scalars are YAML scalars: each line is a YAML mapping entry that yaml.safe_load reads.
    atomic_write_text(d / CONFIG_FILE, "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return d


def _read_config(path: Path) -> dict[str, Any]:
    """The ``key: value`` lines of a config.yaml as written above (JSON scalars, or bare strings)."""
    out: dict[str, Any] = {}
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise FormatError(f"{path} is {path.stat().st_size:,} bytes, far more than a transcoder set's config")
    text = path.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise FormatError(f"{path}: line {line[:80]!r} is not 'key: value'")
        value = value.strip()
        try:
            out[key.strip()] = json.loads(value) if value else None
        except ValueError:
            out[key.strip()] = value.strip("'")
    return out


def load_circuit_tracer(directory: str | os.PathLike, dtype: Any = torch.float32) -> list[SAE]:
    """The transcoders of a circuit-tracer transcoder set (ReLU or JumpReLU, per layer), with
    their hooks recorded as ``blocks.<i>.<hook>``."""
    d = Path(directory)
    config = _read_config(d / CONFIG_FILE) if (d / CONFIG_FILE).is_file() else {}
    if config.get("model_kind", "transcoder_set") != "transcoder_set":
        raise FormatError(f"{d / CONFIG_FILE}: model_kind {config.get('model_kind')!r}; only per-layer transcoder "
                          "sets (transcoder_set) are read here")
    out: list[SAE] = []
    while (d / layer_file(len(out))).is_file():
        i = len(out)
        where = d / layer_file(i)
        tensors, _ = read_tensors(where)
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors)
        if missing:
            raise FormatError(f"{where} lacks {sorted(missing)}; found {sorted(tensors)}")
        d_sae, d_model = tensors["W_dec"].shape
        meta = {"model_name": config.get("model_name"), "hook_name": f"blocks.{i}.{config.get('feature_input_hook')}",
                "hook_name_out": f"blocks.{i}.{config.get('feature_output_hook')}"}
        kind = "jumprelu" if THRESHOLD_KEY in tensors else "relu"
        sae = registry.get(kind)(int(d_model), int(d_sae), d_out=int(d_model), skip="W_skip" in tensors,
                                 dtype=dtype, metadata=meta)
        with torch.no_grad():
            mine = {"W_enc": tensors["W_enc"].T, "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"],
                    "b_dec": tensors["b_dec"], "W_skip": tensors.get("W_skip"), "threshold": tensors.get(THRESHOLD_KEY)}
            for name, target in [*sae.named_parameters(), *sae.named_buffers()]:
                if mine.get(name) is None or tuple(mine[name].shape) != tuple(target.shape):
                    raise FormatError(f"{where}: {name} does not fit a [{d_sae}, {d_model}] transcoder")
                target.copy_(mine[name].to(target.dtype))
        out.append(sae.eval())
    if not out:
        raise FormatError(f"{d} holds no {layer_file(0)}: not a circuit-tracer transcoder set")
    return out
