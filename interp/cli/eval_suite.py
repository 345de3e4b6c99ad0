"""`interp eval-saes`: the SAE evaluation suite (SAEBench's metric families) on the world's planted truth."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interp.cli.options import add_device_option, add_model_option, also_names, positive
from interp.errors import InterpError

EPILOG = """examples:
  interp eval-saes runs/quickstart/topk runs/quickstart/matryoshka --model world \\
      --suite core,absorption --out runs/eval-saes
  interp eval-saes runs/quickstart/topk --model world --suite scr,tpp,ravel --topical-docs 512 --out runs/eval-scr

families (--suite, comma-separated; default all):
  core            FVU / explained variance, MSE, L0, densities, CE-loss recovered and KL
  sparse_probing  k-sparse probes on latents against probes on the activations (topic, sentiment, ...)
  label_interp    share of live latents a planted label explains (AUROC >= 0.9)
  absorption      parent latents silent on child tokens of the world's hierarchy (bird -> sparrow)
  scr             spurious correlation removal: a probe biased by topic/sentiment, latents ablated
  tpp             targeted probe perturbation: one topic's latents ablated, its probe against the others
  ravel           swap one fact attribute's latents between lands: cause and isolation scores

writes OUT/<family>/<sae>_eval_results.json (SAEBench's result layout and field names),
OUT/comparison.json and OUT/comparison.md (the table printed here: each figure with its 95%
bootstrap interval) and OUT/figures.html (accuracy against k, absorption by concept, SCR/TPP
against ablated latents, scores against L0). All SAEs must read the same hook.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval-saes", help="SAEBench's metric families on one or more SAEs (world model)",
                              description="Evaluate SAEs of one hook with SAEBench's metric families, measured "
                                          "against the synthetic world's planted labels, facts and hierarchy.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("saes", nargs="+", metavar="SAE_DIR",
                   help="SAE directories (ours, SAELens, sparsify, Gemma Scope, dictionary_learning)")
    add_model_option(p, default="world", help="the model the SAEs read (default: world, the shipped model)")
    p.add_argument("--hook", default=None, help="hook the SAEs read (default: the hook their cfg.json records)")
    p.add_argument("--suite", default="all", help="families to run, comma-separated (default: all; see below)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--docs", type=positive(int), default=256,
                   help="world documents of the general set (core, sparse_probing, label_interp; default 256)")
    p.add_argument("--topical-docs", type=positive(int), default=1024,
                   help="topical documents (absorption, scr, tpp; default 1024)")
    p.add_argument("--ravel-pairs", type=positive(int), default=256,
                   help="RAVEL cause pairs per attribute (as many isolation pairs; default 256)")
    p.add_argument("--n-values", default="2,5,10,20,50",
                   help="SCR / TPP: numbers of latents ablated, comma-separated (default 2,5,10,20,50)")
    p.add_argument("--n-boot", type=positive(int), default=1000, help="bootstrap resamples per interval (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="world sampling seed (default 1: text the model never saw)")
    p.add_argument("--no-figures", action="store_true", help="skip figures.html")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="evaluate SAEs whose cfg.json records another model or hook (the same model under "
                        "another name, or a deliberate transfer test)")
    add_device_option(p)
    also_names(p, {"n_docs": "--docs", "n_topical_docs": "--topical-docs", "num_pairs_per_attribute": "--ravel-pairs",
                   "n_values": "--n-values", "n_boot": "--n-boot", "hook": "--hook", "families": "--suite",
                   "allow_mismatch": "--allow-mismatch"})
    p.set_defaults(func=run)


def _n_values(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise InterpError(f"--n-values {text!r}: give comma-separated integers, e.g. --n-values 2,5,10,20") from None
    if not values or values[0] < 1:
        raise InterpError(f"--n-values {text!r}: give latent counts of at least 1, e.g. --n-values 2,5,10,20")
    return values


def run(args: argparse.Namespace) -> int:
    from interp.evaluation.ravel import RavelConfig
    from interp.evaluation.scr_tpp import ScrTppConfig
    from interp.evaluation.suite import SuiteConfig, parse_families, run_suite
    from interp.model.loading import load

    families = parse_families(args.suite)
    config = SuiteConfig(n_docs=args.docs, n_topical_docs=args.topical_docs, seed=args.seed, n_boot=args.n_boot,
                         scr_tpp=ScrTppConfig(n_values=_n_values(args.n_values)),
                         ravel=RavelConfig(num_pairs_per_attribute=args.ravel_pairs))
    config.check()
    missing = [d for d in args.saes if not Path(d).exists()]
    if missing:
        raise InterpError(f"SAE directory {missing[0]!r} does not exist; pass directories saved by interp train "
                          "(or SAELens / sparsify / Gemma Scope ones)")
    model = load(args.model, device=args.device)
    result = run_suite(list(args.saes), model, args.hook, families, out=args.out, config=config,
                       figures=not args.no_figures, log=print, allow_mismatch=args.allow_mismatch)
    print()
    print(result.table())
    print(f"\n{len(result.files)} files under {args.out}")
    return 0
