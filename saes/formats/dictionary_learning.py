"""Loading dictionary_learning SAEs (``ae.pt`` + ``config.json``), for inference.

dictionary_learning (saprmarks/dictionary_learning) saves a trainer's directory as
``config.json`` (``{"trainer": {"dict_class": ..., "activation_dim": ..., "dict_size": ...,
"k": ..., ...}, "buffer": {...}}``) and ``ae.pt``, a ``torch.save`` of the module's state
dict (checkpoints as ``checkpoints/ae_<step>.pt`` beside it). The state dict is read with
``torch.load(weights_only=True)``, which admits tensors and plain containers only; what is
not a tensor is ignored.

The dictionary class decides the encoder, so it is read from the config, never guessed
from the tensors (a TopK dictionary has the same tensors as a BatchTopK one):

* ``AutoEncoder`` -> :class:`~saes.ReLUSAE`, decoder rows scaled to unit norm with the
  scale moved into the encoder, as dictionary_learning's own ``from_pretrained`` does
  (same reconstruction; codes measured along unit directions);
* ``AutoEncoderTopK`` -> :class:`~saes.TopKSAE` with the file's ``k``;
* ``BatchTopKSAE`` -> :class:`~saes.BatchTopKSAE` with the file's ``k`` and threshold
  (its inference encoder: ``ReLU(h) * 1[ReLU(h) > threshold]``; a threshold training never
  set, -1, means per-token TopK here, as for an untrained BatchTopK SAE of this package);
* ``MatryoshkaBatchTopKSAE`` -> :class:`~saes.MatryoshkaSAE` (BatchTopK codes) with the
  file's group sizes, ``k`` and threshold;
* ``JumpReluAutoEncoder`` -> :class:`~saes.JumpReLUSAE` (it encodes ``x``, not
  ``x - b_dec``).

Other classes (gated, p-annealed variants with their own encoders, crosscoders) are
refused with an error naming the class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.architectures import registry
from saes.architectures.base import SAE
from saes.dtypes import parse_dtype
from saes.errors import FormatError
from saes.formats import schema
from saes.formats.native import assign_tensors, check_sizes, check_weight_tensor

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"

# dictionary class -> this package's architecture.
SUPPORTED = {
    "AutoEncoder": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka",
    "JumpReluAutoEncoder": "jumprelu",
}
# Configs that name only the trainer: the dictionary class each trainer builds by default.
TRAINER_DICT_CLASS = {
    "StandardTrainer": "AutoEncoder",
    "StandardTrainerAprilUpdate": "AutoEncoder",
    "TopKTrainer": "AutoEncoderTopK",
    "TrainerTopK": "AutoEncoderTopK",
    "BatchTopKTrainer": "BatchTopKSAE",
    "MatryoshkaBatchTopKTrainer": "MatryoshkaBatchTopKSAE",
    "JumpReluTrainer": "JumpReluAutoEncoder",
}

F = schema.Field
TRAINER_FIELDS = {
    "dict_class": F("str", optional=True),
    "trainer_class": F("str", optional=True),
    "activation_dim": F("int", minimum=1),
    "dict_size": F("int", minimum=1),
    "k": F("int", optional=True, minimum=1),
    "group_sizes": F("int_list", optional=True, minimum=1),
    "lm_name": F("str", optional=True),
    "layer": F("int", optional=True),
    "submodule_name": F("str", optional=True),
}


def config_for(weights: Path) -> Path | None:
    """The ``config.json`` of a weights file: beside it, or one level up for checkpoints."""
    for d in (weights.parent, weights.parent.parent):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``'d state dict, loaded without running any code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise FormatError(
            f"{path} is not a plain state dict of tensors (it is damaged, or holds objects that "
            f"are not loaded without running code) ({type(err).__name__}: {str(err)[:200]}); "
            "save the weights with torch.save(ae.state_dict(), path)"
        ) from err
    if not isinstance(state, dict):
        raise FormatError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def read_trainer_config(path: Path) -> dict[str, Any]:
    cfg = schema.read_json(path, FormatError)
    where = f"{path} (dictionary_learning)"
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer"), dict):
        raise FormatError(f"{where} has no 'trainer' object; it is not a dictionary_learning config")
    return schema.check(cfg["trainer"], TRAINER_FIELDS, f"{where} 'trainer'", FormatError,
                        required=("activation_dim", "dict_size"), warn_unknown=False)


def dict_class_of(trainer: dict[str, Any], where: Path) -> str:
    dict_class = trainer.get("dict_class") or TRAINER_DICT_CLASS.get(trainer.get("trainer_class") or "")
    if dict_class not in SUPPORTED:
        named = dict_class or f"(none; trainer_class {trainer.get('trainer_class')!r})"
        raise FormatError(
            f"{where}: dictionary_learning dict_class {named} is not supported for loading; supported: "
            f"{', '.join(SUPPORTED)}"
        )
    return dict_class


def _require(tensors: dict[str, torch.Tensor], names: tuple[str, ...], where: Path, dict_class: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise FormatError(
            f"{where} lacks {missing} for a {dict_class} (found {sorted(tensors)}); the weights do not "
            "match the dict_class in config.json"
        )


def _k(tensors: dict[str, torch.Tensor], trainer: dict[str, Any], where: Path) -> int:
    """The file's k: the state dict's buffer (the value after any annealing), else the config's."""
    if "k" in tensors:
        return int(tensors["k"].item())
    if trainer.get("k") is None:
        raise FormatError(f"{where}: neither the state dict nor config.json gives 'k'")
    return int(trainer["k"])


