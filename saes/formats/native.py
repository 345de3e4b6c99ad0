"""This toolkit's SAE directory: the SAELens layout plus a ``saes`` block.

Layout written by :func:`save` (a directory)::

    cfg.json                  SAELens fields + this package's own "saes" block
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
                              b_dec [d_in] (+ threshold [d_sae] for JumpReLU inference;
                              Gated: b_gate, r_mag, b_mag [d_sae] instead of b_enc)

``cfg.json`` carries the fields SAELens reads (``architecture``, ``d_in``, ``d_sae``,
``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``k`` for TopK, the matching-pursuit fields), the model/hook
description under ``metadata`` (SAELens 6 layout, with ``sae_lens_version`` so SAELens 6
reads it as such) and, where known, at top level (SAELens < 6 layout), and a ``saes``
block with the architecture this package trained and its full settings, from which :func:`load_ours` rebuilds the exact class (looked up in
:mod:`saes.architectures.registry`). The SAELens ``architecture`` is the inference form
SAELens can run (each class's ``saelens_architecture``):

* topk -> ``topk`` with ``k``;
* batchtopk -> ``jumprelu`` with ``threshold [d_sae]`` = θ repeated (as SAELens saves
  BatchTopK);
* relu (L1) -> ``standard``; jumprelu -> ``jumprelu`` with its learnt ``threshold``;
  gated -> ``gated`` with ``b_gate``, ``r_mag``, ``b_mag`` (no ``b_enc``);
* matryoshka -> ``jumprelu`` (BatchTopK codes) or ``topk`` (per-token TopK codes);
* mp -> ``matching_pursuit`` with ``max_iterations = k``, ``residual_threshold = 0`` and
  ``stop_on_duplicate_support = false`` (fixed k steps, as trained); the untied, signed and
  no-reselect variants are written as ``mp``, which only this package reads.

Transcoders (built with ``d_out``) are written as SAELens 6.54 reads them: ``d_out`` in
cfg.json, ``apply_b_dec_to_input: false``, the output hook as ``metadata.hook_name_out``,
``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` and, for a skip-transcoder, ``W_skip [d_out,
d_in]``. The architecture is SAELens's transcoder class for the inference form
(:func:`saelens_architecture`):

* ReLU codes -> ``transcoder`` / ``skip_transcoder``;
* JumpReLU codes (JumpReLU, BatchTopK, BatchTopK Matryoshka) -> ``jumprelu_transcoder`` /
  ``jumprelu_skip_transcoder`` with ``threshold [d_sae]``;
* TopK codes without a skip path and with ``d_out = d_in`` -> ``topk``: SAELens loads its
  TopKSAE, which computes exactly this transcoder, and its HookedSAETransformer splices any
  SAE whose metadata names ``hook_name_out`` as a transcoder. SAELens has no TopK
  transcoder class beyond that, so TopK skip-transcoders (and ``d_out != d_in``) are
  written as ``topk_skip_transcoder`` / ``topk_transcoder``: names SAELens refuses to load
  rather than loading them as something they are not. This package reads them all.

Input normalisation is always folded into the weights before saving
(``normalize_activations: "none"``). Files are written through :mod:`saes.formats.durable`
(atomic, checksummed).

A save replaces two files, one after the other, so a save killed in between leaves the
weights of one save beside the ``cfg.json`` of another. ``cfg.json`` therefore records the
sha256 its weights file carries in its header (``saes.weights_sha256``), and the loader
refuses a pair that does not match: a save is all or nothing as the loader sees it.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from saes import architectures  # noqa: F401  (importing it registers every family)
from saes.architectures import registry
from saes.architectures.base import METADATA_KEYS, SAE
from saes.dtypes import dtype_name
from saes.errors import FormatError, SAEError
from saes.formats import schema
from saes.formats.durable import (
    atomic_save_tensors,
    atomic_write_text,
    check_replaceable,
    ensure_directory,
    first_nonfinite,
    remove_stale_temporaries,
    require_finite,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# 2: sae_weights.safetensors carries the sha256 of its tensors (required when reading).
# 3: cfg.json records that sha256 (saes.weights_sha256), binding the two files of one save.
FORMAT_VERSION = 3
# In the weights' header: the format version of the save that wrote them. A file with it
# must carry its checksum and be named by its cfg.json, whatever cfg.json says.
WEIGHTS_MARK = "saes_format_version"
INTERRUPTED = (
    "the weights and cfg.json come from different saves: the last save was interrupted (or one file "
    "was copied over from another save); save the SAE again, or resume its training run from the checkpoint"
)
NONFINITE_FIX = ("no trained SAE holds such values: the run that wrote it diverged, or the file is damaged; "
                 "re-create it (train again with a lower learning rate, or save from a good checkpoint)")
# The SAELens release whose cfg.json layout the file follows (written as
# metadata.sae_lens_version, which SAELens checks to pick its reader). The first 6.x
# release, so that a later SAELens applies any conversion it has for older 6.x files.
SAELENS_LAYOUT_VERSION = "6.0.0"

F = schema.Field


# ------------------------------------------------------------------------- save


def state_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors a saved file holds, under SAELens's names.

    Every parameter under its own name (the classes use SAELens's: ``W_enc``, ``b_enc``,
    ``W_dec``, ``b_dec``, and JumpReLU's ``threshold``, Gated's ``b_gate``, ``r_mag``,
    ``b_mag``; tied matching pursuit has no encoder), and an inference ``threshold`` kept
    as a buffer: a single θ (BatchTopK codes) repeated ``d_sae`` times, as SAELens saves
    BatchTopK.
    """
    out = dict(sae.named_parameters())
    threshold = getattr(sae, "threshold", None)
    if isinstance(threshold, torch.Tensor):
        out["threshold"] = threshold if threshold.ndim else torch.full((sae.d_sae,), float(threshold), dtype=sae.dtype)
    return {k: v.detach() for k, v in out.items()}


