"""The architecture registry: one entry per family, read by the loader, the saver and the CLI."""
from __future__ import annotations

import pytest
import torch

import saes
from saes.architectures import registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in the test are dropped afterwards."""
    monkeypatch.setattr(registry, "_BY_NAME", dict(registry._BY_NAME))


def test_every_family_is_registered_once_under_its_file_name():
    assert registry.names() == ("topk", "batchtopk", "matryoshka", "mp", "relu", "jumprelu", "gated")
    assert registry.cli_names() == ("topk", "batchtopk", "matryoshka", "mp", "l1", "jumprelu", "gated")
    for name in registry.names():
        assert registry.get(name).architecture == name and registry.get(name).trainable


def test_the_command_line_offers_the_registered_architectures():
    from interp.cli.train import ARCHS, build_sae

    assert ARCHS == registry.cli_names()
    for arch in ARCHS:
        sae = build_sae(arch, 8, 32, 3, groups="8,24", batch_topk=False)
        assert type(sae) is registry.for_cli(arch) and sae.d_sae == 32
    assert build_sae("matryoshka", 8, 32, 3, groups="8,24").group_sizes == [8, 24]


def test_a_new_architecture_is_one_registration(scratch_registry, tmp_path):
    @registry.register(cli_name="toy")
    class ToySAE(saes.TopKSAE):
        architecture = "toy"

    sae = registry.build(registry.for_cli("toy"), {"d_in": 8, "d_sae": 16, "k": 2, "group_sizes": [4]})
    sae.save(tmp_path)
    back = saes.load(tmp_path)
    assert type(back) is ToySAE and torch.equal(back.W_enc, sae.W_enc)


def test_registering_twice_or_a_cli_name_for_inference_only_is_refused(scratch_registry):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(cli_name="topk2")(type("Again", (saes.TopKSAE,), {"architecture": "topk"}))
    with pytest.raises(ValueError, match="inference-only"):
        registry.register(cli_name="jr")(type("JR", (saes.JumpReLUSAE,), {"architecture": "jr", "trainable": False}))
    with pytest.raises(KeyError, match="known"):
        registry.for_cli("nope")
