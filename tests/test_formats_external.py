"""Gemma Scope (``params.npz``) and dictionary_learning (``ae.pt`` + ``config.json``) files.

The files are built here with those projects' layouts (array and state-dict names, the
``config.json`` a dictionary_learning trainer writes), and each loaded SAE is checked
against the encoder written out by hand from that project's code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import saes

torch.set_num_threads(1)
D_IN, D_SAE = 16, 48
X = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0))


def _weights(seed: int = 1, dec_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random weights with non-zero biases (a wrong bias path shows) and decoder rows of
    norm ``dec_scale`` up to noise."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * dec_scale * (1 + 0.5 * torch.rand(D_SAE, 1, generator=g))
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.4,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.2,
        "W_dec": w_dec,
        "b_dec": torch.randn(D_IN, generator=g) * 0.5,
    }


def _dense(sae: saes.SAE, x: torch.Tensor) -> torch.Tensor:
    return sae.encode(x)


# ------------------------------------------------------------------ Gemma Scope


def _gemma_scope_dir(root: Path, w: dict[str, torch.Tensor], theta: torch.Tensor, *, lower: bool = False,
                     release: str = "gemma-scope-2b-pt-res", layer: int = 20) -> Path:
    d = root / release / f"layer_{layer}" / "width_16k" / "average_l0_71"
    d.mkdir(parents=True)
    arrays = {k: v.numpy() for k, v in w.items()} | {"threshold": theta.numpy()}
    if lower:
        arrays = {k.lower(): v for k, v in arrays.items()}
    np.savez(d / "params.npz", **arrays)
    return d


def _theta(seed: int = 2) -> torch.Tensor:
    return torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed)) * 0.6


@pytest.mark.parametrize("lower", [False, True], ids=["W_enc", "w_enc"])
def test_gemma_scope_params_npz_loads_as_jumprelu_without_b_dec_on_input(tmp_path, lower):
    w, theta = _weights(), _theta()
    d = _gemma_scope_dir(tmp_path, w, theta, lower=lower)
    sae = saes.load(d)
    assert isinstance(sae, saes.JumpReLUSAE) and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    # Gemma Scope's encoder, as its tutorial writes it: no b_dec subtracted from x.
    h = X @ w["W_enc"] + w["b_enc"]
    z = torch.relu(h) * (h > theta)
    assert (z > 0).any() and (z == 0).any()
    torch.testing.assert_close(sae.encode(X), z)
    torch.testing.assert_close(sae(X), z @ w["W_dec"] + w["b_dec"])
    assert sae.metadata["model_name"] == "gemma-2-2b" and sae.metadata["hook_name"] == "blocks.20.hook_resid_post"
    # The file itself names the SAE too.
    torch.testing.assert_close(saes.load(d / "params.npz").encode(X), z)


def test_gemma_scope_saved_here_round_trips(tmp_path):
    w, theta = _weights(), _theta()
    sae = saes.load(_gemma_scope_dir(tmp_path, w, theta))
    sae.save(tmp_path / "ours")
    back = saes.load(tmp_path / "ours")
    assert back.apply_b_dec_to_input is False
    assert torch.equal(back.encode(X), sae.encode(X))
    assert back.metadata["hook_name"] == "blocks.20.hook_resid_post"


@pytest.mark.parametrize("release,layer,model,hook", [
    ("gemma-scope-9b-pt-mlp", 3, "gemma-2-9b", "blocks.3.hook_mlp_out"),
    ("gemma-scope-2b-pt-att", 7, "gemma-2-2b", "blocks.7.attn.hook_z"),
    ("gemma-scope-9b-it-res", 31, "gemma-2-9b-it", "blocks.31.hook_resid_post"),
    ("models--google--gemma-scope-27b-pt-res/snapshots/abc", 10, "gemma-2-27b", "blocks.10.hook_resid_post"),
    ("my-download", 4, None, None),
])
def test_gemma_scope_model_and_hook_come_from_the_path(tmp_path, release, layer, model, hook):
    sae = saes.load(_gemma_scope_dir(tmp_path, _weights(), _theta(), release=release, layer=layer))
    assert sae.metadata.get("model_name") == model and sae.metadata.get("hook_name") == hook


def test_gemma_scope_bad_files_are_named(tmp_path):
    w, theta = _weights(), _theta()
    d = tmp_path / "missing"
    d.mkdir()
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in w.items()})
    with pytest.raises(saes.FormatError, match=r"lacks \['threshold'\]"):
        saes.load(d)
    d = tmp_path / "extra"
    d.mkdir()
    np.savez(d / "params.npz", **{k: v.numpy() for k, v in w.items()}, threshold=theta.numpy(), r_mag=theta.numpy())
    with pytest.raises(saes.FormatError, match="r_mag"):
        saes.load(d)
    d = tmp_path / "objects"
    d.mkdir()
    marker = tmp_path / "PWNED"
    np.savez(d / "params.npz", W_enc=np.array([Payload(marker)], dtype=object))
    with pytest.raises(saes.FormatError, match="numeric arrays only"):
        saes.load(d)
    assert not marker.exists()
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "params.npz").write_bytes(b"not a zip at all")
    with pytest.raises(saes.FormatError, match="params.npz"):
        saes.load(d)


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------ dictionary_learning


def _trainer_config(dict_class: str | None, trainer_class: str, **extra) -> dict:
    """config.json as dictionary_learning's trainSAE writes it ({"trainer": ..., "buffer": ...})."""
    trainer = {"trainer_class": trainer_class, "lr": 3e-4, "steps": 1000, "seed": 0, "activation_dim": D_IN,
               "dict_size": D_SAE, "device": "cuda:0", "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped",
               "wandb_name": trainer_class, "submodule_name": "resid_post_layer_3", **extra}
    if dict_class is not None:
        trainer["dict_class"] = dict_class
    return {"trainer": trainer, "buffer": {"d_submodule": D_IN, "io": "out", "n_ctxs": 3000, "ctx_len": 128}}


