"""`interp pkck`: the rank-2 parametric/context knowledge subspace, end to end on the world model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from interp.errors import InterpError

EPILOG = """examples:
  interp pkck --model world --out runs/pkck
  interp pkck --model world --layer 3 --items 400 --ranks 1,2 --max-new-tokens 6 --out runs/pkck-l3

writes OUT/report.json (figures per rank), OUT/shares.html (PK share by generated step and
interaction type), OUT/ranks.html (rank 1 beside rank 2) and OUT/subspace_rank{R}.safetensors.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("pkck", help="train and read the rank-2 PK/CK knowledge subspace (world model)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="a model trained on the synthetic world (default: world)")
    p.add_argument("--layer", type=int, default=None, help="residual stream layer (default: the middle one, rounding down)")
    p.add_argument("--hook", default=None, help="any hook instead of --layer, e.g. blocks.2.hook_resid_post")
    p.add_argument("--items", type=int, default=240, help="QA items, each rendered three ways")
    p.add_argument("--ranks", default="1,2", help="comma-separated ranks to train (1 and/or 2)")
    p.add_argument("--steps", type=int, default=150, help="interchange training steps per rank")
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--max-new-tokens", type=int, default=4, help="answer steps read after the prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/pkck")
    p.set_defaults(func=run)


def _ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise InterpError(f"--ranks {text!r}: give comma-separated integers, e.g. --ranks 1,2") from None
    if not ranks or any(r not in (1, 2) for r in ranks):
        raise InterpError(f"--ranks {text!r}: the subspace has rank 1 or 2 (PK and CK axes)")
    return ranks


def run(args: argparse.Namespace) -> int:
    from probes.pkck import answer_all, compare_ranks, rank_figure, shares_figure
    from saes.formats.durable import atomic_write_text

    from interp.model.loading import load
    from interp.world import pkck_batch, pkck_items

    ranks = _ranks(args.ranks)
    if args.items < 10:
        raise InterpError(f"--items {args.items}: use at least 10 so each interaction type has members")
    model = load(args.model)
    if "answer" not in model.tokenizer.get_vocab():
        raise InterpError(f"{args.model!r} does not speak the synthetic world's language; "
                          "`interp pkck` needs a world model (--model world). On other models use "
                          "probes.pkck.answer_all / compare_ranks with your own renderings (README: PK/CK).")
    layer = (model.n_layers - 1) // 2 if args.layer is None else args.layer
    hook = args.hook or f"blocks.{layer}.hook_resid_post"
    model.check_hooks([hook])

    items = pkck_items(args.items, seed=args.seed)
    batch = pkck_batch(items)
    data = answer_all(model, batch["tokens"], batch["last_pos"], batch["answers"], [it.item_type for it in items])
    print(f"{args.items} items, answered as expected in all three renderings: {float(data.correct.float().mean()):.3f}")
    comparison = compare_ranks(model, data, hook, ranks=ranks, steps=args.steps, lr=args.lr,
                               max_new_tokens=args.max_new_tokens, seed=args.seed)
    summary = comparison.summary()
    summary.update(model=args.model, items=args.items, correct_fraction=float(data.correct.float().mean()))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r, space in comparison.spaces.items():
        space.save(out / f"subspace_rank{r}.safetensors")
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    best = max(ranks)
    atomic_write_text(out / "shares.html", shares_figure(comparison.by_type[best], hook,
                                                         title=f"PK share by step, rank {best}").to_html(include_plotlyjs=True))
    atomic_write_text(out / "ranks.html", rank_figure(comparison).to_html(include_plotlyjs=True))

    print(f"read at {hook}; items by interaction type: {summary['interaction_counts']}")
    print(f"{'rank':>4}  {'trained on':>10}  {'interchange acc':>15}  {'separation':>10}  supportive/conflicting AUROC by step")
    for r in ranks:
        s = summary["ranks"][str(r)]
        steps = " ".join(f"{a:.2f}" for a in s["separation_auroc_by_step"])
        print(f"{r:>4}  {s['n_train']:>10}  {s['interchange_accuracy']:>15.3f}  {s['separation_strength']:>10.2f}  {steps}")
    print(f"mean PK share at the answer position (rank {best}): "
          + ", ".join(f"{t} {v[0]:.2f}" for t, v in comparison.by_type[best].items()))
    print(f"wrote {out}/report.json, shares.html, ranks.html, subspace_rank*.safetensors")
    return 0
