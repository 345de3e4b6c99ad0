"""Generation tokens/s with steering against without, in the same run. Prints JSON.

The steered run adds one vector at one hook on every position (prompt and generated), the
costliest position spec; both runs use the same generation loop, KV cache and prompts, so
the ratio isolates the steering hook's overhead. Target: overhead at most 10%.

    python bench/steer.py                            # the shipped world model
    python bench/steer.py --model gpt2 --new-tokens 64
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import interp
from interp.interventions.steering import Steering


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = interp.load(args.model)
    hook = f"blocks.{model.n_layers // 2}.hook_resid_post"
    spec = Steering.from_direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), hook, 4.0)
    prompts = ["the"] * args.batch
    plain = lambda: model.generate(prompts, max_new_tokens=args.new_tokens)  # noqa: E731
    steered = lambda: model.generate(prompts, max_new_tokens=args.new_tokens, steering=[spec])  # noqa: E731
    plain(), steered()  # warm-up
    # Alternate the two so machine load hits both alike; keep each one's best time.
    t_plain, t_steered = float("inf"), float("inf")
    for _ in range(args.repeats):
        t_plain = min(t_plain, timed(plain, 1))
        t_steered = min(t_steered, timed(steered, 1))
    tokens = args.batch * args.new_tokens
    print(json.dumps({
        "model": model.name, "hook": hook, "batch": args.batch, "new_tokens": args.new_tokens,
        "threads": args.threads, "device": str(model.device),
        "plain_tokens_per_s": tokens / t_plain, "steered_tokens_per_s": tokens / t_steered,
        "overhead": t_steered / t_plain - 1,
    }, indent=2))


if __name__ == "__main__":
    main()
