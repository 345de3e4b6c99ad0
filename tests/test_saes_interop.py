"""Interoperability with SAELens and EleutherAI sparsify, against the real libraries.

Skipped cleanly when sae_lens (or sparsify) is not importable. To run it, use an
environment that has them, e.g.::

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 sae-lens eai-sparsify
    PYTHONPATH=. /tmp/peers/bin/python -m pytest tests/test_saes_interop.py

(tests/test_saes_io.py checks the same layouts with hand-written files and always runs.)
"""
from __future__ import annotations

import json

import pytest
import torch

import saes

torch.set_num_threads(1)


def _trained_like(sae: saes.SAE, seed: int = 0) -> saes.SAE:
    """Random non-trivial weights (biases non-zero) so a wrong bias path would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        saes.architectures.base.unit_rows_(sae.W_dec)
    sae.metadata.update(model_name="tiny-gpt2", hook_name="blocks.0.hook_resid_post")
    return sae.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(64, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def sparsify():
    return pytest.importorskip("sparsify")


class TestSAELens:

    def test_topk_saved_here_loads_in_saelens_and_encodes_identically(self, tmp_path, x, sae_lens):
        ours = _trained_like(saes.TopKSAE(16, 64, k=5))
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert type(theirs).__name__ == "TopKSAE"
        assert theirs.cfg.k == 5
        assert theirs.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
        assert torch.equal(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), ours(x), rtol=1e-6, atol=1e-6)

    def test_batchtopk_saved_here_loads_in_saelens_as_jumprelu(self, tmp_path, x, sae_lens):
        ours = _trained_like(saes.BatchTopKSAE(16, 64, k=5))
        ours.threshold.fill_(0.4)
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert type(theirs).__name__ == "JumpReLUSAE"
        assert torch.all(theirs.threshold == 0.4)
        assert torch.equal(theirs.encode(x), ours.encode(x))

    def test_mp_saved_here_loads_in_saelens_and_encodes_identically(self, tmp_path, x, sae_lens):
        ours = _trained_like(saes.MPSAE(16, 64, k=6))
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert type(theirs).__name__ == "MatchingPursuitSAE"
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)

    def test_matryoshka_saved_here_loads_in_saelens(self, tmp_path, x, sae_lens):
        ours = _trained_like(saes.MatryoshkaSAE(16, [16, 48], k=5))
        ours.threshold.fill_(0.3)
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert torch.equal(theirs.encode(x), ours.encode(x))

    @pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
    def test_saelens_saved_loads_here(self, tmp_path, x, arch, sae_lens):
        sl = sae_lens
        meta = {"model_name": "tiny-gpt2", "hook_name": "blocks.1.hook_resid_pre"}
        if arch == "standard":
            cfg = sl.StandardSAEConfig(d_in=16, d_sae=48, metadata=sl.saes.sae.SAEMetadata(**meta))
            theirs = sl.StandardSAE(cfg)
        elif arch == "topk":
            cfg = sl.TopKSAEConfig(d_in=16, d_sae=48, k=7, metadata=sl.saes.sae.SAEMetadata(**meta))
            theirs = sl.TopKSAE(cfg)
        else:
            cfg = sl.JumpReLUSAEConfig(d_in=16, d_sae=48, metadata=sl.saes.sae.SAEMetadata(**meta))
            theirs = sl.JumpReLUSAE(cfg)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if arch == "jumprelu":
                theirs.threshold.copy_(torch.rand(48, generator=g) * 0.5)
        theirs.save_model(tmp_path)
        ours = saes.load(tmp_path)
        assert ours.metadata["hook_name"] == "blocks.1.hook_resid_pre"
        assert torch.equal(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)

    def test_saelens_batchtopk_training_sae_saved_for_inference_loads_here(self, tmp_path, x, sae_lens):
        sl = sae_lens
        cfg = sl.BatchTopKTrainingSAEConfig(d_in=16, d_sae=48, k=4)
        theirs = sl.BatchTopKTrainingSAE(cfg)
        with torch.no_grad():
            theirs.topk_threshold.fill_(0.25)
        theirs.save_inference_model(tmp_path)
        assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "jumprelu"
        ours = saes.load(tmp_path)
        assert isinstance(ours, saes.JumpReLUSAE)
        reference = sl.SAE.load_from_disk(tmp_path)
        assert torch.equal(ours.encode(x), reference.encode(x))


class TestSparsify:

    def test_sparsify_saved_loads_here_and_encodes_identically(self, tmp_path, x, sparsify):
        sp = sparsify
        coder = sp.SparseCoder(16, sp.SparseCoderConfig(num_latents=64, k=6))
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for p in coder.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        coder.save_to_disk(tmp_path / "layers.3")
        ours = saes.load(tmp_path / "layers.3")
        assert isinstance(ours, saes.TopKSAE) and ours.k == 6
        out = coder.encode(x)
        dense = torch.zeros(x.shape[0], 64).scatter_(1, out.top_indices, out.top_acts)
        torch.testing.assert_close(ours.encode(x), dense, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x), coder.decode(out.top_acts, out.top_indices), rtol=1e-5, atol=1e-5)
