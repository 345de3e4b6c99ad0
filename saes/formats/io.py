"""SAE files: save in the SAELens layout, load ours, SAELens's and sparsify's.

Layout written by :func:`save` (a directory)::

    cfg.json                  SAELens fields + this package's own "saes" block
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
                              b_dec [d_in] (+ threshold [d_sae] for JumpReLU inference)

``cfg.json`` carries the fields SAELens reads (``architecture``, ``d_in``, ``d_sae``,
``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
``reshape_activations``, ``k`` for TopK, the matching-pursuit fields), the model/hook
description both at top level (SAELens < 6 layout) and under ``metadata`` (SAELens 6
layout), and a ``saes`` block with the architecture this package trained and its full
settings, from which :func:`load` rebuilds the exact class. The SAELens
``architecture`` is the inference form SAELens can run:

* topk -> ``topk`` with ``k``;
* batchtopk -> ``jumprelu`` with ``threshold [d_sae]`` = θ repeated (as SAELens saves
  BatchTopK);
* matryoshka -> ``jumprelu`` (BatchTopK codes) or ``topk`` (per-token TopK codes);
* mp -> ``matching_pursuit`` with ``max_iterations = k``, ``residual_threshold = 0`` and
  ``stop_on_duplicate_support = false`` (fixed k steps, as trained); the untied, signed and
  no-reselect variants are written as ``mp``, which only this package reads.

Input normalisation is always folded into the weights before saving
(``normalize_activations: "none"``).

Files are written to a temporary name, fsync'd and moved into place with ``os.replace``; a
write that fails (disk full, read-only directory) raises :class:`WriteError` and leaves the
previous file as it was. Every safetensors file written here carries the sha256 of its
tensors in its header metadata, checked on every read, so a truncated or corrupted file is
named as such instead of being read as garbage. ``cfg.json`` is checked before use (wrong
types are errors, unknown keys warnings).
Nothing here unpickles: only JSON and safetensors are read.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saes.formats import schema
from saes.architectures.base import DTYPES, METADATA_KEYS, SAE, dtype_name, parse_dtype
from saes.architectures.batchtopk import BatchTopKSAE
from saes.errors import ConfigError, FormatError, SAEError, WriteError
from saes.architectures.inference import JumpReLUSAE, ReLUSAE
from saes.architectures.matryoshka import MatryoshkaSAE
from saes.architectures.mp import MPSAE
from saes.architectures.topk import TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
# 2: sae_weights.safetensors carries the sha256 of its tensors (required when reading).
FORMAT_VERSION = 2

ARCHITECTURES: dict[str, type[SAE]] = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "matryoshka": MatryoshkaSAE,
    "mp": MPSAE,
    "relu": ReLUSAE,
    "jumprelu": JumpReLUSAE,
}


# ------------------------------------------------------------------ atomic writes


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_from_temp(final: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync it and move it onto ``final`` atomically.

    Any failure leaves ``final`` untouched and no temporary file behind; an ``OSError``
    (full disk, read-only directory, missing permission) becomes a :class:`WriteError`
    that says so.
    """
    tmp: str | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; written files should read like any other (0644).
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        os_err = os_error_of(err)
        if os_err is not None:
            raise write_error(final, os_err) from err
        raise
    fsync_dir(final.parent)


