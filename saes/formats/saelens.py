"""Loading SAELens SAE directories (``cfg.json`` + ``sae_weights.safetensors``, no ``saes`` block).

Supported architectures and the class each loads as (for inference):

* ``standard`` -> :class:`~saes.ReLUSAE`;
* ``jumprelu`` -> :class:`~saes.JumpReLUSAE` (SAELens saves BatchTopK this way);
* ``topk`` -> :class:`~saes.TopKSAE` (``rescale_acts_by_decoder_norm`` folded into the weights);
* ``matching_pursuit`` -> :class:`~saes.MPSAE`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.errors import FormatError
from saes.formats.native import CFG_FILE, assign_tensors, check_sizes, metadata_from

SUPPORTED = ("standard", "topk", "jumprelu", "matching_pursuit")


def _build(arch: str, cfg: dict[str, Any], where: Path, dtype: Any) -> SAE:
    """The empty SAE a SAELens cfg.json of architecture ``arch`` describes."""
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    meta = metadata_from(cfg)
    if arch == "standard":
        return registry.get("relu")(d_in, d_sae, dtype=dtype, metadata=meta)
    if arch == "jumprelu":
        return registry.get("jumprelu")(d_in, d_sae, dtype=dtype, metadata=meta)
    if arch == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise FormatError(f"{where}: a topk SAE needs 'k' in cfg.json")
        return registry.get("topk")(d_in, d_sae, int(k), dtype=dtype, metadata=meta)
    max_it = cfg.get("max_iterations")
    steps = int(max_it) if max_it else d_in
    return registry.get("mp")(
        d_in, d_sae, k=max(1, min(steps, d_sae - 1)), dtype=dtype, metadata=meta,
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
    check_sizes(int(cfg["d_in"]), int(cfg["d_sae"]), tensors, where, str(where.parent / CFG_FILE))
    sae = _build(arch, cfg, where, dtype)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    assign_tensors(sae, tensors, [n for n, _ in sae.named_parameters()], where)
    if arch == "jumprelu":
        assign_tensors(sae, tensors, ["threshold"], where)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks h * ||d_i|| and decodes with z / ||d_i||; folding the norms into
        # the weights gives the same codes and reconstruction with plain TopK.
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=-1)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae
