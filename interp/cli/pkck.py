"""`interp pkck`: the rank-2 parametric/context knowledge subspace, end to end on the world model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from interp.cli.options import MAX_NEW_TOKENS, bounded, positive, seed
from interp.errors import InterpError

MAX_ITEMS = 1_000_000

EPILOG = """examples:
  interp pkck --model world --out runs/pkck
  interp pkck --model world --layers all --ranks 1,2,3,4 --seeds 0,1,2 --out runs/pkck-sweep
  interp pkck --model world --layer 2 --items 400 --interchange column --max-new-tokens 6 --out runs/pkck-l2

Interchange accuracy is measured on held-out items (--holdout of the usable ones, a new
split per seed), on the rows where the source's answer differs from the base's, with a
random subspace of the same rank beside it; mean and 95% interval over --seeds. Ranks 1
and 2 are also read out over the model's answers at --layer.

writes OUT/report.json (the sweep and the read-outs), OUT/shares.html (PK share by
generated step and interaction type), OUT/ranks.html (rank 1 beside rank 2) and
OUT/subspace_rank{R}.safetensors.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("pkck", help="train and read the rank-2 PK/CK knowledge subspace (world model)",
                              description="Find the subspace that carries whether the world model answers from "
                                          "parametric knowledge (PK, memory) or from the context (CK): train it "
                                          "by interchange on QA items, measure held-out accuracy against a random "
                                          "subspace, and read the PK share out while the model answers.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="a model trained on the synthetic world (default: world)")
    p.add_argument("--layer", type=int, default=None, help="residual stream layer (default: n_layers // 2, the quickstart's)")
    p.add_argument("--hook", default=None,
                   help="a residual-stream hook instead of --layer, e.g. blocks.2.hook_resid_mid")
    p.add_argument("--items", type=bounded(int, 10, MAX_ITEMS), default=240,
                   help="QA items, each rendered three ways (at least 10, so each interaction type has members)")
    p.add_argument("--ranks", default="1,2", help="comma-separated ranks to train, 1 to 4 (1 and 2 are also read out)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers to sweep, or 'all' (default: --layer / --hook only)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: split and initialisation per run")
    p.add_argument("--holdout", type=bounded(float, 0, 1), default=0.3,
                   help="share of usable items held out for the accuracy")
    p.add_argument("--interchange", choices=("full", "column"), default="full",
                   help="full: swap the whole subspace (the reference's); column: PK to column 0, CK to column 1")
    p.add_argument("--steps", type=positive(int, 10_000_000), default=150, help="interchange training steps per rank")
    p.add_argument("--lr", type=positive(float), default=2e-2,
                   help="interchange training learning rate (default: 0.02)")
    p.add_argument("--max-new-tokens", type=positive(int, MAX_NEW_TOKENS), default=4,
                   help="answer steps read after the prompt")
    p.add_argument("--seed", type=seed, default=0, help="seed of the QA items and the read-outs (default: 0)")
    p.add_argument("--out", default="runs/pkck", help="output directory (default: runs/pkck)")
    p.set_defaults(func=run)


def _integers(flag: str, text: str, example: str, maximum: int = 2**32 - 1) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InterpError(f"{flag} {text!r}: give comma-separated integers, e.g. {flag} {example}") from None
    if not values:
        raise InterpError(f"{flag} {text!r}: give at least one value, e.g. {flag} {example}")
    if values[0] < 0 or values[-1] > maximum:
        raise InterpError(f"{flag} {text!r}: values run from 0 to {maximum}, e.g. {flag} {example}")
    if len(values) > 1000:
        raise InterpError(f"{flag} {text!r}: {len(values)} values is more than a sweep of 1000 runs; give fewer")
    return values


def _ranks(text: str) -> list[int]:
    ranks = _integers("--ranks", text, "1,2")
    if any(r not in (1, 2, 3, 4) for r in ranks):
        raise InterpError(f"--ranks {text!r}: ranks 1 to 4 are swept (1 and 2 are also read out as PK/CK shares)")
    return ranks


def run(args: argparse.Namespace) -> int:
    from interp.model.loading import load
    from probes.pkck import check_hook

    ranks = _ranks(args.ranks)
    seeds = _integers("--seeds", args.seeds, "0,1,2")
    if not 0 < args.holdout < 1:
        raise InterpError(f"--holdout {args.holdout}: give a share between 0 and 1, e.g. 0.3")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a directory for the report and figures")
    model = load(args.model)
    if "answer" not in model.tokenizer.get_vocab():
        raise InterpError(f"{args.model!r} does not speak the synthetic world's language; "
                          "`interp pkck` needs a world model (--model world). On other models use "
                          "probes.pkck.answer_all / compare_ranks with your own renderings (README: PK/CK).")
    layer = model.n_layers // 2 if args.layer is None else args.layer
    hook = args.hook or f"blocks.{layer}.hook_resid_post"
    if args.layers is None:
        sweep_hooks = [hook]
    else:
        layers = range(model.n_layers) if args.layers == "all" else _integers("--layers", args.layers, "1,2,3")
        sweep_hooks = [f"blocks.{i}.hook_resid_post" for i in layers]
    try:
        for h in [hook, *sweep_hooks]:
            check_hook(model, h)
    except ValueError as err:
        raise InterpError(f"--hook: {err}" if args.hook else str(err)) from None
    try:
        return _run(args, model, hook, sweep_hooks, ranks, seeds, out)
    except ValueError as err:  # too few items answered right to train or hold out: a message, not a traceback
        raise InterpError(f"{err} (--items {args.items}, --holdout {args.holdout})") from None


def _run(args: argparse.Namespace, model: Any, hook: str, sweep_hooks: list[str], ranks: list[int],
         seeds: list[int], out: Path) -> int:
    from interp.world import pkck_batch, pkck_items
    from probes.pkck import answer_all, compare_ranks, interchange_sweep, rank_figure, shares_figure
    from saes.formats.durable import atomic_write_text

    items = pkck_items(args.items, seed=args.seed)
    batch = pkck_batch(items)
    data = answer_all(model, batch["tokens"], batch["last_pos"], batch["answers"], [it.item_type for it in items])
    print(f"{args.items} items, answered as expected in all three renderings: {float(data.correct.float().mean()):.3f}")
    sweep = interchange_sweep(model, data, sweep_hooks, ranks=ranks, seeds=seeds, holdout=args.holdout,
                              interchange=args.interchange, steps=args.steps, lr=args.lr)
    read_ranks = [r for r in ranks if r <= 2]
    comparison = compare_ranks(model, data, hook, ranks=read_ranks, steps=args.steps, lr=args.lr,
                               max_new_tokens=args.max_new_tokens, seed=args.seed,
                               interchange=args.interchange) if read_ranks else None
    summary = comparison.summary() if comparison else {"hook": hook, "ranks": {}}
    summary.update(model=args.model, items=args.items, correct_fraction=float(data.correct.float().mean()),
                   sweep=sweep)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    _print_sweep(sweep)
    if comparison is None:
        print(f"wrote {out}/report.json")
        return 0
    for r, space in comparison.spaces.items():
        space.save(out / f"subspace_rank{r}.safetensors")
    best = max(read_ranks)
    atomic_write_text(out / "shares.html", shares_figure(comparison.by_type[best], hook,
                                                         title=f"PK share by step, rank {best}").to_html(include_plotlyjs=True))
    atomic_write_text(out / "ranks.html", rank_figure(comparison).to_html(include_plotlyjs=True))

    print(f"read at {hook}; items by interaction type: {summary['interaction_counts']}")
    print(f"{'rank':>4}  {'trained on':>10}  {'train acc':>15}  {'separation':>10}  supportive/conflicting AUROC by step")
    for r in read_ranks:
        s = summary["ranks"][str(r)]
        steps = " ".join(f"{a:.2f}" for a in s["separation_auroc_by_step"])
        print(f"{r:>4}  {s['n_train']:>10}  {s['interchange_accuracy']:>15.3f}  {s['separation_strength']:>10.2f}  {steps}")
    print(f"mean PK share at the answer position (rank {best}): "
          + ", ".join(f"{t} {v[0]:.2f}" for t, v in comparison.by_type[best].items()))
    print(f"wrote {out}/report.json, shares.html, ranks.html, subspace_rank*.safetensors")
    return 0


def _print_sweep(sweep: dict) -> None:
    """One row per hook and rank: held-out informative accuracy against a random subspace."""
    print(f"interchange ({sweep['interchange']}) on held-out informative rows, mean ± 95% t interval over seeds "
          f"{sweep['seeds']} ({sweep['n_usable_items']} usable items, {sweep['holdout']:.0%} held out)")
    print(f"  {'hook':28s} {'rank':>4}  {'accuracy':>15}  {'random subspace':>15}  {'no intervention, all rows':>25}")
    for hook, per_rank in sweep["hooks"].items():
        for rank, r in per_rank.items():
            a, c, b = r["accuracy"], r["random"], r["no_intervention_all_rows"]
            print(f"  {hook:28s} {rank:>4}  {_span(a):>15}  {_span(c):>15}  {b['mean']:25.3f}")


def _span(interval: dict) -> str:
    """``mean ± half-width`` of a t interval (half-width n/a with one seed)."""
    half = (interval["hi"] - interval["lo"]) / 2
    return f"{interval['mean']:.3f} ± {half:.3f}" if half == half else f"{interval['mean']:.3f}"
