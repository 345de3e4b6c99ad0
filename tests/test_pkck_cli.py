"""`interp pkck` end to end on the shipped world model, and the subspace file round trip."""
from __future__ import annotations

import json

import pytest
import torch

from interp.cli import main
from interp.world import default_model_path

needs_model = pytest.mark.skipif(not default_model_path().exists(), reason="the default world model is not built")


@pytest.mark.slow  # ~45 s: the whole PK/CK pipeline on the world model (the library parts run by default)
@needs_model
def test_pkck_command_writes_report_figures_and_subspaces(tmp_path, capsys):
    from probes.pkck import PKCKSubspace

    out = tmp_path / "pkck"
    rc = main(["pkck", "--model", "world", "--items", "60", "--steps", "30", "--max-new-tokens", "1",
               "--ranks", "1,2,3", "--seeds", "0,1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["hook"] == "blocks.2.hook_resid_post"  # the middle layer (rounding down), stated
    sweep = report["sweep"]["hooks"]["blocks.2.hook_resid_post"]
    assert set(sweep) == {"1", "2", "3"} and sweep["3"]["accuracy"]["n"] == 2
    assert sweep["3"]["accuracy"]["lo"] <= sweep["3"]["accuracy"]["mean"] <= sweep["3"]["accuracy"]["hi"]
    assert all(0 <= run["held_out"]["informative"] <= 1 for r in sweep.values() for run in r["per_seed"])
    assert set(report["ranks"]) == {"1", "2"}
    for r in ("1", "2"):
        assert report["ranks"][r]["n_train"] > 0
        assert 0.0 <= report["ranks"][r]["interchange_accuracy"] <= 1.0
    space = PKCKSubspace.load(out / "subspace_rank2.safetensors")
    assert space.rank == 2 and space.hook == report["hook"]
    torch.testing.assert_close(space.U.T @ space.U, torch.eye(2), atol=1e-5, rtol=0)
    html = (out / "ranks.html").read_text()
    assert "rank 1" in html and "rank 2" in html and "<script" in html
    assert "supportive/conflicting AUROC by step" in capsys.readouterr().out


def test_pkck_command_rejects_bad_ranks(capsys):
    assert main(["pkck", "--ranks", "5"]) == 1
    assert "ranks 1 to 4" in capsys.readouterr().err
    assert main(["pkck", "--seeds", "a"]) == 1
    assert "--seeds 'a': give comma-separated integers" in capsys.readouterr().err


def test_subspace_file_that_is_not_one_is_named(tmp_path):
    from probes.pkck import PKCKSubspace
    from saes.formats.durable import atomic_save_tensors

    atomic_save_tensors(tmp_path / "x.safetensors", {"W": torch.zeros(2)})
    with pytest.raises(ValueError, match="no PK/CK subspace"):
        PKCKSubspace.load(tmp_path / "x.safetensors")
