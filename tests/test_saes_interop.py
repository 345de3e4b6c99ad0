"""Interoperability with SAELens and EleutherAI sparsify, against the real libraries.

Skipped cleanly when sae_lens (or sparsify) is not importable. CI (.ci/run) runs it in a
second environment with the pinned versions; by hand::

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 sae-lens==6.54.12 \
        eai-sparsify==1.3.3 pytest -e .
    .venv-peers/bin/python -m pytest tests/test_saes_interop.py -p no:cacheprovider

(tests/test_saes_io.py checks the same layouts with hand-written files and always runs.)
"""
from __future__ import annotations

import json
import os

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
    # sparsify decodes with its Triton kernel whenever triton imports, and that kernel needs a
    # GPU; its own switch selects the eager decoder, the reference this comparison wants anyway.
    if not torch.cuda.is_available():
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    return pytest.importorskip("sparsify")


# Every architecture this package saves, in each variant SAELens has a class for, with the
# SAELens class it must load as. Thresholds are set so BatchTopK-style codes are non-trivial.
SAVED_HERE = {
    "topk": (lambda: saes.TopKSAE(16, 64, k=5), "TopKSAE"),
    "batchtopk": (lambda: saes.BatchTopKSAE(16, 64, k=5), "JumpReLUSAE"),
    "matryoshka": (lambda: saes.MatryoshkaSAE(16, [16, 48], k=5), "JumpReLUSAE"),
    "matryoshka_topk": (lambda: saes.MatryoshkaSAE(16, [16, 48], k=5, batch_topk=False), "TopKSAE"),
    "mp": (lambda: saes.MPSAE(16, 64, k=6), "MatchingPursuitSAE"),
    "relu": (lambda: saes.ReLUSAE(16, 64), "StandardSAE"),
    "relu_unit_norm": (lambda: saes.ReLUSAE(16, 64, unit_norm_decoder=True), "StandardSAE"),
    "jumprelu": (lambda: saes.JumpReLUSAE(16, 64), "JumpReLUSAE"),
    "gated": (lambda: saes.GatedSAE(16, 64), "GatedSAE"),
}


def _with_threshold(sae: saes.SAE) -> saes.SAE:
    threshold = getattr(sae, "threshold", None)
    if isinstance(threshold, torch.Tensor):
        with torch.no_grad():  # per latent where the class has one per latent, else one θ
            threshold.copy_(torch.linspace(0.1, 0.5, threshold.numel()).reshape(threshold.shape)
                            if threshold.ndim else torch.tensor(0.3))
    return sae