# SAELens's transcoder class for each inference form, without and with the skip path
# (the topk names are this package's: SAELens has no such class).
TRANSCODER_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "standard": ("transcoder", "skip_transcoder"),
    "jumprelu": ("jumprelu_transcoder", "jumprelu_skip_transcoder"),
    "topk": ("topk_transcoder", "topk_skip_transcoder"),
}


def saelens_architecture(sae: SAE) -> str:
    """The ``architecture`` cfg.json gives ``sae`` (see the module docstring)."""
    arch = sae.saelens_architecture
    if not sae.is_transcoder:
        return arch
    if arch == "topk" and not sae.skip and sae.d_out == sae.d_in:
        return "topk"  # SAELens's TopKSAE computes it exactly
    if arch not in TRANSCODER_ARCHITECTURES:
        raise FormatError(f"a {arch} transcoder has no SAELens layout; save a ReLU, JumpReLU, BatchTopK or TopK one")
    return TRANSCODER_ARCHITECTURES[arch][int(sae.skip)]


def build_cfg(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` of ``sae`` (see the module docstring)."""
    arch = saelens_architecture(sae)
    meta = {k: sae.metadata.get(k) for k in METADATA_KEYS}
    meta.update({k: v for k, v in sae.metadata.items() if k not in meta})
    hook = meta.get("hook_name") or ""
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype_name(sae.dtype),
        "device": str(sae.device),
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if str(hook).endswith("hook_z") else "none",
    }
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
    if arch.startswith("topk"):
        cfg["k"] = sae.k  # type: ignore[attr-defined]
    if arch == "matching_pursuit":
        cfg["residual_threshold"] = sae.residual_threshold or 0.0  # type: ignore[attr-defined]
        cfg["max_iterations"] = sae.max_iterations or sae.k  # type: ignore[attr-defined]
        cfg["stop_on_duplicate_support"] = sae.stop_on_duplicate_support  # type: ignore[attr-defined]
    # Top level: the SAELens < 6 layout, only where known (a null hook_name there breaks
    # SAELens's pre-6.0 conversion).
    cfg.update({k: meta[k] for k in METADATA_KEYS if meta.get(k) is not None})
    # SAELens 6 reads a file as its own 6.x layout only when metadata names the SAELens
    # version; without it the file is converted as a pre-6.0 one. An SAE not trained by
    # SAELens says so (SAELens would otherwise fill in its own version).
    cfg["metadata"] = {**meta, "sae_lens_version": SAELENS_LAYOUT_VERSION}
    cfg["metadata"].setdefault("sae_lens_training_version", None)
    cfg["saes"] = {"format_version": FORMAT_VERSION, "architecture": sae.architecture, "config": sae.arch_config()}
    return cfg


def save(sae: SAE, directory: str | os.PathLike) -> Path:
    """Write ``sae`` to ``directory`` (created if needed) and return the directory.

    Example:
        >>> import tempfile, torch, saes
        >>> sae = saes.TopKSAE(8, 32, k=4)
        >>> d = tempfile.mkdtemp()
        >>> _ = sae.save(d)
        >>> back = saes.load(d)
        >>> torch.equal(back.encode(torch.ones(1, 8)), sae.encode(torch.ones(1, 8)))
        True
    """
    d = Path(directory)
    tensors = state_tensors(sae)
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise FormatError(
            f"cannot save to {d}: tensor {bad[0]!r} of the SAE holds {bad[1]}, and a file with it would be "
            f"refused when loaded; {NONFINITE_FIX}"
        )
    cfg = build_cfg(sae)
    for name in (WEIGHTS_FILE, CFG_FILE):  # both refused before either is written
        check_replaceable(d / name)
    ensure_directory(d)
    remove_stale_temporaries(d, (WEIGHTS_FILE, CFG_FILE))  # left by saves killed mid-write
    # Weights first, then the cfg.json naming them: killed in between, the pair is refused
    # on loading (INTERRUPTED) instead of mixing two saves.
    cfg["saes"]["weights_sha256"] = atomic_save_tensors(
        d / WEIGHTS_FILE, tensors, metadata={WEIGHTS_MARK: str(FORMAT_VERSION)}
    )
    atomic_write_text(d / CFG_FILE, json.dumps(cfg, indent=2) + "\n")
    return d


registry.set_saver(save)


# ------------------------------------------------------------------------- load helpers


def metadata_from(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model/hook description of a cfg.json (ours or SAELens's, any version)."""
    # hook_name_out: a transcoder's output hook (top level in SAELens's converted files).
    meta = {k: cfg.get(k) for k in (*METADATA_KEYS, "hook_name_out") if k in cfg}
    if isinstance(cfg.get("metadata"), dict):
        meta.update({k: v for k, v in cfg["metadata"].items() if v is not None or k not in meta})
    meta.pop("sae_lens_version", None)  # describes the file's layout, not the SAE
    if meta.get("sae_lens_training_version", "") is None:  # not trained by SAELens: nothing to keep
        del meta["sae_lens_training_version"]
    if "hook_point" in cfg and not meta.get("hook_name"):  # SAELens < 1 name
        meta["hook_name"] = cfg["hook_point"]
    return meta


# The description keys whose type code downstream relies on (a hook name that is a number,
# a context size that is text), each with what it must be.
_METADATA_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model_name": ((str,), "a model name (text)"),
    "hook_name": ((str,), "a hook name (text)"),
    "hook_name_out": ((str,), "a hook name (text)"),
    "dataset_path": ((str,), "text"),
    "hook_head_index": ((int,), "a head index (an integer)"),
    "context_size": ((int,), "a window length (a positive integer)"),
    "prepend_bos": ((bool,), "true or false"),
}


def check_metadata(meta: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """``meta`` if each known key is null or of its type, else a FormatError naming the key."""
    for key, (types, what) in _METADATA_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        wrong = not isinstance(value, types) or (bool not in types and isinstance(value, bool))
        if not wrong and key == "context_size" and value < 1:
            wrong = True
        if wrong:
            raise FormatError(f"{where}: metadata {key} is {json.dumps(value)[:60]}, but must be {what} or null; "
                              "fix it in the file (or set it to null)")
    return meta


def check_weight_tensor(name: str, t: torch.Tensor, where: Path) -> None:
    """A weight must be floating point and finite (an integer or boolean tensor cast to float
    would load as a different SAE without a word)."""
    if not t.is_floating_point():
        raise FormatError(
            f"{where}: tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, but SAE weights are floating "
            "point; the file is damaged or is not an SAE of this layout"
        )
    require_finite({name: t}, where, FormatError, NONFINITE_FIX)


def check_file_dtypes(tensors: dict[str, torch.Tensor], cfg_dtype: torch.dtype, where: Path, cfg_path: Path,
                      *, strict: bool) -> None:
    """Each tensor's dtype against the one ``cfg.json`` gives: an error when ``strict`` (our own
    files, written in one dtype), else a warning (SAELens itself casts on reading)."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype == cfg_dtype or not (strict or t.is_floating_point()):  # foreign integers: assign_tensors
            continue
        msg = (f"{where}: tensor {name!r} is stored as {str(t.dtype).removeprefix('torch.')} but {cfg_path.name} says "
               f"dtype {str(cfg_dtype).removeprefix('torch.')}")
        if strict:
            raise FormatError(f"{msg}; the files do not belong together (edited or damaged): save the SAE again")
        warnings.warn(f"{msg}; loading it cast to {str(cfg_dtype).removeprefix('torch.')}", stacklevel=4)


def check_sizes(d_in: int, d_sae: int, tensors: dict[str, torch.Tensor], where: Path, said_by: str,
                decoder: str = "W_dec", d_out: int | None = None) -> None:
    """``d_in`` and ``d_sae`` (and a transcoder's ``d_out``) a config claims against the shape of
    the file's decoder, before an SAE of the claimed size is built (a claim of millions of
    latents over small weights would allocate gigabytes before any shape was checked)."""
    if decoder not in tensors:
        raise FormatError(f"{where} has no tensor {decoder!r} (found {sorted(tensors)}); the file is incomplete")
    shape = list(tensors[decoder].shape)
    width = d_in if d_out is None else d_out
    if shape != [d_sae, width]:
        said = f"d_in={d_in}, d_sae={d_sae}" + ("" if d_out is None else f", d_out={d_out}")
        raise FormatError(
            f"{said_by} says {said}, so the decoder would be [{d_sae}, {width}], but {where} "
            f"holds {decoder} of shape {shape}; the config does not describe these weights (edited, damaged or "
            "from another SAE)"
        )


def assign_tensors(sae: SAE, tensors: dict[str, torch.Tensor], names: list[str], where: Path) -> None:
    """Copy the file's tensors ``names`` into ``sae``, each checked for presence, dtype
    (floating point), finiteness and shape."""
    params = dict(sae.named_parameters())
    for name in names:
        if name not in tensors:
            raise FormatError(f"{where} has no tensor {name!r} (found {sorted(tensors)}); the file is incomplete")
        t = tensors[name]
        check_weight_tensor(name, t, where)
        target = params[name] if name in params else getattr(sae, name)
        if tuple(t.shape) != tuple(target.shape):
            raise FormatError(
                f"{where}: tensor {name!r} has shape {list(t.shape)} but cfg.json implies {list(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(t.to(target.dtype))


# ------------------------------------------------------------------------- load ours


def _block_fields() -> dict[str, schema.Field]:
    return {"format_version": F("int"), "architecture": F("str", choices=registry.names()), "config": F("dict"),
            "weights_sha256": F("str", optional=True)}


def check_binding(cfg: dict[str, Any], header: dict[str, str], digest: str | None, where: Path) -> None:
    """Refuse weights that are not the ones this ``cfg.json`` was saved with (see the module
    docstring). Saves from before the binding (no mark in the weights, none in cfg.json) pass."""
    block = cfg.get("saes")
    bound = block.get("weights_sha256") if isinstance(block, dict) else None
    if (bound is not None or WEIGHTS_MARK in header) and bound != digest:
        raise FormatError(f"{where.parent}: {INTERRUPTED}")


def _check_arch_settings(cls: type[SAE], settings: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``saes.training.config`` block against ``cls``'s constructor: unknown keys warned and
    dropped, types judged from each parameter's default (sizes must be integers)."""
    fields: dict[str, schema.Field] = {}
    for name, p in registry.settings_of(cls).items():
        default = p.default
        if name in ("d_in", "d_sae", "k", "max_iterations", "d_out"):
            fields[name] = F("int", optional=default is None, minimum=1)
        elif name == "group_sizes":
            fields[name] = F("int_list", optional=True, minimum=1)
        elif isinstance(default, bool):
            fields[name] = F("bool")
        elif isinstance(default, float):
            fields[name] = F("number")
        elif isinstance(default, int):
            fields[name] = F("int")
        else:
            fields[name] = F("any", optional=True)
    return schema.check(settings, fields, f"{where} ('saes.training.config')", FormatError)


def _load_threshold(sae: SAE, tensors: dict[str, torch.Tensor], arch: str, where: Path) -> None:
    """The inference threshold, per latent or one θ (stored repeated, see :func:`state_tensors`)."""
    threshold = getattr(sae, "threshold", None)
    if not isinstance(threshold, torch.Tensor):
        return
    if threshold.ndim:
        assign_tensors(sae, tensors, ["threshold"], where)
        return
    th = tensors.get("threshold")
    if th is None:
        raise FormatError(f"{where}: a {arch} SAE needs its 'threshold' tensor; the file has none")
    check_weight_tensor("threshold", th, where)
    if th.numel() and not torch.all(th == th.flatten()[0]):
        raise FormatError(f"{where}: a {arch} SAE has one threshold, but the file's thresholds differ per latent")
    with torch.no_grad():
        threshold.fill_(float(th.flatten()[0]))


def load_ours(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    """The SAE a cfg.json with a ``saes`` block describes, with the file's tensors."""
    block = schema.check(cfg["saes"], _block_fields(), f"{where.parent / CFG_FILE} ('saes' block)", FormatError,
                         required=("architecture",))
    arch = block.get("architecture")
    if arch not in registry.names():
        raise FormatError(f"{where}: unknown architecture {arch!r} in the 'saes' block; known: {sorted(registry.names())}")
    cls = registry.get(arch)
    cfg_path = where.parent / CFG_FILE
    settings = _check_arch_settings(cls, dict(block.get("config", {})), str(cfg_path))
    # The sizes the SAE would be built with, checked against the file before building it.
    sizes = settings.get("group_sizes")
    d_sae = settings.get("d_sae") if settings.get("d_sae") is not None or not sizes else sum(sizes)
    d_out = settings.get("d_out")  # a transcoder's decoder is [d_sae, d_out]
    for d_in_said, d_sae_said, said_by in ((settings.get("d_in"), d_sae, f"{cfg_path} ('saes.config')"),
                                          (cfg.get("d_in"), cfg.get("d_sae"), str(cfg_path))):
        if isinstance(d_in_said, int) and isinstance(d_sae_said, int):
            check_sizes(d_in_said, d_sae_said, tensors, where, said_by, d_out=d_out if isinstance(d_out, int) else None)
    metadata = check_metadata(metadata_from(cfg), cfg_path)
    try:
        sae = cls(**settings, dtype=dtype, metadata=metadata)
    except (SAEError, TypeError, ValueError) as err:
        raise FormatError(f"{where.parent / CFG_FILE} describes an SAE that cannot be built: {err}") from None
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", not sae.is_transcoder))
    if sae.is_transcoder and sae.apply_b_dec_to_input:
        raise FormatError(f"{cfg_path}: a transcoder's b_dec lives in its output space, so apply_b_dec_to_input "
                          "must be false; the cfg.json is damaged or edited")
    assign_tensors(sae, tensors, [n for n, _ in sae.named_parameters()], where)
    _load_threshold(sae, tensors, arch, where)
    return sae