def _dl_dir(d: Path, state: dict[str, torch.Tensor], config: dict | None, name: str = "ae.pt") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / name)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config, indent=4))
    return d


def _linear_layout(w: dict[str, torch.Tensor], k: int | None = None, threshold: float | None = None) -> dict:
    """AutoEncoderTopK / BatchTopKSAE state dict: nn.Linear encoder and decoder, b_dec, k, threshold."""
    state = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
             "decoder.weight": w["W_dec"].T.contiguous(), "b_dec": w["b_dec"]}
    if k is not None:
        state["k"] = torch.tensor(k, dtype=torch.int)
    if threshold is not None:
        state["threshold"] = torch.tensor(threshold, dtype=torch.float32)
    return state


def test_dictionary_learning_topk(tmp_path):
    w = _weights()
    d = _dl_dir(tmp_path, _linear_layout(w, k=6, threshold=0.1), _trainer_config("AutoEncoderTopK", "TopKTrainer", k=6))
    sae = saes.load(d)
    assert isinstance(sae, saes.TopKSAE) and sae.k == 6
    # AutoEncoderTopK.encode: ReLU(encoder(x - b_dec)), then the top k per row.
    post = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    top = post.topk(6, dim=-1)
    z = torch.zeros_like(post).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(sae.encode(X), z)
    torch.testing.assert_close(sae(X), z @ w["W_dec"] + w["b_dec"])
    assert sae.metadata["model_name"] == "EleutherAI/pythia-70m-deduped"
    assert sae.metadata["dictionary_learning_submodule"] == "resid_post_layer_3"


@pytest.mark.parametrize("config", [
    _trainer_config("BatchTopKSAE", "BatchTopKTrainer", k=6),
    _trainer_config(None, "BatchTopKTrainer", k=6),  # configs that name only the trainer
], ids=["dict_class", "trainer_class_only"])
def test_dictionary_learning_batchtopk_uses_its_threshold_not_relu_or_topk(tmp_path, config):
    w = _weights()
    d = _dl_dir(tmp_path, _linear_layout(w, k=6, threshold=0.35), config)
    sae = saes.load(d)
    assert isinstance(sae, saes.BatchTopKSAE) and sae.k == 6 and float(sae.threshold) == pytest.approx(0.35)
    # BatchTopKSAE.encode (use_threshold=True, its default): ReLU(h) * 1[ReLU(h) > threshold].
    post = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    z = post * (post > 0.35)
    torch.testing.assert_close(sae.encode(X), z)
    torch.testing.assert_close(sae(X), z @ w["W_dec"] + w["b_dec"])
    # Neither plain ReLU nor per-token TopK gives these codes.
    assert not torch.allclose(z, post)
    assert len(set((z > 0).sum(-1).tolist())) > 1


