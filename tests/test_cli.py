"""The `interp` command line: every command documents an example; steer, patch, quickstart run."""
from __future__ import annotations

import argparse
import itertools
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

    tables = {name: parser.get_default(TABLE_DEST) for name, parser in _parsers().items()}
    return {name: table for name, table in tables.items() if table}


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
    ]
    for argv, expected in cases:
        code = main(argv)
        err = capsys.readouterr().err
        if expected is None:
            assert code == 0, err
            continue
        assert code == 1 and expected in err, (argv, err)
        assert not names_python_argument(err), err
    with pytest.raises(SystemExit):  # checked when the command line is read
        main(["harvest", "--model", str(tiny_gpt2_dir), "--hook", "blocks.0.hook_resid_post", "--data", str(tmp_path),
              "--tokens", "0", "--out", str(tmp_path / "s"), "--no-progress"])
    assert "--tokens: must be positive" in capsys.readouterr().err


def test_steer_message_names_the_hook_flag(tiny_gpt2_dir, tmp_path, capsys):
    saes.TopKSAE(32, 64, k=4).save(tmp_path / "sae")  # records no hook
    code = main(["steer", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--latent", "1",
                 "--scale", "2", "--prompt", "the"])
    err = capsys.readouterr().err
    assert code == 1 and "pass --hook" in err and not names_python_argument(err)
    with pytest.raises(SystemExit):  # checked when the command line is read, not by the library
        main(["steer", "--sae", str(tmp_path / "sae"), "--latent", "1", "--target-kl", "-1", "--prompt", "the"])
    assert "--target-kl: must be positive" in capsys.readouterr().err


# ------------------------------------------------------------------ help, errors and warnings


def _parsers():
    """Every command's parser by its name (``world train`` for a subcommand)."""
    found = {}

    def walk(name: str, parser) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}".strip(), sub)

    walk("", build_parser())
    return found


def test_every_command_has_a_description_and_every_option_says_what_it_does():
    for name, parser in _parsers().items():
        assert parser.description, f"interp {name} has no description"
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"interp {name} {action.option_strings[0]} has no help text"


