"""The `interp` command line: every command documents an example; steer, patch, quickstart run."""
from __future__ import annotations

import argparse
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


# --------------------------------------------------------------- generated options, flag messages


def _tables() -> dict[str, dict]:
    """Every command's table of flags by the Python name each sets."""
    from interp.cli.options import TABLE_DEST

    found: dict[str, dict] = {}

    def walk(name: str, parser) -> None:
        table = parser.get_default(TABLE_DEST)
        if table:
            found[name] = table
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}".strip(), sub)

    walk("", build_parser())
    return found


def names_python_argument(message: str) -> list[str]:
    """The Python names (of any command's table) that ``message`` still uses: ``name=``, or a
    bare ``name`` where it holds an underscore. Python code in the message does not count."""
    from interp.cli.options import _CALL

    text = _CALL.sub("", message)
    names = {n for table in _tables().values() for n in table}
    return sorted(n for n in names if re.search(rf"(?<![\w.\-/]){re.escape(n)}=", text)
                  or ("_" in n and re.search(rf"(?<![\w.\-/]){re.escape(n)}\b(?![.\-/])", text)))


def test_options_come_from_the_config_dataclasses():
    """A generated flag's default, type and choices are the dataclass field's."""
    import dataclasses

    from saes.training.config import TrainConfig

    train = _tables()["train"]
    parser = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("cli", True):
            assert f.name not in train
            continue
        action = actions[f.name]
        assert train[f.name].flag in action.option_strings
        assert action.help and not names_python_argument(action.help), f.name
        if f.name == "total_tokens":
            assert action.required
        elif f.name == "checkpoint_every":  # the command always has --out, so it checkpoints as it goes
            assert TrainConfig().checkpoint_every is None and action.default == f.metadata["cli_default"] == 1000
        else:
            assert action.default == f.default, f.name
        if "choices" in f.metadata:
            assert list(action.choices) == list(f.metadata["choices"])
    assert train["auxk"].flag == "--no-auxk" and train["auxk"].negated


def test_every_command_help_names_flags_not_python_arguments():
    parser = build_parser()
    for name, table in _tables().items():
        sub = parser
        for word in name.split():
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        assert not names_python_argument(sub.format_help()), name


def test_messages_name_flags_while_the_library_names_arguments(tiny_gpt2_dir, tmp_path, capsys):
    import saes as saes_

    from store_util import write_store

    with pytest.raises(saes_.ConfigError, match=r"batch_size=1"):  # Python users see Python names
        saes_.TrainConfig(batch_size=1)
    store = write_store(tmp_path / "store", torch.randn(512, 8), shard_rows=128)
    train = ["train", "--store", str(store), "--d-sae", "16", "--k", "2", "--tokens", "128", "--no-progress",
             "--batch-size", "64"]
    cases = [
        (train + ["--batch-size", "1", "--out", str(tmp_path / "a")], "--batch-size 1: use at least 2"),
        (train + ["--log-every", "0", "--out", str(tmp_path / "a")], "--log-every 0 must be at least 1"),
        (train + ["--device", "gpu", "--out", str(tmp_path / "a")], "--device gpu is not a device name"),
        (train + ["--out", str(tmp_path / "b")], None),
        (train + ["--out", str(tmp_path / "b")], "pass --resume to continue it"),
        (train + ["--batch-size", "4096", "--out", str(tmp_path / "a")], "fewer than --batch-size 4096"),
        (train + ["--arch", "matryoshka", "--groups", "4,4", "--out", str(tmp_path / "c")], "but --d-sae 16"),
        (["harvest", "--model", str(tiny_gpt2_dir), "--hook", "blocks.0.hook_resid_post", "--data", str(tmp_path),
          "--tokens", "0", "--out", str(tmp_path / "s"), "--no-progress"], "--tokens must be positive"),
    ]
    for argv, expected in cases:
        code = main(argv)
        err = capsys.readouterr().err
        if expected is None:
            assert code == 0, err
            continue
        assert code == 1 and expected in err, (argv, err)
        assert not names_python_argument(err), err


def test_steer_message_names_the_hook_flag(tiny_gpt2_dir, tmp_path, capsys):
    saes.TopKSAE(32, 64, k=4).save(tmp_path / "sae")  # records no hook
    code = main(["steer", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--latent", "1",
                 "--scale", "2", "--prompt", "the"])
    err = capsys.readouterr().err
    assert code == 1 and "pass --hook" in err and not names_python_argument(err)
    with pytest.raises(SystemExit):  # checked when the command line is read, not by the library
        main(["steer", "--sae", str(tmp_path / "sae"), "--latent", "1", "--target-kl", "-1", "--prompt", "the"])
    assert "--target-kl: must be positive" in capsys.readouterr().err