def test_dictionary_learning_standard_autoencoder(tmp_path):
    w = _weights(dec_scale=2.0)  # decoder rows not unit norm (as April-update training leaves them)
    state = {"bias": w["b_dec"], "encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
             "decoder.weight": w["W_dec"].T.contiguous()}
    sae = saes.load(_dl_dir(tmp_path, state, _trainer_config("AutoEncoder", "StandardTrainer")))
    assert isinstance(sae, saes.ReLUSAE)
    # AutoEncoder: f = ReLU(encoder(x - bias)), x_hat = decoder(f) + bias; from_pretrained
    # scales decoder rows to unit norm, so codes are f * ||decoder row||.
    f = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    norms = w["W_dec"].norm(dim=-1)
    torch.testing.assert_close(sae.encode(X), f * norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(X), f @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_dictionary_learning_matryoshka(tmp_path):
    w = _weights()
    state = {**w, "k": torch.tensor(5, dtype=torch.int), "threshold": torch.tensor(0.3),
             "group_sizes": torch.tensor([8, 16, 24])}
    config = _trainer_config("MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKTrainer", k=5,
                             group_fractions=[1 / 6, 1 / 3, 1 / 2], group_sizes=[8, 16, 24])
    sae = saes.load(_dl_dir(tmp_path, state, config))
    assert isinstance(sae, saes.MatryoshkaSAE) and sae.group_sizes == [8, 16, 24] and sae.k == 5
    post = torch.relu((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    z = post * (post > 0.3)
    torch.testing.assert_close(sae.encode(X), z)
    torch.testing.assert_close(sae(X), z @ w["W_dec"] + w["b_dec"])


def test_dictionary_learning_jumprelu(tmp_path):
    w, theta = _weights(), _theta()
    config = _trainer_config("JumpReluAutoEncoder", "JumpReluTrainer", bandwidth=0.001, target_l0=20.0)
    sae = saes.load(_dl_dir(tmp_path, {**w, "threshold": theta}, config))
    assert isinstance(sae, saes.JumpReLUSAE)
    pre = X @ w["W_enc"] + w["b_enc"]  # JumpReluAutoEncoder: apply_b_dec_to_input = False
    z = torch.relu(pre * (pre > theta))
    torch.testing.assert_close(sae.encode(X), z)
    torch.testing.assert_close(sae(X), z @ w["W_dec"] + w["b_dec"])


def test_dictionary_learning_checkpoint_file_and_round_trip(tmp_path):
    w = _weights()
    _dl_dir(tmp_path / "checkpoints", _linear_layout(w, k=6, threshold=0.2), None, name="ae_500.pt")
    (tmp_path / "config.json").write_text(json.dumps(_trainer_config("BatchTopKSAE", "BatchTopKTrainer", k=6)))
    sae = saes.load(tmp_path / "checkpoints" / "ae_500.pt")
    assert isinstance(sae, saes.BatchTopKSAE)
    sae.save(tmp_path / "ours")
    assert torch.equal(saes.load(tmp_path / "ours").encode(X), sae.encode(X))


def test_dictionary_learning_refusals_name_the_problem(tmp_path):
    w = _weights()
    with pytest.raises(saes.FormatError, match="GatedAutoEncoder is not supported"):
        saes.load(_dl_dir(tmp_path / "gated", {"encoder.weight": w["W_enc"].T}, _trainer_config(
            "GatedAutoEncoder", "GatedSAETrainer")))
    with pytest.raises(saes.FormatError, match="no config.json"):
        saes.load(_dl_dir(tmp_path / "noconfig", _linear_layout(w, k=6), None))
    with pytest.raises(saes.FormatError, match="says AutoEncoder"):  # TopK weights, ReLU config
        saes.load(_dl_dir(tmp_path / "mismatch", {**_linear_layout(w, k=6), "bias": w["b_dec"]},
                          _trainer_config("AutoEncoder", "StandardTrainer")))
    with pytest.raises(saes.FormatError, match="do not match the dict_class"):
        saes.load(_dl_dir(tmp_path / "layout", {**w, "k": torch.tensor(6)},
                          _trainer_config("BatchTopKSAE", "BatchTopKTrainer", k=6)))
    with pytest.raises(saes.FormatError, match="activation_dim"):
        bad = _trainer_config("AutoEncoderTopK", "TopKTrainer", k=6)
        bad["trainer"]["activation_dim"] = "16"
        saes.load(_dl_dir(tmp_path / "badcfg", _linear_layout(w, k=6), bad))
    with pytest.raises(saes.FormatError, match="shape"):
        small = _trainer_config("AutoEncoderTopK", "TopKTrainer", k=6)
        small["trainer"]["dict_size"] = 40
        saes.load(_dl_dir(tmp_path / "shape", _linear_layout(w, k=6), small))


def test_dictionary_learning_pickled_objects_are_refused_unrun(tmp_path):
    marker = tmp_path / "PWNED"
    d = tmp_path / "bomb"
    d.mkdir()
    torch.save({**_linear_layout(_weights(), k=6), "evil": Payload(marker)}, d / "ae.pt")
    (d / "config.json").write_text(json.dumps(_trainer_config("AutoEncoderTopK", "TopKTrainer", k=6)))
    with pytest.raises(saes.FormatError, match="not a plain state dict of tensors"):
        saes.load(d)
    assert not marker.exists(), "a loader unpickled a file"


def test_a_directory_with_no_known_layout_lists_what_loads(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(saes.FormatError, match="params.npz.*ae.pt"):
        saes.load(tmp_path)