def _error_line(err: str) -> str:
    """The one ``error:`` line of stderr (progress bars aside), with no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_a_device_the_machine_lacks_is_one_error_line(tiny_gpt2_dir, tmp_path, capsys):
    from interp.world.corpus import write_corpus

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{n}" if n else "cuda"  # a device this machine does not have
    data = write_corpus(tmp_path / "w.jsonl", 4)
    sae = saes.TopKSAE(32, 64, k=4)
    sae.metadata.update(hook_name="blocks.0.hook_resid_post")
    sae.save(tmp_path / "sae")
    model = str(tiny_gpt2_dir)
    for argv in (["hooks", "--model", model],
                 ["harvest", "--model", model, "--hook", "blocks.0.hook_resid_post", "--data", str(data),
                  "--out", str(tmp_path / "store")],
                 ["eval-sae", "--sae", str(tmp_path / "sae"), "--model", model, "--data", str(data)],
                 ["train", "--model", model, "--hook", "blocks.0.hook_resid_post", "--data", str(data),
                  "--d-sae", "64", "--k", "4", "--tokens", "64", "--out", str(tmp_path / "t")]):
        code = main(argv + ["--device", device])
        line = _error_line(capsys.readouterr().err)
        assert code == 1 and f"--device {device}" in line and "use --device cpu" in line or "pick one" in line, line
    assert not (tmp_path / "store").exists()  # refused before anything was written
    assert main(["hooks", "--model", model, "--device", "gpu"]) == 1
    assert "--device gpu is not a device name" in _error_line(capsys.readouterr().err)


def test_steer_refuses_a_latent_or_an_sae_that_does_not_fit(tiny_gpt2_dir, tmp_path, capsys):
    model = str(tiny_gpt2_dir)
    good = saes.TopKSAE(32, 64, k=4)
    good.metadata.update(hook_name="blocks.0.hook_resid_post", model_name=model)
    good.save(tmp_path / "good")
    wide = saes.TopKSAE(48, 64, k=4)  # another model's width
    wide.metadata.update(hook_name="blocks.0.hook_resid_post")
    wide.save(tmp_path / "wide")
    other = saes.TopKSAE(32, 64, k=4)  # same width, another model
    other.metadata.update(hook_name="blocks.0.hook_resid_post", model_name="some-other-model")
    other.save(tmp_path / "other")
    steer = ["steer", "--model", model, "--scale", "4", "--prompt", "the cat", "--max-new-tokens", "2"]
    cases = [
        (["--sae", str(tmp_path / "good"), "--latent", "9999"], ["--latent 9999", "64 latents", "0 to 63"]),
        (["--sae", str(tmp_path / "wide"), "--latent", "1"], ["width [48]", "carries [32]", "--model"]),
        (["--sae", str(tmp_path / "other"), "--latent", "1"], ["'some-other-model'", "--allow-mismatch"]),
        (["--sae", str(tmp_path / "good"), "--latent", "1", "--hook", "blocks.1.hook_resid_post"],
         ["trained on blocks.0.hook_resid_post, not blocks.1", "--allow-mismatch"]),
    ]
    for extra, expected in cases:
        code = main(steer + extra)
        line = _error_line(capsys.readouterr().err)
        assert code == 1 and all(e in line for e in expected), (extra, line)
        assert line.count("(see README.md") == 1, line
    assert main(steer + ["--sae", str(tmp_path / "other"), "--latent", "1", "--allow-mismatch"]) == 0
    assert "unsteered" in capsys.readouterr().out
    from interp.interventions.steering import Steering

    Steering.from_sae(wide, 1).save(tmp_path / "vec")
    assert main(steer + ["--vector", str(tmp_path / "vec.safetensors")]) == 1
    assert "the vector in" in _error_line(capsys.readouterr().err)


def test_eval_sae_refuses_an_sae_recorded_for_another_model_or_hook(tiny_gpt2_dir, tmp_path, capsys):
    from interp.evaluation.splice import origin_mismatches
    from interp.model.loading import load

    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(SENTENCES * 20))
    torch.manual_seed(0)
    sae = saes.TopKSAE(32, 64, k=4)
    sae.metadata.update(hook_name="blocks.0.hook_resid_post", model_name="gpt2")  # another model, same width
    sae.save(tmp_path / "sae")
    run = ["eval-sae", "--sae", str(tmp_path / "sae"), "--model", str(tiny_gpt2_dir), "--data", str(data),
           "--tokens", "100", "--json"]
    assert main(run) == 1
    line = _error_line(capsys.readouterr().err)
    assert "trained on model 'gpt2'" in line and "--allow-mismatch" in line
    assert main(run + ["--allow-mismatch"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tokens"] >= 100
    assert "warning: the SAE was trained on model 'gpt2'" in captured.err  # still said, once allowed
    # The same directory under another spelling of its path is the same model.
    model = load(tiny_gpt2_dir, device="cpu")
    sae.metadata.update(model_name=str(tiny_gpt2_dir / ".." / tiny_gpt2_dir.name))
    assert origin_mismatches(model, sae, "blocks.0.hook_resid_post") == []
    assert origin_mismatches(model, sae, "blocks.1.hook_resid_post") == [
        "the SAE was trained on blocks.0.hook_resid_post, not blocks.1.hook_resid_post"]


def test_a_rewrapped_error_names_its_readme_section_once(tmp_path, capsys):
    from interp.errors import InterpError
    from store_util import write_store

    wrapped = InterpError(str(saes.ConfigError("batch_size=1: use at least 2")))
    assert str(wrapped).count("(see README.md") == 1 and str(wrapped).endswith('"Sparse autoencoders (`saes`)")')
    store = write_store(tmp_path / "store", torch.randn(256, 8), shard_rows=128)
    assert main(["train", "--store", str(store), "--d-sae", "16", "--k", "2", "--tokens", "128", "--batch-size",
                 "1", "--out", str(tmp_path / "a"), "--no-progress"]) == 1
    line = _error_line(capsys.readouterr().err)
    assert "--batch-size 1: use at least 2" in line and line.count("(see README.md") == 1


def test_hand_written_flags_are_checked_when_the_command_line_is_read(capsys):
    for argv, flag in ((["quickstart", "--tokens", "0"], "--tokens"),
                       (["eval-sae", "--sae", "s", "--model", "m", "--data", "d", "--tokens", "0"], "--tokens"),
                       (["steer", "--sae", "s", "--latent", "1", "--prompt", "p", "--positions", "end"],
                        "--positions")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"argument {flag}:" in err and not names_python_argument(err), err


def test_quickstart_messages_name_its_flags(capsys):
    code = main(["quickstart", "--d-sae", "8", "--k", "16"])  # refused before the harvest
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and "--k 16 must be below --d-sae 8" in line and not names_python_argument(line), line


def test_a_hub_name_offline_fails_at_once_suggesting_hf_download(monkeypatch, capsys):
    import time

    from interp.model import loading

    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=3.0: "no connection to huggingface.co")
    started = time.perf_counter()
    code = main(["hooks", "--model", "some-org/some-model-that-is-not-cached"])
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and time.perf_counter() - started < 10  # the hub client's retries take 35 s
    assert "cannot be reached (no connection to huggingface.co)" in line
    assert "`hf download some-org/some-model-that-is-not-cached --local-dir DIR`" in line
    assert "huggingface-cli" not in line
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading._hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_world_train_never_overwrites_the_shipped_model_unasked(monkeypatch, capsys):
    import interp.world.train as world_train

    monkeypatch.setattr(world_train, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(SystemExit) as exit_:
        main(["world", "train", "--steps", "5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--out" in err and "--overwrite-default" in err
    help_text = _parsers()["world train"].format_help()
    assert "about 40 minutes on 2 CPU cores" in help_text and "--overwrite-default" in help_text


def test_unknown_tokens_warn_once_with_the_share_and_the_fix(tiny_gpt2_dir, tmp_path, capsys):
    english = tmp_path / "english.txt"
    english.write_text("\n".join(["The quick brown fox jumps over the lazy dog.",
                                  "It was the best of times, it was the worst of times."] * 30))
    argv = ["harvest", "--model", str(tiny_gpt2_dir), "--hook", "blocks.0.hook_resid_post", "--no-progress"]
    assert main(argv + ["--data", str(english), "--out", str(tmp_path / "en")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    # Whitespace-split words: 7 of 9 and 7 of 12 are outside the tiny vocabulary, 14/21 = 67%.
    assert len(warned) == 1 and "67% of the first 630 tokens" in warned[0], warned
    assert "'<unk>'" in warned[0] and "model's language" in warned[0]
    ok = tmp_path / "ok.txt"
    ok.write_text("\n".join(SENTENCES * 30))
    assert main(argv + ["--data", str(ok), "--out", str(tmp_path / "ok")]) == 0
    assert "warning:" not in capsys.readouterr().err


@pytest.mark.skipif(not default_model_path().exists(), reason="the default world model is not built")
def test_world_corpus_round_trips_through_harvest(tmp_path, capsys):
    """`interp world corpus` JSONL spells out <bos>/<eos>; harvesting it packs exactly the
    windows of its plain text, with one BOS and one EOS per document, never two."""
    from interp.activations.store import ActivationStore
    from interp.activations.tokens import TokenSource
    from interp.model.loading import load

    assert main(["world", "corpus", "--n", "40", "--seed", "3", "--out", str(tmp_path / "w.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert records[0]["text"].startswith("<bos> ")  # the record's text keeps its labelled tokens
    model = load("world", device="cpu")
    plain = [" ".join(r["tokens"][1:-1]) for r in records]
    jsonl_windows = torch.cat([b.tokens for b in TokenSource(str(tmp_path / "w.jsonl"), context_length=64)
                               .batches(model, 8)])
    plain_windows = torch.cat([b.tokens for b in TokenSource(plain, context_length=64).batches(model, 8)])
    assert torch.equal(jsonl_windows, plain_windows)
    bos, eos = model.bos_token_id, model.eos_token_id
    flat = jsonl_windows[:, 1:].flatten().tolist()  # position 0 is each window's own BOS
    assert bos not in flat and not any(a == b == eos for a, b in itertools.pairwise(flat))
    assert flat.count(eos) >= len(records) - 1  # one per document (the last may be cut off)
    assert main(["harvest", "--model", "world", "--hook", "blocks.0.hook_resid_post", "--data",
                 str(tmp_path / "w.jsonl"), "--context-length", "64", "--out", str(tmp_path / "store"),
                 "--no-progress"]) == 0
    store = ActivationStore.open(tmp_path / "store")
    assert torch.equal(store.tokens_for(0).tokens, plain_windows[0])
