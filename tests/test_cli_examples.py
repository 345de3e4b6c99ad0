"""Every example in every command's ``--help`` runs as printed, after one `interp quickstart`.

The examples are read from the parsers' epilogs, so a changed example is tested as it now
reads. They run in a scratch directory holding what they name: the quickstart's output in
``runs/quickstart`` (made once, small, by the module fixture) and two text files of world
documents, ``corpus.txt`` and ``heldout.txt``. Examples that name GPT-2 download it and are
skipped (the tests never download); the full world-model recipe (40 minutes) is skipped
too. Long-running examples (a full quickstart, steer-eval, pkck, world eval and train) are
marked slow: ``pytest -m slow tests/test_cli_examples.py`` runs them. Every example, skipped
or slow ones included, must at least parse.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex

import pytest

from interp.cli import build_parser, main
from interp.world import default_model_path

needs_world = pytest.mark.skipif(not default_model_path().exists(), reason="the default world model is not built")

# Commands whose examples take minutes on a laptop CPU.
# `interp circuit` reads the transcoders its own examples name, which the (slow) `interp
# transcoders` example trains, so it runs with them.
SLOW = ("quickstart", "steer-eval", "pkck", "world eval", "world train", "eval-saes", "transcoders", "circuit")
# `interp world eval` reports the bars: exit status 1 when one is missed (its help says so).
EXIT_CODES = {"world eval": (0, 1)}


def _commands(name: str = "", parser=None):
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for sub_name, sub in action.choices.items():
                yield from _commands(f"{name} {sub_name}".strip(), sub)


def help_examples() -> list[list[str]]:
    """Every ``interp ...`` command line in every epilog, as argv without ``interp``, in the
    order ``interp --help`` lists the commands; ``a && b`` gives both; duplicates once."""
    found: list[list[str]] = []
    for _, parser in _commands():
        text = re.sub(r"\\\n\s*", " ", parser.epilog or "")  # join continued lines
        for line in text.splitlines():
            if not line.strip().startswith("interp "):
                continue
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)[1:]
                if argv not in found:
                    found.append(argv)
    return found


def _command(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] == "world" else argv[0]


def _param(argv: list[str]):
    marks = []
    if any("gpt2" in a for a in argv):
        marks.append(pytest.mark.skip(reason="downloads GPT-2; the tests never download"))
    elif argv == ["world", "train", "--out", "runs/world-model"]:
        marks.append(pytest.mark.skip(reason="the full recipe, about 40 minutes; the smoke example runs instead"))
    elif _command(argv) in SLOW:
        marks.append(pytest.mark.slow)
    return pytest.param(argv, marks=marks, id=" ".join(argv)[:90])


EXAMPLES = help_examples()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory as a new user's would be after `interp quickstart` (small sizes), with a
    corpus and a held-out file of world text."""
    from interp.cli.quickstart import world_texts

    work = tmp_path_factory.mktemp("examples")
    (work / "corpus.txt").write_text("\n".join(world_texts(600, seed=11)) + "\n")
    (work / "heldout.txt").write_text("\n".join(world_texts(300, seed=12)) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        code = main(["quickstart", "--out", "runs/quickstart", "--tokens", "8000", "--d-sae", "64", "--k", "4",
                     "--epochs", "1", "--snmf-tokens", "1000", "--snmf-iters", "5"])
    assert code == 0
    return work


def test_the_examples_cover_every_command():
    """Each command shows at least one example that runs here (not only GPT-2 ones)."""
    runnable = {_command(a) for a in EXAMPLES if not any("gpt2" in x for x in a)}
    commands = {name for name, parser in _commands() if name and not any(
        hasattr(a, "choices") and isinstance(a.choices, dict) for a in parser._actions)}
    assert commands <= runnable, commands - runnable


def test_every_help_example_parses():
    """Slow, skipped and GPT-2 examples included: each is a valid command line."""
    parser = build_parser()
    for argv in EXAMPLES:
        args = parser.parse_args(argv)  # argparse exits on an unknown flag or a bad value
        assert callable(args.func), argv


@needs_world
@pytest.mark.parametrize("argv", [_param(a) for a in EXAMPLES])
def test_help_example_runs(argv, workdir, monkeypatch, tmp_path):
    # A quickstart example writes its own runs/quickstart: the fixture's, made with other
    # settings, would be refused (a store is only ever resumed with the settings it was made with).
    monkeypatch.chdir(tmp_path if argv[0] == "quickstart" else workdir)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse refused the example itself
            code = exit_.code
    allowed = EXIT_CODES.get(_command(argv), (0,))
    assert code in allowed, f"interp {shlex.join(argv)} -> {code}\n{err.getvalue()[-3000:]}"
    assert "Traceback" not in err.getvalue()
