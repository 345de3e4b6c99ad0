"""`interp world train | eval | corpus`: regenerate, check and export the planted world."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from interp.cli.options import (
    add_config_options,
    changed_fields,
    config_values,
    positive,
    seed,
)
from interp.errors import InterpError
from interp.world.config import WorldConfig
from interp.world.evaluate import EvalConfig
from interp.world.train import TrainConfig as WorldTrainConfig

TRAIN_EPILOG = """examples:
  interp world train --out runs/world-model        # about 40 minutes on 2 CPU cores
  interp world train --steps 20 --out runs/smoke   # a quick smoke run (not a usable model)

Commands take the new model with --model runs/world-model; --model world stays the shipped
one unless you retrain that on purpose with --overwrite-default instead of --out.
"""
EVAL_EPILOG = """examples:
  interp world eval                                  # the shipped default model, about a minute
  interp world eval --quick --json report.json       # smaller samples; the report as JSON too

--model DIR evaluates a model written by `interp world train --out DIR`. The exit status is
0 when every bar is passed, 1 otherwise.
"""
# `interp world eval --quick`: smaller samples; flags given with it still apply.
QUICK_EVAL = {"heldout_docs": 100, "qa_items": 200, "topic_prompts": 2, "ablation_docs": 64}
# Upper bounds far beyond any real use, so that a slip (10**26) is refused, not run for ever.
MAX_STEPS = 10_000_000
MAX_THREADS = 4096
MAX_DOCS = 100_000_000
_COUNT = {"positive": True, "maximum": MAX_DOCS}
EVAL_RANGES = {"heldout_docs": _COUNT, "qa_items": _COUNT, "topic_prompts": _COUNT, "samples_per_prompt": _COUNT,
               "max_new_tokens": {"positive": True, "maximum": 100_000}, "batch_size": _COUNT,
               "ablation_docs": {"minimum": 0, "maximum": MAX_DOCS}}
CORPUS_EPILOG = """example:
  interp world corpus --n 1000 --seed 0 --out world.jsonl
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``world`` command and its subcommands to the ``interp`` parser."""
    world = subparsers.add_parser(
        "world", help="the planted-ground-truth world and its default model",
        description="The planted world: a seeded language with labelled topics, sentiment, a category "
                    "hierarchy, memorised and composed (multi-hop) facts and PK/CK question items; and the small "
                    "model trained on it.",
        epilog="examples:\n  interp world eval --quick\n  interp world corpus --n 100 --out world.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = world.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    world.set_defaults(func=lambda args: (world.print_help(), 2)[1])

    p = sub.add_parser("train", help="train the default model (deterministic recipe)",
                       description="Train the default model from its seed with the shipped recipe.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", default=None, help="model directory to write")
    target.add_argument("--overwrite-default", action="store_true",
                        help="write over the shipped default model in the package (what --model world loads)")
    # Checked here, before the 40-minute run: the recipe's module takes any value it is given.
    add_config_options(p, WorldTrainConfig, ["steps", "seed", "threads"], keep_unset=True, overrides={
        "steps": {"positive": True, "maximum": MAX_STEPS}, "threads": {"positive": True, "maximum": MAX_THREADS}})
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a model on its world",
                       description="Held-out loss vs the generator's exact entropy, fact recall by hop count, "
                                   "PK/CK instruction following, topic consistency, and the CE rise when each "
                                   "attention and MLP block is mean-ablated, against the bars.",
                       epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model directory, or world for the shipped default model (default: world)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--quick", action="store_true",
                   help=f"smaller samples (seconds instead of a minute): {_settings(QUICK_EVAL)}")
    add_config_options(p, EvalConfig, keep_unset=True, overrides=EVAL_RANGES)
    p.set_defaults(func=_eval)

    p = sub.add_parser("corpus", help="write labelled documents as JSONL",
                       description="Sample documents with every planted label and write one JSON object per line.",
                       epilog=CORPUS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=positive(int, MAX_DOCS), default=1000, help="number of documents (default: 1000)")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed (default: 0)")
    add_config_options(p, WorldConfig, ["seed"], prefix="world")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=_corpus)


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _train(args: argparse.Namespace) -> int:
    from interp.world import default_model_path
    from interp.world.train import train

    cfg = replace(WorldTrainConfig(), **changed_fields(WorldTrainConfig, args))
    out = Path(args.out) if args.out else default_model_path()  # --overwrite-default, asked for by name
    _check_writable(out)  # now, not when the model is saved 40 minutes later
    _, summary = train(cfg, out=out, log=lambda line: print(line, flush=True))  # a long run: show progress
    print(f"trained in {summary['train_seconds']:.0f}s wall, {summary['cpu_seconds']:.0f}s CPU; wrote {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from interp.world import default_model_path
    from interp.world.evaluate import evaluate, format_report
    from saes.formats.durable import atomic_write_text

    from interp.model.loading import DEFAULT_MODEL_ALIASES

    # "world" names the shipped model here too, as --model world does in every other command.
    path = Path(args.model) if args.model and args.model not in DEFAULT_MODEL_ALIASES else default_model_path()
    cfg = EvalConfig(**QUICK_EVAL) if args.quick else EvalConfig()
    cfg = replace(cfg, **changed_fields(EvalConfig, args))
    report = evaluate(_load_world_model(path), config=cfg)
    report["model"] = str(path)
    print(format_report(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}", file=sys.stderr)
    return 0 if report["pass"] else 1


def _check_writable(out: Path) -> None:
    """``out`` can become a model directory: not a file, under a directory this process may write."""
    import os

    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a directory for the model")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InterpError(f"--out {out}: cannot create it under {parent} ({'not a directory' if not parent.is_dir() else 'not writable'}); "
                          "choose another directory")


def _load_world_model(path: Path) -> object:
    """The model in ``path``, or one line saying why not (no directory, not a model, not of the world)."""
    from interp.world import World
    from interp.world.evaluate import load_model

    if not path.is_dir():
        raise InterpError(f"--model {path}: no model directory there; give a directory written by "
                          "`interp world train --out DIR`, or leave --model out for the shipped model")
    try:
        model = load_model(path)
    except (OSError, ValueError) as err:
        raise InterpError(f"--model {path}: not a model directory this command can read ({err})") from None
    vocab = len(World().vocab)
    if getattr(model.config, "vocab_size", 0) < vocab:
        raise InterpError(f"--model {path}: its vocabulary has {model.config.vocab_size} tokens, the world's "
                          f"{vocab}; `interp world eval` evaluates models trained on the world")
    return model


def _corpus(args: argparse.Namespace) -> int:
    from interp.world.corpus import write_corpus
    from interp.world.generator import World

    world = World(WorldConfig(**config_values(WorldConfig, args, prefix="world")))
    path = write_corpus(args.out, args.n, seed=args.seed, world=world)
    print(f"wrote {args.n} documents to {path}")
    return 0