class TestSAELens:

    @pytest.mark.parametrize("with_hook", [True, False], ids=["hook", "no_hook"])
    @pytest.mark.parametrize("name", list(SAVED_HERE))
    def test_every_sae_saved_here_loads_in_saelens_and_encodes_identically(self, tmp_path, x, sae_lens, name,
                                                                           with_hook):
        make, their_class = SAVED_HERE[name]
        ours = _with_threshold(_trained_like(make()))
        if not with_hook:  # an SAE trained on a plain tensor knows no model or hook
            ours.metadata.clear()
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert type(theirs).__name__ == their_class
        assert theirs.cfg.metadata.hook_name == ("blocks.0.hook_resid_post" if with_hook else None)
        assert theirs.cfg.metadata.model_name == ("tiny-gpt2" if with_hook else None)
        assert theirs.cfg.metadata.sae_lens_training_version is None  # not trained by SAELens
        codes = ours.encode(x)
        assert (codes != 0).any(), "the check needs active latents"
        torch.testing.assert_close(theirs.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)

    def test_gemma_scope_npz_loaded_here_then_saved_loads_in_saelens(self, tmp_path, x, sae_lens):
        """Gemma Scope encodes x, not x - b_dec: the saved file must say so to SAELens."""
        np = pytest.importorskip("numpy")
        g = torch.Generator().manual_seed(5)
        arrays = {"W_enc": torch.randn(16, 64, generator=g) * 0.4, "b_enc": torch.randn(64, generator=g) * 0.2,
                  "W_dec": torch.randn(64, 16, generator=g) * 0.3, "b_dec": torch.randn(16, generator=g) * 0.5,
                  "threshold": torch.rand(64, generator=g) * 0.5}
        src = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_20"
        src.mkdir(parents=True)
        np.savez(src / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
        ours = saes.load(src)
        ours.save(tmp_path / "out")
        theirs = sae_lens.SAE.load_from_disk(tmp_path / "out")
        assert type(theirs).__name__ == "JumpReLUSAE" and theirs.cfg.apply_b_dec_to_input is False
        assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)

    def test_topk_keeps_k_and_batchtopk_keeps_its_threshold(self, tmp_path, sae_lens):
        saes.TopKSAE(16, 64, k=5).save(tmp_path / "topk")
        assert sae_lens.SAE.load_from_disk(tmp_path / "topk").cfg.k == 5
        btk = _trained_like(saes.BatchTopKSAE(16, 64, k=5))
        btk.threshold.fill_(0.4)
        btk.save(tmp_path / "btk")
        assert torch.all(sae_lens.SAE.load_from_disk(tmp_path / "btk").threshold == 0.4)

    def test_bfloat16_sae_loads_in_saelens_as_bfloat16(self, tmp_path, x, sae_lens):
        ours = _trained_like(saes.TopKSAE(16, 64, k=5, dtype="bfloat16"))
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert theirs.W_dec.dtype == torch.bfloat16 and torch.equal(theirs.W_dec, ours.W_dec)
        torch.testing.assert_close(theirs.encode(x.bfloat16()), ours.encode(x.bfloat16()))

    @pytest.mark.parametrize("variant", [{"tied": False}, {"signed": True}, {"reselect": False}])
    def test_mp_variants_without_a_saelens_class_are_refused_there(self, tmp_path, sae_lens, variant):
        """Written as "mp", which SAELens does not know: it must refuse, not run another encoder."""
        _trained_like(saes.MPSAE(16, 64, k=6, **variant)).save(tmp_path)
        assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "mp"
        with pytest.raises(Exception, match="mp"):
            sae_lens.SAE.load_from_disk(tmp_path)
        assert isinstance(saes.load(tmp_path), saes.MPSAE)

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


def _saelens_training_sae(sae_lens, ours: saes.SAE):
    """SAELens's training SAE of the same family and settings, holding ``ours``'s weights."""
    sl = sae_lens
    if isinstance(ours, saes.ReLUSAE):
        theirs = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(d_in=16, d_sae=64, l1_coefficient=ours.l1_coefficient))
    elif isinstance(ours, saes.JumpReLUSAE):
        theirs = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(
            d_in=16, d_sae=64, l0_coefficient=ours.l0_coefficient, jumprelu_bandwidth=ours.bandwidth,
            jumprelu_sparsity_loss_mode=ours.sparsity_loss, jumprelu_tanh_scale=ours.tanh_scale))
    else:
        theirs = sl.GatedTrainingSAE(sl.GatedTrainingSAEConfig(d_in=16, d_sae=64, l1_coefficient=ours.l1_coefficient))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            getattr(theirs, name).copy_(p)
    return theirs


# Each penalised family in the variants whose loss SAELens computes the same way (SAELens's
# Gated auxiliary loss trains the decoder, which frozen_aux_decoder=False matches).
SAME_LOSS = {
    "l1": lambda: saes.ReLUSAE(16, 64, l1_coefficient=3.0),
    "jumprelu_step": lambda: saes.JumpReLUSAE(16, 64, l0_coefficient=0.5, bandwidth=0.2),
    "jumprelu_tanh": lambda: saes.JumpReLUSAE(16, 64, l0_coefficient=0.5, bandwidth=0.2, sparsity_loss="tanh"),
    "gated": lambda: saes.GatedSAE(16, 64, l1_coefficient=2.0, frozen_aux_decoder=False),
}


