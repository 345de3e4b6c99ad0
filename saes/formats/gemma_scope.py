"""Loading Gemma Scope SAEs (``params.npz``), as :class:`~saes.JumpReLUSAE`.

A Gemma Scope directory (``layer_20/width_16k/average_l0_71/``) holds one ``params.npz``
with ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``
and ``threshold [d_sae]``, and no config: the sizes come from the shapes. The encoder does
not subtract ``b_dec`` first::

    h = x @ W_enc + b_enc;  z = ReLU(h) * 1[h > threshold];  x_hat = z @ W_dec + b_dec

The archive is read with ``allow_pickle=False``: an object array is refused, not run.
Where the path names the release and layer (as Hugging Face downloads do:
``.../gemma-scope-2b-pt-res/.../layer_20/...``), the model and hook are recorded in the
SAE's metadata under TransformerLens names; embedding SAEs get none (SAELens rescales
them for its own hook; here they load as the file holds them).
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.dtypes import parse_dtype
from saes.errors import FormatError
from saes.formats.native import assign_tensors

WEIGHTS_FILE = "params.npz"
# Gemma Scope's names; some copies spell the matrices in lower case.
NAMES = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
_RELEASE = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)\b")
_HOOKS = {"res": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "att": "blocks.{}.attn.hook_z"}


def read_params(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of a ``params.npz`` as tensors under our names (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise FormatError(
            f"{path} is not a readable Gemma Scope params.npz (numeric arrays only) ({err}); "
            "download it again"
        ) from err
    tensors: dict[str, torch.Tensor] = {}
    unknown = []
    for key, array in arrays.items():
        name = NAMES.get(key.lower())
        if name is None:
            unknown.append(key)
        elif not np.issubdtype(array.dtype, np.floating):
            raise FormatError(f"{path}: array {key!r} has dtype {array.dtype}, not floating point")
        else:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    if unknown:
        raise FormatError(
            f"{path}: arrays {sorted(unknown)} are not part of a Gemma Scope JumpReLU SAE "
            f"(expected {sorted(set(NAMES.values()))}); this file is of another kind"
        )
    missing = sorted(set(NAMES.values()) - set(tensors))
    if missing:
        raise FormatError(f"{path} lacks {missing} (found {sorted(tensors)}); the file is incomplete")
    if tensors["W_enc"].ndim != 2:
        raise FormatError(f"{path}: W_enc has shape {list(tensors['W_enc'].shape)}, expected [d_in, d_sae]")
    return tensors


def metadata_from_path(path: Path) -> dict[str, Any]:
    """Model and hook names a Gemma Scope path spells out, else none."""
    text = path.as_posix()
    layer = next((int(m.group(1)) for p in reversed(path.parts) if (m := re.fullmatch(r"layer_(\d+)", p))), None)
    release = _RELEASE.search(text)
    if release is None:
        return {}
    size, kind, site = release.groups()
    meta: dict[str, Any] = {"model_name": f"gemma-2-{size}" + ("-it" if kind == "it" else "")}
    if layer is not None:
        meta["hook_name"] = _HOOKS[site].format(layer)
    return meta


def load_gemma_scope(path: Path, dtype: Any) -> SAE:
    """The :class:`~saes.JumpReLUSAE` of a Gemma Scope ``params.npz``."""
    tensors = read_params(path)
    d_in, d_sae = tensors["W_enc"].shape
    dt = parse_dtype(dtype if dtype is not None else tensors["W_enc"].dtype)
    sae = registry.get("jumprelu")(int(d_in), int(d_sae), dtype=dt, metadata=metadata_from_path(path.parent))
    sae.apply_b_dec_to_input = False  # Gemma Scope encodes x itself, not x - b_dec
    assign_tensors(sae, tensors, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], path)
    return sae
