"""SAELens's ActivationsStore against a bare TransformerLens forward pass; print JSON.

Runs in a separate virtual environment that has ``sae-lens`` (never a dependency of this
project); ``bench/harvest.py --saelens-python VENV/bin/python`` calls it with its own sizes.
The figure is a ratio measured in one process: activation rows made per second by
``ActivationsStore`` (tokenised dataset in, shuffled training batches out, in memory) over
tokens per second of ``HookedTransformer.forward(stop_at_layer=...)`` on the same windows.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab", type=int, default=2003)
    p.add_argument("--speed-tokens", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
                                  d_head=args.d_model // args.n_heads, d_mlp=4 * args.d_model,
                                  n_ctx=args.context_length, d_vocab=args.vocab, act_fn="gelu_new",
                                  normalization_type="LN", device="cpu")
    model = HookedTransformer(cfg).eval()
    windows = args.speed_tokens // args.context_length
    total_windows = windows * (args.repeats + 2)
    tokens = torch.randint(3, args.vocab, (total_windows, args.context_length))
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})
    hook = f"blocks.{args.layer}.hook_resid_post"

    def store() -> ActivationsStore:
        return ActivationsStore(
            model=model, dataset=dataset, streaming=False, hook_name=hook, hook_head_index=None,
            context_size=args.context_length, d_in=args.d_model, n_batches_in_buffer=64,
            total_training_tokens=total_windows * args.context_length,
            store_batch_size_prompts=args.batch_size, train_batch_size_tokens=4096, prepend_bos=False,
            normalize_activations="none", device=torch.device("cpu"), dtype="float32",
            disable_concat_sequences=True)

    @torch.no_grad()
    def bare(offset: int) -> float:
        t = time.perf_counter()
        for i in range(offset, offset + windows, args.batch_size):
            model(tokens[i: i + args.batch_size], stop_at_layer=args.layer + 1)
        return time.perf_counter() - t

    def via_store() -> tuple[float, int]:
        """Seconds and LM rows the store computed while delivering shuffled batches. Its mixing
        buffer computes ahead of what it delivers, so rows are counted where they are made."""
        s = store()
        made = [0]
        raw = s.get_raw_llm_batch

        def counted(*a, **k):
            acts, ids = raw(*a, **k)
            made[0] += len(acts)
            return acts, ids

        s.get_raw_llm_batch = counted
        t = time.perf_counter()
        while made[0] < windows * args.context_length:
            s.next_batch()
        return time.perf_counter() - t, made[0]

    bare(0)  # warm-up
    bare_times, store_times = [], []
    for r in range(args.repeats):  # alternated, fastest kept: the machine may be shared
        bare_times.append(bare(0))
        seconds, rows = via_store()
        store_times.append(seconds * windows * args.context_length / rows)
    t_bare, t_store = min(bare_times), min(store_times)
    tokens_run = windows * args.context_length
    print(json.dumps({
        "saelens_activations_store": {
            "hook": hook, "tokens_per_run": tokens_run,
            "bare_tl_tokens_per_s": tokens_run / t_bare, "store_rows_per_s": tokens_run / t_store,
            "ratio": t_bare / t_store, "bare_s": bare_times, "store_s": store_times,
            "note": "rows computed by ActivationsStore while serving next_batch (in memory, nothing written) "
                    "over HookedTransformer forward with stop_at_layer, same windows and batch",
        }
    }))


if __name__ == "__main__":
    main()
