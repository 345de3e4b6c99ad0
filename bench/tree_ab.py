"""End-to-end wall time of SAE training and of a harvest in two source trees, side by side.

For checking that a change to the drivers (the training runner, the token source) adds no
overhead: run it with the tree before and the tree after (e.g. a ``git worktree`` of the old
commit); each tree runs in its own child process, alternately, and the best of ``--rounds``
is kept. Prints JSON with the tokens/s of each tree and their ratio (after / before).

    git worktree add /tmp/before <commit>
    python bench/tree_ab.py /tmp/before . --threads 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[2]))
import saes, interp
from interp.world import World

def train_tokens_per_s():
    torch.manual_seed(0)
    x = torch.randn(4096 * 24, 512)
    sae = saes.TopKSAE(512, 8192, k=32)
    t0 = time.perf_counter()
    saes.train(sae, x, saes.TrainConfig(batch_size=4096, total_tokens=len(x), lr=1e-3), progress=False)
    return len(x) / (time.perf_counter() - t0)

def harvest_tokens_per_s():
    model = interp.load("world")
    texts = [" ".join(d.tokens[1:-1]) for d in World().iter_docs(600, seed=1)]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        store = interp.harvest(model, texts, ["blocks.1.hook_resid_post"], out + "/s", max_tokens=30_000,
                               context_length=64, progress=False)
        return len(store) / (time.perf_counter() - t0)

print(json.dumps({"train": train_tokens_per_s(), "harvest": harvest_tokens_per_s()}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="source tree before the change")
    p.add_argument("after", help="source tree after the change")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for _ in range(args.rounds):
        for side in ("before", "after"):
            out = subprocess.run([sys.executable, "-c", CHILD, getattr(args, side), str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            for key, value in json.loads(out.strip().splitlines()[-1]).items():
                best[side][key] = max(best[side].get(key, 0.0), value)
    ratios = {key: best["after"][key] / best["before"][key] for key in best["before"]}
    print(json.dumps({"tokens_per_s": best, "after_over_before": ratios, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
