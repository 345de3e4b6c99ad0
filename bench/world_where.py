"""Where does the default model do its planted work? Patching per chain, and probes per layer.

For each chain of the world (direct, neighbor, capital, capital_neighbor) it draws pairs of
prompts that differ only in the written name (a land, or the city in "whose capital is")
and have different answers, runs the corrupted prompt, and patches the clean residual
stream (``blocks.L.hook_resid_pre``, and the final ``resid_post``) in at one layer and one
position. The score is the share of the clean-minus-corrupted logit difference restored
(1: that one state carries everything that differs; 0: nothing). It prints one JSON object:
per chain, the score at the written name and at the final ``is`` for every layer, and the
full grid with the prompt's words.

Then linear probes (held out by document, or by relation for the bridges) at the embedding
and after every block: the topic on every token of topical documents, the sentence's
sentiment at its full stop, a member's parent category at the member, and the unwritten
bridge land at the final ``is`` of two-hop prompts (one probe per chain).

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
from interp.world.facts import CHAIN_HOPS, CHAINS


def pairs_for(world: World, chain: str, n: int, seed: int) -> tuple[list[list[str]], list[list[str]], list[str],
                                                                     list[str]]:
    """``n`` (clean, corrupted) prompts of one chain: same relation, other name, other answer."""
    rng = random.Random(f"where-{chain}-{seed}")
    hops = CHAIN_HOPS[chain]
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


def land_transfer(model, world: World, hooks: list[str]) -> dict:
    """Is the unwritten bridge represented like a written land? A probe learns to read the
    land at the final ``is`` of one-hop prompts ("the REL of ENT is", held out by relation);
    read on two-hop prompts it names either the written name's land or the bridge. The
    bridge is a fixed function of the written name, so a probe trained on two-hop states
    could learn that mapping without the model computing anything; this one never sees them."""
    import probes

    index = {w: i for i, w in enumerate(world.vocab)}
    lands = world.facts.entities

    def states(items) -> dict[str, torch.Tensor]:
        tokens = torch.tensor([[index[w] for w in ["<bos>"] + c.words()] for c in items])
        keep = torch.zeros_like(tokens, dtype=torch.bool)
        keep[:, -1] = True
        return probes.sweep.collect(model, tokens, hooks, keep)

    direct = [c for c in world.facts.chains(1)]
    x_direct = states(direct)
    labels = torch.tensor([lands.index(c.anchor) for c in direct])
    groups = torch.tensor([world.facts.relations.index(c.relation) for c in direct])
    two_hop = {chain: [c for c in world.facts.chains(2) if c.chain == chain] for chain in ("neighbor", "capital")}
    x_two = {chain: states(items) for chain, items in two_hop.items()}
    out: dict = {}
    for hook in hooks:
        probe = probes.LinearProbe(test_fraction=0.2)
        row = {"one_hop_written_land": round(probe.fit(x_direct[hook], labels, groups).accuracy, 3)}
        for chain, items in two_hop.items():
            pred = probe.logits(x_two[chain][hook]).argmax(-1)
            row[f"{chain}_reads_bridge"] = round(float((pred == torch.tensor(
                [lands.index(c.target) for c in items])).float().mean()), 3)
            if chain == "neighbor":
                row[f"{chain}_reads_written_land"] = round(float((pred == torch.tensor(
                    [lands.index(c.anchor) for c in items])).float().mean()), 3)
        out[hook] = row
    return out


def probe_by_layer(model, world: World) -> dict:
    """Held-out probe accuracy per hook for each planted variable."""
    import probes
    from interp.world import labelled_batch
    from interp.world.labels import WORD_CLASSES
    from interp.world.lexicon import HIERARCHY_PARENT, MEMBER_PARENT

    hooks = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
    out: dict = {}

    def run(name: str, tokens: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
        acts = probes.sweep.collect(model, tokens, hooks, keep, attention_mask=topical.attention_mask)
        results = probes.probe_hooks(acts, labels, groups)
        out[name] = {h: round(r.accuracy, 3) for h, r in results.items()}

    docs = torch.arange(400)[:, None]
    topical = labelled_batch(200, seed=11, world=world, kind="topical")
    keep = topical.labels["topic"] >= 0
    run("topic (every token)", topical.tokens, keep, topical.labels["topic"][keep],
        docs[:200].expand_as(keep)[keep])
    dot = topical.tokens == world.vocab.index(".")
    keep = (topical.labels["sentiment"] >= 0) & dot
    run("sentiment (at the full stop)", topical.tokens, keep, topical.labels["sentiment"][keep],
        docs[:200].expand_as(keep)[keep])
    member = topical.labels["word_class"] == WORD_CLASSES.index("member")
    categories = list(HIERARCHY_PARENT)
    parent = torch.tensor([categories.index(MEMBER_PARENT[world.vocab[t]]) if m else -1
                           for t, m in zip(topical.tokens.flatten().tolist(), member.flatten().tolist())])
    run("parent category (at a member)", topical.tokens, member, parent[member.flatten()],
        docs[:200].expand_as(member)[member])
    out["land read at the final 'is'"] = land_transfer(model, world, hooks)
    return out


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
    report["probes"] = probe_by_layer(model, world)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
