"""Where does the default model compose its facts? Activation patching over layer x position.

For each chain of the world (direct, neighbor, capital, capital_neighbor) it draws pairs of
prompts that differ only in the written name (a land, or the city in "whose capital is")
and have different answers, runs the corrupted prompt, and patches the clean residual
stream (``blocks.L.hook_resid_pre``, and the final ``resid_post``) in at one layer and one
position. The score is the share of the clean-minus-corrupted logit difference restored
(1: that one state carries everything that differs; 0: nothing). It prints one JSON object:
per chain, the score at the written name and at the final ``is`` for every layer, and the
full grid with the prompt's words.

    python bench/world_where.py --pairs 48 --out bench/world_where.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys

import torch

import interp
from interp.interventions.patching import activation_patching, logit_diff
from interp.world import World
from interp.world.facts import CHAINS


def pairs_for(world: World, chain: str, n: int, seed: int) -> tuple[list[list[str]], list[list[str]], list[str],
                                                                     list[str]]:
    """``n`` (clean, corrupted) prompts of one chain: same relation, other name, other answer."""
    rng = random.Random(f"where-{chain}-{seed}")
    hops = {"direct": 1, "neighbor": 2, "capital": 2, "capital_neighbor": 3}[chain]
    by_relation: dict[str, list] = {}
    for c in world.facts.chains(hops):
        if c.chain == chain:
            by_relation.setdefault(c.relation, []).append(c)
    clean, corrupted, good, bad = [], [], [], []
    relations = sorted(by_relation)
    while len(clean) < n:
        options = by_relation[rng.choice(relations)]
        a, b = rng.sample(options, 2)
        if a.value == b.value:
            continue
        clean.append(["<bos>"] + a.words())
        corrupted.append(["<bos>"] + b.words())
        good.append(a.value)
        bad.append(b.value)
    return clean, corrupted, good, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="world")
    parser.add_argument("--pairs", type=int, default=48, help="prompt pairs per chain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = interp.load(args.model, device="cpu")
    world = World()
    index = {w: i for i, w in enumerate(world.vocab)}
    report: dict = {"model": args.model, "pairs": args.pairs, "hook": "blocks.L.hook_resid_pre", "chains": {}}
    for chain in CHAINS:
        clean_w, corrupt_w, good, bad = pairs_for(world, chain, args.pairs, args.seed)
        clean = torch.tensor([[index[w] for w in p] for p in clean_w])
        corrupted = torch.tensor([[index[w] for w in p] for p in corrupt_w])
        metric = logit_diff(torch.tensor([index[w] for w in good]), torch.tensor([index[w] for w in bad]))
        result = activation_patching(model, clean, corrupted, metric)
        words = clean_w[0]
        anchor = len(words) - 2                      # the written name sits before the final "is"
        last = len(words) - 1
        report["chains"][chain] = {
            "prompt": " ".join(["<bos>", "the", "REL"] + words[3:anchor] + ["NAME", "is"]),
            "clean_logit_diff": result.clean, "corrupted_logit_diff": result.corrupted,
            "at_name_by_layer": [round(float(v), 3) for v in result.scores[:, anchor]],
            "at_last_by_layer": [round(float(v), 3) for v in result.scores[:, last]],
            "grid": [[round(float(v), 3) for v in row] for row in result.scores],
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