def load_dictionary_learning(weights: Path, config: Path, dtype: Any) -> SAE:
    """The SAE of a dictionary_learning ``ae.pt`` and its ``config.json``."""
    trainer = read_trainer_config(config)
    dict_class = dict_class_of(trainer, config)
    tensors = read_state_dict(weights)
    d_in, d_sae = int(trainer["activation_dim"]), int(trainer["dict_size"])
    meta = {"model_name": trainer.get("lm_name"), "dictionary_learning_layer": trainer.get("layer"),
            "dictionary_learning_submodule": trainer.get("submodule_name")}
    meta = {k: v for k, v in meta.items() if v is not None}

    if dict_class in ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE"):  # nn.Linear layout
        bias = "bias" if dict_class == "AutoEncoder" else "b_dec"
        _require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight", bias), weights, dict_class)
        if dict_class == "AutoEncoder" and "k" in tensors:
            raise FormatError(f"{weights} has a 'k' buffer, but config.json says AutoEncoder (plain ReLU); "
                              "the config does not belong to these weights")
        mapped = {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"],
                  "W_dec": tensors["decoder.weight"].T, "b_dec": tensors[bias]}
    else:  # nn.Parameter layout
        names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if dict_class == "JumpReluAutoEncoder" else ())
        _require(tensors, names, weights, dict_class)
        mapped = {n: tensors[n] for n in names}
    check_weight_tensor("W_dec", mapped["W_dec"], weights)
    dt = parse_dtype(dtype if dtype is not None else mapped["W_dec"].dtype)

    arch = SUPPORTED[dict_class]
    cls = registry.get(arch)
    # Sizes the config claims, against the weights' shapes before anything of that size is built.
    check_sizes(d_in, d_sae, mapped, weights, f"{config} (dictionary_learning)")
    if arch == "relu" or arch == "jumprelu":
        sae = cls(d_in, d_sae, dtype=dt, metadata=meta)
    elif arch == "matryoshka":
        sizes = tensors["group_sizes"].flatten().tolist() if "group_sizes" in tensors else trainer.get("group_sizes")
        if not sizes:
            raise FormatError(f"{weights}: a MatryoshkaBatchTopKSAE needs its group sizes (state dict or config.json)")
        if sum(int(s) for s in sizes) != d_sae:
            raise FormatError(f"{weights}: the group sizes {[int(s) for s in sizes]} sum to {sum(int(s) for s in sizes)}, "
                              f"but the dictionary has {d_sae} latents (dict_size, and the weights' shape)")
        sae = cls(d_in, [int(s) for s in sizes], _k(tensors, trainer, weights), batch_topk=True, dtype=dt,
                  metadata=meta)
    else:
        sae = cls(d_in, d_sae, _k(tensors, trainer, weights), dtype=dt, metadata=meta)
    if arch == "jumprelu":
        sae.apply_b_dec_to_input = False  # JumpReluAutoEncoder encodes x itself
    assign_tensors(sae, mapped, ["W_enc", "b_enc", "W_dec", "b_dec"], weights)
    if arch == "jumprelu":
        assign_tensors(sae, mapped, ["threshold"], weights)
    if arch in ("batchtopk", "matryoshka"):
        _require(tensors, ("threshold",), weights, dict_class)
        if tensors["threshold"].numel() != 1:
            raise FormatError(f"{weights}: a {dict_class} has one threshold, found shape {list(tensors['threshold'].shape)}")
        check_weight_tensor("threshold", tensors["threshold"], weights)
        with torch.no_grad():
            sae.threshold.fill_(float(tensors["threshold"].item()))  # type: ignore[union-attr, operator]
    if arch == "relu":
        with torch.no_grad():  # unit decoder rows, as dictionary_learning's from_pretrained does
            norms = sae.W_dec.norm(dim=-1).clamp_min(torch.finfo(sae.W_dec.dtype).eps)
            sae.W_dec.div_(norms[:, None])
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
    return sae
