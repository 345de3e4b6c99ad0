"""Loading EleutherAI sparsify SAEs (``cfg.json`` + ``sae.safetensors``), as TopK SAEs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.errors import FormatError
from saes.formats import schema
from saes.formats.native import CFG_FILE, assign_tensors, check_sizes

WEIGHTS_FILE = "sae.safetensors"

F = schema.Field
FIELDS = {
    "d_in": F("int", minimum=1), "k": F("int", minimum=1), "num_latents": F("int", optional=True, minimum=0),
    "expansion_factor": F("int", optional=True, minimum=1), "activation": F("str", optional=True),
}


def load_sparsify(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    """The TopK SAE of a sparsify cfg.json, with the file's tensors under our names."""
    if cfg.get("transcode"):
        raise FormatError(f"{where} is a sparsify transcoder (input and output differ); only SAEs load here")
    if cfg.get("skip_connection") or "W_skip" in tensors:
        raise FormatError(f"{where} has a skip connection (W_skip), which this package does not support")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FormatError(f"{where}: sparsify activation {activation!r} is not supported (only 'topk')")
    cfg = schema.check(cfg, FIELDS, f"{where.parent / CFG_FILE} (sparsify)", FormatError,
                       required=("d_in", "k"), warn_unknown=False)
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    meta = {"hook_name": None, "sparsify_hookpoint": where.parent.name}
    try:
        mapped = {
            "W_enc": tensors["encoder.weight"].T,
            "b_enc": tensors["encoder.bias"],
            "W_dec": tensors["W_dec"],
            "b_dec": tensors["b_dec"],
        }
    except KeyError as err:
        raise FormatError(f"{where}: sparsify weights lack {err}; found {sorted(tensors)}") from err
    check_sizes(d_in, d_sae, mapped, where, f"{where.parent / CFG_FILE} (sparsify)")
    sae = registry.get("topk")(d_in, d_sae, int(cfg["k"]), dtype=dtype, metadata=meta)
    assign_tensors(sae, mapped, ["W_enc", "b_enc", "W_dec", "b_dec"], where)
    return sae