class TestSAELensTraining:
    """The penalised families' losses and gradients against SAELens's own training SAEs."""

    @pytest.mark.parametrize("name", list(SAME_LOSS))
    def test_losses_and_gradients_are_saelens_divided_by_the_batch_variance(self, x, sae_lens, name):
        from sae_lens.saes.sae import TrainStepInput

        ours = _trained_like(SAME_LOSS[name]()).train()
        with torch.no_grad():
            ours.W_dec.mul_(torch.linspace(0.5, 2.0, 64)[:, None])  # row norms that differ, as free rows do
            if isinstance(ours, saes.JumpReLUSAE):  # thresholds among the pre-activations, inside the kernel
                ours.threshold.copy_(ours.pre_acts(x).abs().median(0).values)
        theirs = _saelens_training_sae(sae_lens, ours)
        variance = saes.architectures.base.batch_variance(x)
        out = ours.training_forward(x, variance)
        loss = sum(out.losses.values())
        loss.backward()
        coefficient = {"l1": getattr(ours, "l1_coefficient", None), "l0": getattr(ours, "l0_coefficient", None)}
        step = theirs.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={k: v for k, v in coefficient.items() if v is not None}, dead_neuron_mask=None,
            n_training_steps=0, is_logging_step=False))
        step.loss.backward()
        torch.testing.assert_close(out.x_hat, step.sae_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss * variance, step.loss, rtol=1e-5, atol=1e-5)
        assert sorted(float(v.detach()) * float(variance) for v in out.losses.values()) == pytest.approx(
            sorted(float(v) for v in step.losses.values()), rel=1e-5)
        checked = 0
        for pname, p in ours.named_parameters():
            theirs_grad = getattr(theirs, pname).grad
            torch.testing.assert_close(p.grad * variance, theirs_grad, rtol=1e-4, atol=1e-6, msg=pname)
            checked += int(theirs_grad.abs().max() > 0)
        assert checked == len(list(ours.parameters()))  # every gradient is non-trivial, the threshold's too

    @pytest.mark.parametrize("arch", ["l1", "jumprelu", "gated"])
    def test_a_trained_sae_loads_in_saelens_and_encodes_identically(self, tmp_path, x, sae_lens, arch):
        from saes.architectures import registry

        data = saes.synthetic.superposition(n_features=32, d=16, n_samples=2048, seed=2, mean_active=3).x
        ours = registry.for_cli(arch)(16, 64)
        saes.train(ours, data, saes.TrainConfig(batch_size=128, total_tokens=128 * 20, lr=3e-3, normalize_input=True),
                   progress=False)
        ours.save(tmp_path)
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == theirs.cfg.architecture()
        codes = ours.encode(data[:256])
        assert (codes != 0).any() and (codes == 0).any()
        torch.testing.assert_close(theirs.encode(data[:256]), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(data[:256]), ours(data[:256]), rtol=1e-5, atol=1e-5)
        back = saes.load(tmp_path)
        assert type(back) is type(ours) and back.arch_config() == ours.arch_config()

    def test_saelens_gated_sae_loads_here(self, tmp_path, x, sae_lens):
        theirs = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=16, d_sae=64))
        g = torch.Generator().manual_seed(6)
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        theirs.save_model(tmp_path)
        ours = saes.load(tmp_path)
        assert isinstance(ours, saes.GatedSAE)
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


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


# ---------------------------------------------------------------- transcoders

# Every transcoder form this package saves, and the SAELens class it must load as (None:
# SAELens 6.54 has none, and refuses the file instead of loading it as something else).
TRANSCODERS_SAVED_HERE = {
    "topk": (lambda: saes.TopKSAE(16, 64, k=5, d_out=16), "TopKSAE"),
    "batchtopk": (lambda: saes.BatchTopKSAE(16, 64, k=5, d_out=12), "JumpReLUTranscoder"),
    "batchtopk_skip": (lambda: saes.BatchTopKSAE(16, 64, k=5, d_out=12, skip=True), "JumpReLUSkipTranscoder"),
    "matryoshka_skip": (lambda: saes.MatryoshkaSAE(16, [16, 48], k=5, d_out=16, skip=True), "JumpReLUSkipTranscoder"),
    "relu": (lambda: saes.ReLUSAE(16, 64, d_out=12), "Transcoder"),
    "relu_skip": (lambda: saes.ReLUSAE(16, 64, d_out=16, skip=True), "SkipTranscoder"),
    "topk_skip": (lambda: saes.TopKSAE(16, 64, k=5, d_out=16, skip=True), None),
}