def os_error_of(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``: itself, or the one safetensors reports as
    text ("I/O error: No space left on device (os error 28)")."""
    if isinstance(err, WriteError):
        return None
    if isinstance(err, OSError):
        return err
    m = re.search(r"\(os error (\d+)\)", str(err))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def write_error(final: Path, err: OSError) -> WriteError:
    previous = "the previous version is intact" if final.exists() else "nothing was written"
    reason = err.strerror or str(err) or type(err).__name__
    return WriteError(
        err.errno,
        f"could not write {final}: {reason}; {previous}. Free disk space or choose a writable "
        "directory, then run again (with --resume / resume=True to continue a training run)",
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _replace_from_temp(Path(path), write)


CHECKSUM_KEY = "saes_sha256"


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """sha256 over the header metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    meta = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode() + b"|")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**(metadata or {}), CHECKSUM_KEY: tensors_digest(tensors, metadata)}
    _replace_from_temp(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_tensors(
    path: str | os.PathLike, require_checksum: bool | Callable[[dict[str, str]], bool] = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its string metadata, checksum-verified.

    Files written by this package carry a sha256 of their tensors and metadata; a mismatch (a flipped
    byte, a truncation the header does not reveal) is a :class:`FormatError` naming the
    file. Files from other libraries have none and are read as they are; ``require_checksum``
    (a flag, or a test on the metadata) says when a missing checksum is itself damage.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise FormatError(
            f"{path} is not a readable safetensors file: it is truncated, corrupted or of another format ({err}); "
            "restore it from a copy or re-create it"
        ) from err
    expected = meta.pop(CHECKSUM_KEY, None)
    if expected is None and (require_checksum(meta) if callable(require_checksum) else require_checksum):
        raise FormatError(
            f"{path} is damaged: it was written with a checksum, which is no longer in its header; "
            "restore it from a copy or re-create it"
        )
    if expected is not None and tensors_digest(tensors, meta) != expected:
        raise FormatError(
            f"{path} is corrupted: its tensors do not match the sha256 recorded when it was written; "
            "restore it from a copy or re-create it"
        )
    return tensors, meta


# ------------------------------------------------------------------------- save


def saelens_architecture(sae: SAE) -> str:
    if isinstance(sae, MPSAE) and not (sae.tied and not sae.signed and sae.reselect):
        return "mp"
    return sae.saelens_architecture


def state_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors a saved file holds, under SAELens's names."""
    out = {"W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if not isinstance(sae, MPSAE):
        out["W_enc"] = sae.W_enc
        out["b_enc"] = sae.b_enc
    elif not sae.tied:
        out["W_enc"] = sae.W_enc
    if isinstance(sae, JumpReLUSAE):
        out["threshold"] = sae.threshold
    elif isinstance(sae, BatchTopKSAE) or (isinstance(sae, MatryoshkaSAE) and sae.batch_topk):
        out["threshold"] = torch.full((sae.d_sae,), float(sae.threshold), dtype=sae.dtype)
    return {k: v.detach() for k, v in out.items()}


def build_cfg(sae: SAE) -> dict[str, Any]:
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
    if arch == "topk":
        cfg["k"] = sae.k  # type: ignore[attr-defined]
    if arch == "matching_pursuit":
        assert isinstance(sae, MPSAE)
        cfg["residual_threshold"] = sae.residual_threshold or 0.0
        cfg["max_iterations"] = sae.max_iterations or sae.k
        cfg["stop_on_duplicate_support"] = sae.stop_on_duplicate_support
    cfg.update({k: meta.get(k) for k in METADATA_KEYS})
    cfg["metadata"] = meta
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
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(d / WEIGHTS_FILE, state_tensors(sae))
    atomic_write_text(d / CFG_FILE, json.dumps(build_cfg(sae), indent=2) + "\n")
    return d


# ------------------------------------------------------------------------- load


def _metadata_from(cfg: dict[str, Any]) -> dict[str, Any]:
    meta = {k: cfg.get(k) for k in METADATA_KEYS if k in cfg}
    if isinstance(cfg.get("metadata"), dict):
        meta.update({k: v for k, v in cfg["metadata"].items() if v is not None or k not in meta})
    if "hook_point" in cfg and not meta.get("hook_name"):  # SAELens < 1 name
        meta["hook_name"] = cfg["hook_point"]
    return meta


def _assign(sae: SAE, tensors: dict[str, torch.Tensor], names: list[str], where: Path) -> None:
    params = dict(sae.named_parameters())
    for name in names:
        if name not in tensors:
            raise FormatError(f"{where} has no tensor {name!r} (found {sorted(tensors)}); the file is incomplete")
        t = tensors[name]
        target = params[name] if name in params else getattr(sae, name)
        if tuple(t.shape) != tuple(target.shape):
            raise FormatError(
                f"{where}: tensor {name!r} has shape {list(t.shape)} but cfg.json implies {list(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(t.to(target.dtype))


# ------------------------------------------------------------------ cfg.json checks

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
    "residual_threshold": F("number", optional=True),
    "max_iterations": F("int", optional=True, minimum=1),
    "stop_on_duplicate_support": F("bool", optional=True),
    "model_name": F("str", optional=True),
    "hook_name": F("str", optional=True),
    "hook_point": F("str", optional=True),
    "hook_head_index": F("int", optional=True),
    "context_size": F("int", optional=True),
    "prepend_bos": F("bool", optional=True),
    "dataset_path": F("str", optional=True),
    "metadata": F("dict", optional=True),
    "saes": F("dict"),
}
BLOCK_FIELDS = {"format_version": F("int"), "architecture": F("str", choices=tuple(ARCHITECTURES)), "config": F("dict")}


def _check_arch_settings(cls: type[SAE], settings: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``saes.training.config`` block against ``cls``'s constructor: unknown keys warned and
    dropped, types judged from each parameter's default (sizes must be integers)."""
    params = {}
    for klass in cls.__mro__:  # keyword settings of the class and its bases
        if klass is object or "__init__" not in vars(klass):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if name not in ("self", "dtype", "device", "metadata") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(name, p)
    fields: dict[str, schema.Field] = {}
    for name, p in params.items():
        default = p.default
        if name in ("d_in", "d_sae", "k", "max_iterations"):
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


def _load_ours(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    block = schema.check(cfg["saes"], BLOCK_FIELDS, f"{where.parent / CFG_FILE} ('saes' block)", FormatError,
                         required=("architecture",))
    arch = block.get("architecture")
    if arch not in ARCHITECTURES:
        raise FormatError(f"{where}: unknown architecture {arch!r} in the 'saes' block; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    settings = _check_arch_settings(cls, dict(block.get("config", {})), str(where.parent / CFG_FILE))
    try:
        sae = cls(**settings, dtype=dtype, metadata=_metadata_from(cfg))
    except (SAEError, TypeError, ValueError) as err:
        raise FormatError(f"{where.parent / CFG_FILE} describes an SAE that cannot be built: {err}") from None
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    names = [n for n, _ in sae.named_parameters()]
    _assign(sae, tensors, names, where)
    if isinstance(sae, JumpReLUSAE):
        _assign(sae, tensors, ["threshold"], where)
    elif isinstance(sae, BatchTopKSAE) or (isinstance(sae, MatryoshkaSAE) and sae.batch_topk):
        th = tensors.get("threshold")
        if th is None:
            raise FormatError(f"{where}: a {arch} SAE needs its 'threshold' tensor; the file has none")
        if th.numel() and not torch.all(th == th.flatten()[0]):
            raise FormatError(f"{where}: a {arch} SAE has one threshold, but the file's thresholds differ per latent")
        with torch.no_grad():
            sae.threshold.fill_(float(th.flatten()[0]))  # type: ignore[union-attr]
    return sae


SAELENS_SUPPORTED = ("standard", "topk", "jumprelu", "matching_pursuit")


def _load_saelens(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_SUPPORTED:
        raise FormatError(
            f"{where}: SAELens architecture {arch!r} is not supported for loading; supported: "
            f"{', '.join(SAELENS_SUPPORTED)}"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none", False):
        raise FormatError(
            f"{where}: normalize_activations={norm!r} means the weights expect transformed inputs; "
            "fold the normalisation into the weights in SAELens (or re-save with 'none') first"
        )
    if cfg.get("finetuning_scaling_factor") and "scaling_factor" in tensors:
        raise FormatError(f"{where}: files with a finetuning scaling_factor are not supported")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    meta = _metadata_from(cfg)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors = {**tensors, "threshold": tensors["log_threshold"].exp()}
    sae: SAE
    if arch == "standard":
        sae = ReLUSAE(d_in, d_sae, dtype=dtype, metadata=meta)
    elif arch == "jumprelu":
        sae = JumpReLUSAE(d_in, d_sae, dtype=dtype, metadata=meta)
    elif arch == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise FormatError(f"{where}: a topk SAE needs 'k' in cfg.json")
        sae = TopKSAE(d_in, d_sae, int(k), dtype=dtype, metadata=meta)
    else:
        max_it = cfg.get("max_iterations")
        steps = int(max_it) if max_it else d_in
        sae = MPSAE(
            d_in, d_sae, k=max(1, min(steps, d_sae - 1)), dtype=dtype, metadata=meta,
            residual_threshold=float(cfg.get("residual_threshold", 1e-2)) or None,
            max_iterations=steps,
            stop_on_duplicate_support=bool(cfg.get("stop_on_duplicate_support", True)),
        )
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    _assign(sae, tensors, [n for n, _ in sae.named_parameters()], where)
    if isinstance(sae, JumpReLUSAE):
        _assign(sae, tensors, ["threshold"], where)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks h * ||d_i|| and decodes with z / ||d_i||; folding the norms into
        # the weights gives the same codes and reconstruction with plain TopK.
        with torch.no_grad():
            norms = sae.W_dec.norm(dim=-1)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae


SPARSIFY_FIELDS = {
    "d_in": F("int", minimum=1), "k": F("int", minimum=1), "num_latents": F("int", optional=True, minimum=0),
    "expansion_factor": F("int", optional=True, minimum=1), "activation": F("str", optional=True),
}


def _load_sparsify(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path, dtype: Any) -> SAE:
    if cfg.get("transcode"):
        raise FormatError(f"{where} is a sparsify transcoder (input and output differ); only SAEs load here")
    if cfg.get("skip_connection") or "W_skip" in tensors:
        raise FormatError(f"{where} has a skip connection (W_skip), which this package does not support")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FormatError(f"{where}: sparsify activation {activation!r} is not supported (only 'topk')")
    cfg = schema.check(cfg, SPARSIFY_FIELDS, f"{where.parent / CFG_FILE} (sparsify)", FormatError,
                       required=("d_in", "k"), warn_unknown=False)
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    meta = {"hook_name": None, "sparsify_hookpoint": where.parent.name}
    sae = TopKSAE(d_in, d_sae, int(cfg["k"]), dtype=dtype, metadata=meta)
    try:
        mapped = {
            "W_enc": tensors["encoder.weight"].T,
            "b_enc": tensors["encoder.bias"],
            "W_dec": tensors["W_dec"],
            "b_dec": tensors["b_dec"],
        }
    except KeyError as err:
        raise FormatError(f"{where}: sparsify weights lack {err}; found {sorted(tensors)}") from err
    _assign(sae, mapped, ["W_enc", "b_enc", "W_dec", "b_dec"], where)
    return sae


def load(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load an SAE saved by this package, by SAELens, or by EleutherAI's sparsify.

    Args:
        directory: the SAE's directory (or a file inside it).
        device: where to put it.
        dtype: parameter dtype; default the file's.

    Supported: ours (every architecture); SAELens ``standard`` (→ :class:`ReLUSAE`),
    ``topk``, ``jumprelu`` (→ :class:`JumpReLUSAE`; SAELens saves BatchTopK this way),
    ``matching_pursuit``; sparsify TopK SAEs (``cfg.json`` + ``sae.safetensors``).
    Files from other libraries load for inference.
    """
    where = Path(directory)
    if where.is_file():
        where = where.parent
    if not where.is_dir():
        raise FormatError(f"no SAE at {where}: the directory does not exist")
    cfg_path = where / CFG_FILE
    weights, sparsify = where / WEIGHTS_FILE, where / SPARSIFY_WEIGHTS_FILE
    if not cfg_path.is_file() or not (weights.is_file() or sparsify.is_file()):
        inner = sorted(p.parent.name for p in where.glob(f"*/{CFG_FILE}"))
        hint = f"; these subdirectories hold SAEs: {', '.join(inner)}" if inner else ""
        raise FormatError(
            f"{where} has no {CFG_FILE} with {WEIGHTS_FILE} (or sparsify's {SPARSIFY_WEIGHTS_FILE}){hint}"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{cfg_path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise FormatError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    try:
        sae = _load_checked(cfg, cfg_path, weights, sparsify, dtype)
    except ConfigError as err:  # settings the file gives that no SAE can have
        raise FormatError(f"{cfg_path}: {err}") from None
    return sae.to(device).eval()


def _load_checked(cfg: dict[str, Any], cfg_path: Path, weights: Path, sparsify: Path, dtype: Any) -> SAE:
    if weights.is_file():
        block = cfg.get("saes")
        version = block.get("format_version") if isinstance(block, dict) else None
        ours = "saes" in cfg
        # Our own files are checked key by key (unknown keys warned); a SAELens file's other
        # keys are its library's business, so only the fields read here are checked.
        cfg = schema.check(cfg, READ_FIELDS, str(cfg_path), FormatError, warn_unknown=ours,
                           required=("d_in", "d_sae", "saes") if ours else ("d_in", "d_sae"))
        tensors, _ = read_tensors(weights, require_checksum=isinstance(version, int) and version >= 2)
        if not tensors:
            raise FormatError(f"{weights} holds no tensors; the file is incomplete")
        file_dtype = cfg.get("dtype") or next(iter(tensors.values())).dtype
        dt = parse_dtype(dtype if dtype is not None else file_dtype)
        if "saes" in cfg:
            sae = _load_ours(cfg, tensors, weights, dt)
        else:
            sae = _load_saelens(cfg, tensors, weights, dt)
    else:
        tensors, _ = read_tensors(sparsify)
        dt = parse_dtype(dtype if dtype is not None else next(iter(tensors.values())).dtype)
        sae = _load_sparsify(cfg, tensors, sparsify, dt)
    return sae
