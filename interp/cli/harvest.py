"""`interp hooks` and `interp harvest`: list hook points, fill an activation store.

:func:`register` adds both subcommands to the `interp` command's argparse subparsers; each
handler takes the parsed ``args`` and returns an exit status.
"""
from __future__ import annotations

import argparse
from typing import Any

from interp.activations.harvest import HarvestConfig
from interp.activations.store import DTYPES
from interp.activations.tokens import TokenSource
from interp.cli.options import (
    DATA_FLAGS, DATA_RANGES, MAX_TOKENS, MAX_WINDOWS, add_config_options, add_device_option, add_model_option,
    also_names, check_context, config_values, positive,
)

HOOKS_EPILOG = """examples:
  interp hooks --model world --filter resid_post
  interp hooks --model gpt2                      # any supported HF model (downloaded once)
"""

HARVEST_EPILOG = """examples:
  interp harvest --model world --hook blocks.2.hook_resid_post --data corpus.txt --tokens 10000 \\
      --out runs/world-l2
  interp harvest --model gpt2 --hook blocks.6.hook_resid_post --hook blocks.6.hook_mlp_out \\
      --data corpus.txt --tokens 2000000 --out runs/gpt2-l6 --context-length 128 --dtype bfloat16

  --data is a .txt file (one document per line) or a .jsonl file (a "text" field, or the
  field named by --text-field), in the model's language: text that is mostly the tokenizer's
  unknown token is harvested with a warning (English through the world model). Re-running the same command after an interruption resumes
  after the last complete shard. Read the result with
      interp.activations.store.ActivationStore.open("runs/gpt2-l6", hook="blocks.6.hook_resid_post")
"""


def register(subparsers: Any) -> None:
    """Add the ``hooks`` and ``harvest`` subcommands to ``subparsers``."""
    p = subparsers.add_parser(
        "hooks",
        help="list a model's hook names with their per-token shapes",
        description="List every hook name of a model with its per-token shape.",
        epilog=HOOKS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(p, required=True)
    p.add_argument("--filter", default=None, help="only hooks whose name contains this text")
    add_device_option(p)
    p.set_defaults(func=run_hooks)

    h = subparsers.add_parser(
        "harvest",
        help="run a model over text and store hook activations on disk",
        description="Stream a dataset through a model and write hook activations to a sharded "
        "safetensors store with a JSON manifest.",
        epilog=HARVEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_option(h, required=True)
    h.add_argument("--hook", action="append", required=True, dest="hooks", metavar="HOOK",
                   help="hook name to store; repeat for several hooks from the same forward pass")
    h.add_argument("--tokens", type=positive(int, MAX_TOKENS), default=None,
                   help="number of token rows to store (default: all data)")
    h.add_argument("--out", required=True, help="store directory (created; resumed if it holds this harvest)")
    add_config_options(h, HarvestConfig, ["batch_size", "dtype"], overrides={
        "batch_size": {"help": "windows per forward pass", "positive": True, "maximum": MAX_WINDOWS},
        "dtype": {"help": "dtype of the stored activations", "choices": list(DTYPES)}})
    add_device_option(h)
    add_config_options(h, HarvestConfig, ["shard_tokens"], overrides={
        "shard_tokens": {"help": "rows per shard", "default_text": "about 256 MiB", "positive": True,
                         "maximum": MAX_TOKENS}})
    add_config_options(h, TokenSource, DATA_FLAGS, required=["data"],
                       overrides={"exclude_bos": {"off_help": "also store position 0 (BOS) of every window"},
                                  **DATA_RANGES})
    also_names(h, {"max_tokens": "--tokens", "hooks": "--hook", "hook": "--hook", "batch_size": "--batch-size",
                   "shard_tokens": "--shard-tokens", "dtype": "--dtype"})
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    h.set_defaults(func=run_harvest)


def run_hooks(args: argparse.Namespace) -> int:
    from interp.model.loading import load

    model = load(args.model, device=args.device)
    names = [n for n in model.hook_names() if args.filter is None or args.filter in n]
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {tuple(model.hook_shape(name))}")
    return 0


def run_harvest(args: argparse.Namespace) -> int:
    from interp.activations.harvest import harvest
    from interp.model.loading import load

    model = load(args.model, device=args.device)
    model.check_hooks(args.hooks)  # fail on a typo before anything is written
    source = TokenSource(**config_values(TokenSource, args))
    check_context(model, source.context_length)
    store = harvest(model, source, args.hooks, args.out, max_tokens=args.tokens, batch_size=args.batch_size,
                    dtype=args.dtype, shard_tokens=args.shard_tokens, progress=not args.no_progress)
    m = store.manifest
    size = sum(s.bytes for s in m.shards)
    print(
        f"stored {m.n_tokens} tokens x {len(m.hooks)} hook(s) from {m.n_sequences} windows of "
        f"{m.context_length} in {len(m.shards)} shard(s), {size / 2**20:.1f} MiB, at {store.directory}"
    )
    for hk in m.hooks:
        print(f"  {hk.name}  shape {hk.shape}  d={hk.d}  {m.dtype}")
    return 0