def _transcoder_like(tc: saes.SAE) -> saes.SAE:
    tc = _with_threshold(_trained_like(tc))
    tc.metadata.update(hook_name="blocks.0.hook_resid_mid", hook_name_out="blocks.0.hook_mlp_out")
    if tc.W_skip is not None:
        with torch.no_grad():
            tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=torch.Generator().manual_seed(9)) * 0.2)
    return tc


class TestTranscodersSAELens:

    @pytest.mark.parametrize("name", list(TRANSCODERS_SAVED_HERE))
    def test_every_transcoder_saved_here_loads_in_saelens_and_outputs_identically(self, tmp_path, x, sae_lens, name):
        make, their_class = TRANSCODERS_SAVED_HERE[name]
        ours = _transcoder_like(make())
        ours.save(tmp_path)
        if their_class is None:
            with pytest.raises(Exception, match="topk_skip_transcoder"):
                sae_lens.SAE.load_from_disk(tmp_path)
            return
        theirs = sae_lens.SAE.load_from_disk(tmp_path)
        assert type(theirs).__name__ == their_class
        assert theirs.cfg.metadata.hook_name_out == "blocks.0.hook_mlp_out"  # HookedSAETransformer splices there
        assert not theirs.cfg.apply_b_dec_to_input
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("kind", ["Transcoder", "SkipTranscoder", "JumpReLUTranscoder", "JumpReLUSkipTranscoder"])
    def test_saelens_transcoders_load_here(self, tmp_path, x, sae_lens, kind):
        cls, cfg_cls = getattr(sae_lens, kind), getattr(sae_lens, f"{kind}Config")
        theirs = cls(cfg_cls(d_in=16, d_sae=64, d_out=12 if "Skip" not in kind else 16, apply_b_dec_to_input=False,
                             metadata=sae_lens.saes.sae.SAEMetadata(hook_name="blocks.0.hook_resid_mid",
                                                                    hook_name_out="blocks.0.hook_mlp_out")))
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in theirs.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if hasattr(theirs, "threshold"):
                theirs.threshold.copy_(torch.linspace(0.0, 0.4, 64))
        theirs.save_model(tmp_path)
        ours = saes.load(tmp_path)
        assert ours.is_transcoder and ours.skip == ("Skip" in kind)
        assert ours.metadata["hook_name_out"] == "blocks.0.hook_mlp_out"
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


class TestTranscodersCircuitTracer:
    """circuit-tracer is no dependency: run by hand with its source on the path (pip download
    circuit-tracer==0.5.0 --no-deps, unzip, PYTHONPATH=<dir>); its loader reads our set."""

    def test_circuit_tracer_loads_our_transcoder_set_and_computes_the_same(self, tmp_path, x):
        st = pytest.importorskip("circuit_tracer.transcoder.single_layer_transcoder")
        yaml = pytest.importorskip("yaml")
        from saes.formats.circuit_tracer import save_circuit_tracer

        for skip in (False, True):
            tcs = []
            for layer in range(2):
                tc = _transcoder_like(saes.BatchTopKSAE(16, 64, k=5, d_out=16, skip=skip))
                tc.metadata.update(hook_name=f"blocks.{layer}.hook_resid_mid", hook_name_out=f"blocks.{layer}.hook_mlp_out")
                tcs.append(tc)
            where = tmp_path / f"set{int(skip)}"
            save_circuit_tracer(tcs, where)
            # As circuit_tracer.utils.caching.load_transcoders_from_cache reads a local set.
            config = yaml.safe_load((where / "config.yaml").read_text())
            assert config["model_kind"] == "transcoder_set"
            paths = {int(f.stem.split("_")[1]): str(f) for f in sorted(where.glob("layer_*.safetensors"))}
            for lazy in (True, False):
                theirs = st.load_transcoder_set(paths, scan=config["scan"], feature_input_hook=config["feature_input_hook"],
                                                feature_output_hook=config["feature_output_hook"], device=torch.device("cpu"),
                                                lazy_encoder=lazy, lazy_decoder=lazy)
                assert theirs.skip_connection == skip and theirs.feature_output_hook == "hook_mlp_out"
                for layer, tc in enumerate(tcs):
                    torch.testing.assert_close(theirs[layer](x), tc(x), rtol=1e-5, atol=1e-5)
