"""Generation tokens/s with steering against without, in the same run. Prints JSON.

The steered run adds one vector at one hook on every position (prompt and generated), the
costliest position spec; both runs use the same generation loop, KV cache and prompts, so
the ratio isolates the steering hook's overhead. Target: overhead at most 10%.

    python bench/steer.py                            # the shipped world model
    python bench/steer.py --model gpt2 --new-tokens 64
    python bench/steer.py --random-gpt2 1024,24,16 --device cuda --batch 32   # GPT-2-medium shape
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import interp
from interp.interventions.steering import Steering


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def timed(fn, repeats: int, model=None) -> float:
    best = float("inf")
    for _ in range(repeats):
        if model is not None:
            _sync(model)
        start = time.perf_counter()
        fn()
        if model is not None:
            _sync(model)
        best = min(best, time.perf_counter() - start)
    return best


def measure(model, batch: int, new_tokens: int, repeats: int, prompt: str = "the") -> dict:
    """Plain and steered generation of ``batch`` prompts, alternated, best of ``repeats`` each."""
    hook = f"blocks.{model.n_layers // 2}.hook_resid_post"
    spec = Steering.from_direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), hook, 4.0)
    prompts = [prompt] * batch
    plain = lambda: model.generate(prompts, max_new_tokens=new_tokens)
    steered = lambda: model.generate(prompts, max_new_tokens=new_tokens, steering=[spec])
    plain(), steered()  # warm-up
    # Alternate the two so machine load hits both alike; keep each one's best time.
    t_plain, t_steered = float("inf"), float("inf")
    for _ in range(repeats):
        t_plain = min(t_plain, timed(plain, 1, model))
        t_steered = min(t_steered, timed(steered, 1, model))
    tokens = batch * new_tokens
    return {
        "model": model.name, "hook": hook, "batch": batch, "new_tokens": new_tokens, "device": str(model.device),
        "plain_tokens_per_s": tokens / t_plain, "steered_tokens_per_s": tokens / t_steered,
        "overhead": t_steered / t_plain - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="world")
    parser.add_argument("--random-gpt2", metavar="D,LAYERS,HEADS",
                        help="instead of --model: a randomly initialised GPT-2 of this shape (bench/harvest.py's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompt = "the"
    if args.random_gpt2:
        from harvest import (  # bench/ is the script's own directory
            VOCAB_WORDS,
            build_model,
        )

        d, layers, heads = (int(v) for v in args.random_gpt2.split(","))
        model = build_model(argparse.Namespace(d_model=d, n_layers=layers, n_heads=heads, context_length=1024,
                                               device=args.device, model_dtype=args.model_dtype))
        prompt = " ".join(VOCAB_WORDS[:8])
    else:
        model = interp.load(args.model, device=args.device)
    out = measure(model, args.batch, args.new_tokens, args.repeats, prompt)
    print(json.dumps({**out, "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
