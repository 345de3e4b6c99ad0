"""Loading SAELens SAE directories (``cfg.json`` + ``sae_weights.safetensors``, no ``saes`` block).

Supported architectures and the class each loads as (for inference):

* ``standard`` -> :class:`~saes.ReLUSAE`;
* ``jumprelu`` -> :class:`~saes.JumpReLUSAE` (SAELens saves BatchTopK this way);
* ``topk`` -> :class:`~saes.TopKSAE` (``rescale_acts_by_decoder_norm`` folded into the weights);
* ``matching_pursuit`` -> :class:`~saes.MPSAE`;
* ``gated`` -> :class:`~saes.GatedSAE`;
* transcoders (``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
  ``jumprelu_skip_transcoder``, and ``topk`` files naming ``metadata.hook_name_out``) ->
  the same classes built with ``d_out`` (and ``skip``), ``W_skip`` read as stored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.errors import FormatError
from saes.formats.native import CFG_FILE, assign_tensors, check_metadata, check_sizes, metadata_from

# Transcoders: SAELens's classes (and this package's TopK names, see saes.formats.native)
# -> (the inference form, skip path).
TRANSCODERS = {
    "transcoder": ("standard", False), "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True),
    "topk_transcoder": ("topk", False), "topk_skip_transcoder": ("topk", True),
}
SUPPORTED = ("standard", "topk", "jumprelu", "matching_pursuit", "gated", *TRANSCODERS)


def transcoder_settings(arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"d_out": ..., "skip": ...}`` when the cfg.json describes a transcoder, else ``{}``.

    SAELens's transcoder classes say so by name; a ``topk`` file is one when its metadata
    names an output hook and it does not subtract ``b_dec`` from its input (SAELens's
    HookedSAETransformer splices such an SAE as a transcoder)."""
    d_out = cfg.get("d_out")
    if arch in TRANSCODERS:
        return {"d_out": int(d_out or cfg["d_in"]), "skip": TRANSCODERS[arch][1]}
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    if arch == "topk" and (meta.get("hook_name_out") or cfg.get("hook_name_out")) \
            and not cfg.get("apply_b_dec_to_input", True):
        return {"d_out": int(d_out or cfg["d_in"]), "skip": False}
    return {}


def _build(arch: str, cfg: dict[str, Any], where: Path, dtype: Any, **extra: Any) -> SAE:
    """The empty SAE a SAELens cfg.json of architecture ``arch`` describes (``extra``: a
    transcoder's ``d_out`` and ``skip``)."""
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    meta = check_metadata(metadata_from(cfg), where.parent / CFG_FILE)
    if arch == "standard":
        return registry.get("relu")(d_in, d_sae, dtype=dtype, metadata=meta, **extra)
    if arch in ("jumprelu", "gated"):
        return registry.get(arch)(d_in, d_sae, dtype=dtype, metadata=meta, **extra)
    if arch == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise FormatError(f"{where}: a topk SAE needs 'k' in cfg.json")
        return registry.get("topk")(d_in, d_sae, int(k), dtype=dtype, metadata=meta, **extra)
    max_it = cfg.get("max_iterations")
    steps = int(max_it) if max_it else d_in
    return registry.get("mp")(
        d_in, d_sae, k=max(1, min(steps, d_sae - 1)), dtype=dtype, metadata=meta, **extra,
        residual_threshold=float(cfg.get("residual_threshold", 1e-2)) or None,
        max_iterations=steps,
        stop_on_duplicate_support=bool(cfg.get("stop_on_duplicate_support", True)),
    )


def load_saelens(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    """The SAE of a SAELens cfg.json, with the file's tensors."""
    arch = cfg.get("architecture", "standard")
    if arch not in SUPPORTED:
        raise FormatError(
            f"{where}: SAELens architecture {arch!r} is not supported for loading; supported: "
            f"{', '.join(SUPPORTED)}"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none", False):
        raise FormatError(
            f"{where}: normalize_activations={norm!r} means the weights expect transformed inputs; "
            "fold the normalisation into the weights in SAELens (or re-save with 'none') first"
        )
    if cfg.get("finetuning_scaling_factor") and "scaling_factor" in tensors:
        raise FormatError(f"{where}: files with a finetuning scaling_factor are not supported")
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
    extra = transcoder_settings(arch, cfg)
    if extra and cfg.get("apply_b_dec_to_input"):
        raise FormatError(f"{where}: a transcoder's b_dec lives in its output space, so apply_b_dec_to_input must "
                          "be false (SAELens refuses it too); the cfg.json is damaged or edited")
    check_sizes(int(cfg["d_in"]), int(cfg["d_sae"]), tensors, where, str(where.parent / CFG_FILE),
                d_out=extra.get("d_out"))
    form = TRANSCODERS.get(arch, (arch,))[0]
    sae = _build(form, cfg, where, dtype, **extra)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", not extra))
    names = [n for n, _ in sae.named_parameters()]
    if form == "jumprelu" and "threshold" not in names:  # read into a buffer where it is not a parameter
        names.append("threshold")
    assign_tensors(sae, tensors, names, where)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks h * ||d_i|| and decodes with z / ||d_i||; folding the norms into
        # the weights gives the same codes and reconstruction with plain TopK.
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=-1)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae
