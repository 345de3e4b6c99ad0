"""``saes.load``: read an SAE written by this package, SAELens, sparsify, Gemma Scope or
dictionary_learning.

``cfg.json`` is checked before use (wrong types are errors, unknown keys warnings), the
weights' checksum is verified (:func:`saes.formats.durable.read_tensors`), and the layout
picks the reader: a ``saes`` block is ours (:mod:`.native`), other ``sae_weights.safetensors``
directories are SAELens's (:mod:`.saelens`), ``sae.safetensors`` is sparsify's
(:mod:`.sparsify`), ``params.npz`` is Gemma Scope's (:mod:`.gemma_scope`) and ``ae.pt`` with a
``config.json`` is dictionary_learning's (:mod:`.dictionary_learning`). Nothing here runs
code from a file: JSON and safetensors are read as data, ``params.npz`` with
``allow_pickle=False`` and ``ae.pt`` with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from saes.architectures.base import SAE
from saes.dtypes import DTYPES, parse_dtype
from saes.errors import ConfigError, FormatError
from saes.formats import dictionary_learning, gemma_scope, schema
from saes.formats.durable import read_tensors, read_tensors_checked
from saes.formats.native import (
    CFG_FILE,
    INTERRUPTED,
    WEIGHTS_FILE,
    WEIGHTS_MARK,
    check_binding,
    check_file_dtypes,
    check_weight_tensor,
    load_ours,
)
from saes.formats.saelens import load_saelens
from saes.formats.sparsify import WEIGHTS_FILE as SPARSIFY_WEIGHTS_FILE
from saes.formats.sparsify import load_sparsify

F = schema.Field
_DTYPE = F("str", optional=True, choices=tuple(DTYPES) + tuple(f"torch.{d}" for d in DTYPES))
# Fields this package reads from any cfg.json (ours and SAELens's); only these are type-checked
# in foreign files, whose other keys belong to their own library.
READ_FIELDS: dict[str, schema.Field] = {
    "architecture": F("str"),
    "d_in": F("int", minimum=1),
    "d_sae": F("int", optional=True, minimum=1),
    "dtype": _DTYPE,
    "device": F("str", optional=True),
    "apply_b_dec_to_input": F("bool", optional=True),
    "normalize_activations": F("any", optional=True),
    "reshape_activations": F("str", optional=True),
    "k": F("int", optional=True, minimum=1),
    "d_out": F("int", optional=True, minimum=1),
    "residual_threshold": F("number", optional=True),
    "max_iterations": F("int", optional=True, minimum=1),
    "stop_on_duplicate_support": F("bool", optional=True),
    "model_name": F("str", optional=True),
    "hook_name": F("str", optional=True),
    "hook_point": F("str", optional=True),
    "hook_name_out": F("str", optional=True),
    "hook_head_index": F("int", optional=True),
    "context_size": F("int", optional=True),
    "prepend_bos": F("bool", optional=True),
    "dataset_path": F("str", optional=True),
    "metadata": F("dict", optional=True),
    "saes": F("dict"),
}


def load(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load an SAE saved by this package, SAELens, sparsify, Gemma Scope or dictionary_learning.

    Args:
        directory: the SAE's directory, or a file inside it (a dictionary_learning
            checkpoint ``checkpoints/ae_<step>.pt`` names the weights to read).
        device: where to put it.
        dtype: parameter dtype; default the file's.

    Supported: ours (every architecture); SAELens ``standard`` (→ :class:`ReLUSAE`),
    ``topk``, ``jumprelu`` (→ :class:`JumpReLUSAE`; SAELens saves BatchTopK this way),
    ``matching_pursuit``; sparsify TopK SAEs (``cfg.json`` + ``sae.safetensors``); Gemma
    Scope JumpReLU SAEs (``params.npz``); dictionary_learning ``AutoEncoder``,
    ``AutoEncoderTopK``, ``BatchTopKSAE``, ``MatryoshkaBatchTopKSAE`` and
    ``JumpReluAutoEncoder`` (``ae.pt`` + ``config.json``). Files from other libraries
    load for inference.
    """
    given = Path(directory)
    where = given.parent if given.is_file() else given
    if not where.is_dir():
        raise FormatError(f"no SAE at {where}: the directory does not exist")
    cfg_path = where / CFG_FILE
    weights, sparsify = where / WEIGHTS_FILE, where / SPARSIFY_WEIGHTS_FILE
    if weights.is_file() and not cfg_path.exists() and WEIGHTS_MARK in _header(weights):
        # Our save writes the weights first: a first save killed before its cfg.json.
        raise FormatError(f"{where} has {WEIGHTS_FILE} but no {CFG_FILE}: {INTERRUPTED}")
    if not cfg_path.is_file() or not (weights.is_file() or sparsify.is_file()):
        try:
            sae = _load_other(given, where, dtype)
        except ConfigError as err:  # sizes the file gives that no SAE can have
            raise FormatError(f"{where}: {err}") from None
        return sae.to(device).eval()
    cfg = schema.read_json(cfg_path, FormatError)
    if not isinstance(cfg, dict):
        raise FormatError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    try:
        sae = _load_checked(cfg, cfg_path, weights, sparsify, dtype)
    except ConfigError as err:  # settings the file gives that no SAE can have
        raise FormatError(f"{cfg_path}: {err}") from None
    return sae.to(device).eval()


def _header(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (nothing else is read); {} if unreadable."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - any unreadable file: the full read names the problem
        return {}


def _load_other(given: Path, where: Path, dtype: Any) -> SAE:
    """A Gemma Scope or dictionary_learning file, or an error listing what ``where`` lacks."""
    npz = given if given.suffix == ".npz" else where / gemma_scope.WEIGHTS_FILE
    if npz.is_file():
        return gemma_scope.load_gemma_scope(npz, dtype)
    pt = given if given.suffix == ".pt" else where / dictionary_learning.WEIGHTS_FILE
    if pt.is_file():
        config = dictionary_learning.config_for(pt)
        if config is None:
            raise FormatError(
                f"{pt} has no {dictionary_learning.CONFIG_FILE} beside it (or one level up): "
                "dictionary_learning's config names the dictionary class, which decides the encoder; "
                "put the config.json saved with the weights next to them"
            )
        return dictionary_learning.load_dictionary_learning(pt, config, dtype)
    inner = sorted({p.parent.name for pattern in (f"*/{CFG_FILE}", "*/params.npz", "*/ae.pt")
                    for p in where.glob(pattern)})
    hint = f"; these subdirectories hold SAEs: {', '.join(inner)}" if inner else ""
    raise FormatError(
        f"{where} holds no SAE this package reads: {CFG_FILE} with {WEIGHTS_FILE} (this package, SAELens) "
        f"or {SPARSIFY_WEIGHTS_FILE} (sparsify), {gemma_scope.WEIGHTS_FILE} (Gemma Scope), or "
        f"{dictionary_learning.WEIGHTS_FILE} with {dictionary_learning.CONFIG_FILE} (dictionary_learning){hint}"
    )


def _load_checked(cfg: dict[str, Any], cfg_path: Path, weights: Path, sparsify: Path, dtype: Any) -> SAE:
    if not weights.is_file():
        tensors, _ = read_tensors(sparsify)
        if not tensors:
            raise FormatError(f"{sparsify} holds no tensors; the file is incomplete")
        dt = parse_dtype(dtype if dtype is not None else _weights_dtype(tensors, sparsify))
        return load_sparsify(cfg, tensors, sparsify, dt)
    block = cfg.get("saes")
    version = block.get("format_version") if isinstance(block, dict) else None
    ours = "saes" in cfg
    # Our own files are checked key by key (unknown keys warned); a SAELens file's other
    # keys are its library's business, so only the fields read here are checked.
    cfg = schema.check(cfg, READ_FIELDS, str(cfg_path), FormatError, warn_unknown=ours,
                       required=("d_in", "d_sae", "saes") if ours else ("d_in", "d_sae"))
    # Our files carry a checksum since format 2: a cfg.json of ours requires it unless it
    # says, explicitly, that it is older (a missing format_version is no such statement), and
    # so do weights whose header carries our mark, whatever cfg.json holds.
    tensors, header, digest = read_tensors_checked(
        weights, require_checksum=lambda meta: (ours and version != 1) or WEIGHTS_MARK in meta)
    if not tensors:
        raise FormatError(f"{weights} holds no tensors; the file is incomplete")
    if ours:
        check_binding(cfg, header, digest, weights)
    if cfg.get("dtype") is not None:
        check_file_dtypes(tensors, parse_dtype(cfg["dtype"]), weights, cfg_path, strict=ours)
    file_dtype = cfg.get("dtype") or _weights_dtype(tensors, weights)
    dt = parse_dtype(dtype if dtype is not None else file_dtype)
    return load_ours(cfg, tensors, weights, dt) if ours else load_saelens(cfg, tensors, weights, dt)


def _weights_dtype(tensors: dict[str, torch.Tensor], where: Path) -> torch.dtype:
    """The dtype the weights are stored in (the decoder's), checked to be floating point."""
    name = "W_dec" if "W_dec" in tensors else next(iter(tensors))
    check_weight_tensor(name, tensors[name], where)
    return tensors[name].dtype
