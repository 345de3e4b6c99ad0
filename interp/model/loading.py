"""`interp.load`: one entry point for HF names, local paths, built models and TransformerLens."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saes.dtypes import parse_dtype

from interp.errors import ModelLoadError
from interp.model.hooked import HookedModel, is_transformer_lens, wrap_hf, wrap_transformer_lens

# Names that resolve to models shipped inside the package.
DEFAULT_MODEL_ALIASES = ("world", "default")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(x: str) -> tuple[str, str]:
    """``(what from_pretrained gets, the name recorded in manifests)``."""
    if x in DEFAULT_MODEL_ALIASES:
        from interp.world import default_model_path  # imported late: the world is optional here

        return str(default_model_path()), "world"
    path = Path(x).expanduser()
    try:
        exists = path.exists()
    except OSError as err:  # a name the file system cannot even look up (too long, ...)
        raise ModelLoadError(f"{x[:80]!r}{'...' if len(x) > 80 else ''} ({len(x)} characters) cannot be looked up as "
                             f"a model directory ({err.strerror}); choose a shorter name: a hub name like 'gpt2' "
                             "or a path") from None
    if exists:
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} exists but holds no config.json; point at a directory saved with save_pretrained()")
        return str(path), str(path)
    if x.startswith((".", "/", "~")) or os.sep + os.sep in x or x.count("/") > 1:
        raise ModelLoadError(f"no model directory at {path}; check the path, or give a hub name like 'gpt2'")
    return x, x


def load(
    x: str | os.PathLike | nn.Module,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> HookedModel:
    """Load a causal LM as a :class:`HookedModel` with TransformerLens hook names.

    ``x`` is a HF hub name or local directory (both through
    ``AutoModelForCausalLM.from_pretrained``), ``"world"`` for the default model shipped with
    the toolkit, an already-built HF ``PreTrainedModel``, or a TransformerLens model: a
    ``TransformerBridge`` (TransformerLens 4, or 3) or a ``HookedTransformer``
    (TransformerLens 3). HF weights are used as they are: no conversion.

    >>> model = interp.load("world")
    >>> model.hook_names()[:3]
    ['hook_embed', 'hook_pos_embed', 'blocks.0.hook_resid_pre']
    """
    torch_dtype = None if dtype is None else parse_dtype(dtype)  # None: the checkpoint's own
    if isinstance(x, nn.Module):
        model = x
        if is_transformer_lens(model):
            hooked = wrap_transformer_lens(model)
            if tokenizer is not None:
                hooked.tokenizer = tokenizer
        elif hasattr(model, "config") and hasattr(model.config, "model_type"):
            hooked = wrap_hf(model, tokenizer)
        else:
            raise ModelLoadError(
                f"cannot hook a {type(model).__name__}: pass a HF PreTrainedModel, a TransformerLens "
                "TransformerBridge or HookedTransformer, a hub name or a local path"
            )
    else:
        source, name = _resolve(os.fspath(x))
        hooked = wrap_hf(_from_pretrained(source, torch_dtype, trust_remote_code), tokenizer, name=name)
        if tokenizer is None:
            hooked.tokenizer = _tokenizer(source, trust_remote_code)
    if device is not None or isinstance(x, (str, os.PathLike)):
        hooked.model.to(device or default_device())
    if torch_dtype is not None:
        hooked.model.to(torch_dtype)
    return hooked


def _from_pretrained(source: str, dtype: torch.dtype | None, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return _cache_first(AutoModelForCausalLM.from_pretrained, source, dtype=dtype,
                            trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ModelLoadError(_remote_code_refused(source)) from None
    except OSError as err:
        if Path(source).exists():
            raise ModelLoadError(f"could not load the model in {source}: {err}") from err
        raise ModelLoadError(
            f"could not load {source!r}: it is not a local directory and the hub could not be reached or has no "
            f"such model ({err.__class__.__name__}). Check the name; offline, download it where there is a "
            f"network (`hf download {source} --local-dir DIR`) and pass DIR, or point HF_HOME at a cache "
            f"holding it."
        ) from err


def _cache_first(loader: Any, source: str, **kwargs: Any) -> Any:
    """``loader(source)`` from the local cache when the files are there, else from the hub
    when it answers. Offline, the hub client retries every file for half a minute before it
    gives up; a look at the cache and one connection attempt take a second."""
    if Path(source).exists():
        return loader(source, **kwargs)
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        reason = _hub_unreachable()
        if reason:
            raise ModelLoadError(
                f"could not load {source!r}: it is neither a local directory nor in the local cache, and the hub "
                f"cannot be reached ({reason}). Download it where there is a network (`hf download {source} "
                f"--local-dir DIR`) and pass DIR, or point HF_HOME at a cache holding it."
            ) from None
    return loader(source, **kwargs)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached from here, or None when it can (or a proxy decides)."""
    import socket
    from urllib.parse import urlparse

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{flag} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"no connection to {host}: {err.strerror or err}"


def _tokenizer(source: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return _cache_first(AutoTokenizer.from_pretrained, source, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ModelLoadError(_remote_code_refused(source)) from None
        raise ModelLoadError(
            f"could not load a tokenizer for {source!r} ({err}); pass one with interp.load(..., tokenizer=...)"
        ) from err
    except OSError as err:
        raise ModelLoadError(
            f"could not load a tokenizer for {source!r} ({err}); pass one with interp.load(..., tokenizer=...)"
        ) from err


def _remote_code_refused(source: str) -> str:
    return (
        f"{source!r} needs its own Python code to load (custom modelling files), and running code that "
        "comes with a model is off by default. Read that code first; if you trust it, pass "
        "interp.load(..., trust_remote_code=True)"
    )
