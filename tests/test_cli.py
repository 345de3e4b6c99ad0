"""The `interp` command line: every command documents an example; steer, patch, quickstart run."""
from __future__ import annotations

import json
import re

import pytest
import torch

import saes
from interp.world import default_model_path
from interp.cli import build_parser, main

SENTENCES = ["the cat sat on the mat", "a big dog ran under the tree", "the blue bird flew over the sky"]


def test_every_command_help_shows_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert {"quickstart", "hooks", "harvest", "train", "eval-sae", "steer", "patch", "world"} <= set(commands)
    for name, sub in commands.items():
        assert "example" in sub.format_help(), name


def test_steer_prints_both_continuations(tiny_gpt2_dir, tmp_path, capsys):
    torch.manual_seed(0)
    sae = saes.TopKSAE(32, 64, k=4)
    sae.metadata.update(hook_name="blocks.0.hook_resid_post")
    sae.save(tmp_path / "sae")
    code = main(["steer", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--latent", "3",
                 "--scale", "40", "--prompt", "the cat", "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert code == 0 and "unsteered" in out and "sae latent 3 at blocks.0.hook_resid_post" in out
    rows = [line for line in out.splitlines() if " | " in line and "unsteered" not in line]
    left, right = rows[0].split(" | ")
    assert left.strip() != right.strip()  # a scale of 40 changes the greedy continuation


def test_cli_errors_are_messages_not_tracebacks(tiny_gpt2_dir, tmp_path, capsys):
    sae = saes.TopKSAE(32, 64, k=4)
    sae.save(tmp_path / "sae")  # records no hook
    code = main(["steer", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--latent", "1",
                 "--scale", "2", "--prompt", "the"])
    err = capsys.readouterr().err
    assert code == 1 and "does not record its hook" in err and "Traceback" not in err
    code = main(["hooks", "--model", str(tmp_path / "missing")])
    assert code == 1 and "no model directory" in capsys.readouterr().err


def test_patch_writes_a_heatmap(tiny_gpt2_dir, tmp_path, capsys):
    out = tmp_path / "patch.html"
    code = main(["patch", "--model", str(tiny_gpt2_dir), "--clean", "the cat sat on", "--corrupted",
                 "the dog sat on", "--correct", "mat", "--wrong", "tree", "--out", str(out)])
    assert code == 0 and "plotly" in out.read_text()
    assert "blocks.0.hook_resid_pre at position 2 (1.00)" in capsys.readouterr().out


def test_quickstart_on_any_model_and_text(tiny_gpt2_dir, tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(SENTENCES * 150))
    code = main(["quickstart", "--model", str(tiny_gpt2_dir), "--data", str(data), "--out", str(tmp_path / "qs"),
                 "--tokens", "1500", "--d-sae", "64", "--k", "4"])
    assert code == 0
    summary = json.loads((tmp_path / "qs" / "summary.json").read_text())
    table = summary["dictionaries"]
    assert summary["tokens"] == 1500 and set(table) == {"topk", "matryoshka", "mp", "snmf"}
    assert table["topk"]["l0"] == pytest.approx(4.0) and table["mp"]["l0"] <= 4.0
    for name in ("topk", "matryoshka", "mp", "snmf"):
        assert 0 <= table[name]["fvu"] < 1, name
    assert saes.load(tmp_path / "qs" / "topk").metadata["hook_name"] == "blocks.1.hook_resid_post"
    assert saes.SNMFResult.load(tmp_path / "qs" / "snmf").config["hook_name"] == "blocks.1.mlp.hook_post"
    assert "dashboard" not in summary and "steering" not in summary  # world-only steps
    out = capsys.readouterr().out
    assert "matryoshka" in out and "snmf" in out  # one comparison table


@pytest.mark.skipif(not default_model_path().exists(), reason="the default world model is not built")
def test_quickstart_on_the_world_finds_topic_latents_writes_a_dashboard_and_steers(tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["quickstart", "--out", str(out), "--tokens", "12000", "--d-sae", "256", "--k", "8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    topk = summary["dictionaries"]["topk"]
    assert len(topk["topic_aurocs"]) == 8 and max(topk["topic_aurocs"]) > 0.75
    html = (out / "dashboard.html").read_text()
    assert "<script" in html and not re.search(r"<script[^>]*src=[\"']https?:", html)  # works offline
    steer = summary["steering"]
    assert steer["kl"] == pytest.approx(1.0, rel=0.1) and steer["before"] != steer["after"]
