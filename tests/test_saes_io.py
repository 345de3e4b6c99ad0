"""SAE files: exact round trips, the SAELens layout, and other libraries' layouts.

The layouts of SAELens and sparsify files are written by hand here (the field and tensor
names those libraries use), so loading them is checked without the libraries installed;
tests/test_saes_interop.py repeats the checks against the real libraries when present.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import saes
from saes.architectures.base import unit_rows_

torch.set_num_threads(1)
X = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))


def _randomise(sae: saes.SAE, seed: int = 0) -> saes.SAE:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        unit_rows_(sae.W_dec)
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.Tensor):  # a parameter in JumpReLU
            sae.threshold.fill_(0.2)
    sae.metadata.update(model_name="tiny-gpt2", hook_name="blocks.1.hook_resid_post", context_size=32)
    return sae.eval()


ARCHS = {
    "topk": lambda: saes.TopKSAE(16, 48, k=4),
    "batchtopk": lambda: saes.BatchTopKSAE(16, 48, k=4, threshold_momentum=0.9),
    "matryoshka": lambda: saes.MatryoshkaSAE(16, [8, 16, 24], k=4, weighting="sum"),
    "matryoshka_topk": lambda: saes.MatryoshkaSAE(16, [8, 40], k=4, batch_topk=False),
    "mp": lambda: saes.MPSAE(16, 48, k=5),
    "mp_untied_signed": lambda: saes.MPSAE(16, 48, k=5, tied=False, signed=True, reselect=False),
    "relu": lambda: saes.ReLUSAE(16, 48),
    "jumprelu": lambda: saes.JumpReLUSAE(16, 48),
}


@pytest.mark.parametrize("name", list(ARCHS))
def test_round_trip_is_exact(tmp_path, name):
    sae = _randomise(ARCHS[name]())
    sae.save(tmp_path)
    back = saes.load(tmp_path)
    assert type(back) is type(sae)
    assert back.arch_config() == sae.arch_config()
    assert back.metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert back.metadata["context_size"] == 32
    a, b = sae.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(back.encode(X), sae.encode(X))
    assert torch.equal(back(X), sae(X))


def test_saelens_layout_fields(tmp_path):
    _randomise(saes.TopKSAE(16, 48, k=4)).save(tmp_path / "topk")
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (16, 48, "float32", "cpu")
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["model_name"] == "tiny-gpt2" and cfg["normalize_activations"] == "none"
    assert cfg["saes"]["architecture"] == "topk"
    tensors, _ = saes.formats.durable.read_tensors(tmp_path / "topk" / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,)
    }

    _randomise(saes.BatchTopKSAE(16, 48, k=4)).save(tmp_path / "btk")
    cfg = json.loads((tmp_path / "btk" / "cfg.json").read_text())
    tensors, _ = saes.formats.durable.read_tensors(tmp_path / "btk" / "sae_weights.safetensors")
    assert cfg["architecture"] == "jumprelu"  # how SAELens saves BatchTopK for inference
    assert tensors["threshold"].shape == (48,) and torch.all(tensors["threshold"] == 0.2)

    _randomise(saes.MPSAE(16, 48, k=5)).save(tmp_path / "mp")
    cfg = json.loads((tmp_path / "mp" / "cfg.json").read_text())
    tensors, _ = saes.formats.durable.read_tensors(tmp_path / "mp" / "sae_weights.safetensors")
    assert cfg["architecture"] == "matching_pursuit" and cfg["max_iterations"] == 5
    assert cfg["residual_threshold"] == 0.0 and cfg["stop_on_duplicate_support"] is False
    assert set(tensors) == {"W_dec", "b_dec"}  # tied: no encoder tensors

    _randomise(saes.MatryoshkaSAE(16, [8, 40], k=4)).save(tmp_path / "mat")
    cfg = json.loads((tmp_path / "mat" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["saes"]["architecture"] == "matryoshka" and cfg["saes"]["config"]["group_sizes"] == [8, 40]


def test_cfg_is_read_as_saelens_6_layout_even_without_hook_metadata(tmp_path):
    """SAELens 6 converts a cfg.json without metadata.sae_lens_version as a pre-6.0 file, and
    that conversion fails on a null top-level hook_name (an SAE trained on a plain tensor)."""
    sae = _randomise(saes.TopKSAE(16, 48, k=4))
    sae.metadata.clear()
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["hook_name"] is None and cfg["metadata"]["sae_lens_training_version"] is None
    assert "hook_name" not in cfg and "model_name" not in cfg  # no nulls at the pre-6.0 top level
    back = saes.load(tmp_path)
    assert "sae_lens_version" not in back.metadata and "sae_lens_training_version" not in back.metadata
    back.save(tmp_path / "again")  # a second save writes the same description
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"] == cfg["metadata"]


def test_bfloat16_and_device_arguments(tmp_path):
    sae = _randomise(saes.TopKSAE(16, 48, k=4, dtype="bfloat16"))
    sae.save(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["dtype"] == "bfloat16"
    back = saes.load(tmp_path)
    assert back.W_dec.dtype == torch.bfloat16 and torch.equal(back.W_dec, sae.W_dec)
    assert saes.load(tmp_path, dtype="float32").W_dec.dtype == torch.float32


def _write(tmp_path, cfg: dict, tensors: dict, weights: str = "sae_weights.safetensors"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / weights))
    return tmp_path


def _weights(d_in=16, d_sae=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
        "b_enc": torch.randn(d_sae, generator=g) * 0.3,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3,
        "b_dec": torch.randn(d_in, generator=g) * 0.3,
    }


def test_loads_saelens_v6_standard_topk_jumprelu(tmp_path):
    w = _weights()
    h = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    meta = {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "sae_lens_version": "6.5.0"}
    base = {"d_in": 16, "d_sae": 48, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none", "metadata": meta}

    relu = saes.load(_write(tmp_path / "std", {**base, "architecture": "standard"}, w))
    assert isinstance(relu, saes.ReLUSAE) and relu.metadata["hook_name"] == "blocks.3.hook_resid_pre"
    torch.testing.assert_close(relu.encode(X), h.relu())
    torch.testing.assert_close(relu(X), h.relu() @ w["W_dec"] + w["b_dec"])

    topk = saes.load(_write(tmp_path / "topk", {**base, "architecture": "topk", "k": 5}, w))
    expected = torch.zeros_like(h).scatter(1, h.topk(5).indices, h.topk(5).values.relu())
    torch.testing.assert_close(topk.encode(X), expected)

    theta = torch.rand(48, generator=torch.Generator().manual_seed(2))
    jump = saes.load(_write(tmp_path / "jump", {**base, "architecture": "jumprelu"}, {**w, "threshold": theta}))
    assert isinstance(jump, saes.JumpReLUSAE)
    torch.testing.assert_close(jump.encode(X), h.relu() * (h > theta))


def test_loads_legacy_saelens_layout_and_no_b_dec_input(tmp_path):
    w = _weights()
    legacy = {"d_in": 16, "d_sae": 48, "dtype": "torch.float32", "device": "cpu", "hook_point": "blocks.0.hook_resid_pre",
              "model_name": "gpt2", "activation_fn_str": "relu", "apply_b_dec_to_input": False}
    sae = saes.load(_write(tmp_path, legacy, w))
    assert isinstance(sae, saes.ReLUSAE) and sae.metadata["hook_name"] == "blocks.0.hook_resid_pre"
    torch.testing.assert_close(sae.encode(X), (X @ w["W_enc"] + w["b_enc"]).relu())


def test_loads_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    w = _weights()
    norms = w["W_dec"].norm(dim=-1)
    h = ((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms  # SAELens ranks h * ||d_i||
    top = h.topk(5)
    z = torch.zeros_like(h).scatter(1, top.indices, top.values.relu())
    cfg = {"architecture": "topk", "d_in": 16, "d_sae": 48, "k": 5, "dtype": "float32",
           "rescale_acts_by_decoder_norm": True, "metadata": {"sae_lens_version": "6.5.0"}}
    sae = saes.load(_write(tmp_path, cfg, w))
    torch.testing.assert_close(sae.encode(X), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(X), (z / norms) @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)


def test_loads_sparsify_layout(tmp_path):
    w = _weights()
    tensors = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": 48, "k": 6,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 16}
    sae = saes.load(_write(tmp_path / "layers.6", cfg, tensors, weights="sae.safetensors"))
    assert isinstance(sae, saes.TopKSAE) and sae.k == 6 and sae.metadata["sparsify_hookpoint"] == "layers.6"
    pre = ((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()  # sparsify: ReLU, then top-k
    top = pre.topk(6)
    torch.testing.assert_close(sae.encode(X), torch.zeros_like(pre).scatter(1, top.indices, top.values))
    with pytest.raises(saes.FormatError, match="transcoder"):
        saes.load(_write(tmp_path / "tc", {**cfg, "transcode": True}, tensors, weights="sae.safetensors"))


def test_unreadable_directories_get_clear_errors(tmp_path):
    with pytest.raises(saes.FormatError, match="does not exist"):
        saes.load(tmp_path / "missing")
    _randomise(saes.TopKSAE(16, 48, k=4)).save(tmp_path / "run" / "blocks.0.hook_resid_post")
    with pytest.raises(saes.FormatError, match="subdirectories hold SAEs: blocks.0.hook_resid_post"):
        saes.load(tmp_path / "run")
    w = _weights()
    with pytest.raises(saes.FormatError, match="'temporal' is not supported"):
        saes.load(_write(tmp_path / "temporal", {"architecture": "temporal", "d_in": 16, "d_sae": 48}, w))
    with pytest.raises(saes.FormatError, match="expect transformed inputs"):
        saes.load(_write(tmp_path / "ln", {"architecture": "standard", "d_in": 16, "d_sae": 48,
                                           "normalize_activations": "layer_norm"}, w))
    with pytest.raises(saes.FormatError, match="shape"):
        saes.load(_write(tmp_path / "shape", {"architecture": "standard", "d_in": 16, "d_sae": 40}, w))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    sae = _randomise(saes.TopKSAE(16, 48, k=4))
    sae.save(tmp_path)
    sae.save(tmp_path)  # overwriting in place is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka", "mp", "mp_untied_signed", "jumprelu"])
def test_folding_the_input_scale_is_exact(name):
    """An SAE trained on s*x, folded, acts on raw x as the unfolded one did on s*x."""
    sae = _randomise(ARCHS[name]())
    folded = _randomise(ARCHS[name]())
    s = 7.5
    folded.fold_input_scale(s)
    torch.testing.assert_close(folded(X), sae(X * s) / s, rtol=1e-4, atol=1e-5)
    codes, raw = folded.encode(X), sae.encode(X * s)
    if isinstance(sae, saes.MPSAE):
        raw = raw / s  # pursuit is homogeneous: codes shrink with the input
    torch.testing.assert_close(codes, raw, rtol=1e-4, atol=1e-5)
