"""`interp quickstart`: the main job, end to end on the shipped default model, offline.

1. load the model (the world model by default, any supported HF model with ``--model``);
2. harvest activations of world text at two hooks (residual stream, MLP neurons) into a store;
3. train a TopK, a Matryoshka and a matching-pursuit SAE on the residual stream, in one
   sweep that reads each batch once, and fit an SNMF of the MLP activations;
4. evaluate all four in the model (FVU, L0, dead, CE-loss recovered, KL) and, on the world,
   their coverage of the planted topics; print one comparison table;
5. write a feature dashboard for the latents that best match the planted topics;
6. steer one generation with a topic latent, before and after.

Writes OUT/store (activations), OUT/topk, OUT/matryoshka, OUT/mp (SAEs), OUT/snmf,
OUT/summary.json and, on the world model, OUT/dashboard.html and OUT/steering.safetensors
(the calibrated topic vector, for `interp steer --vector`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError

# The quickstart generates its text in memory (about 20 tokens a document): a bound on
# --tokens keeps a slip from asking for billions of documents.
MAX_TOKENS = 100_000_000
MIN_ROWS = 64  # fewer token rows than this train nothing worth comparing

EPILOG = """example:
  interp quickstart                       # the world model, about a minute on a laptop CPU
  interp quickstart --out runs/qs --tokens 50000 --k 16
  interp quickstart --model gpt2 --data corpus.txt   # any supported HF model and your text
"""


def register(subparsers: Any) -> None:
    from interp.cli.options import MAX_LATENTS, also_names, bounded, positive, seed
    from saes.snmf import DEFAULT_MAX_TOKENS as SNMF_MAX_TOKENS

    p = subparsers.add_parser("quickstart", help="run the main job on the default model (offline)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="model name or path (default: the shipped world model)")
    p.add_argument("--data", default=None, help="text/JSONL file (default: freshly generated world text)")
    p.add_argument("--out", default="runs/quickstart", help="output directory (store, SAE, report)")
    p.add_argument("--tokens", type=bounded(int, MIN_ROWS, MAX_TOKENS), default=40_000,
                   help="tokens to harvest (default: 40,000)")
    p.add_argument("--layer", type=int, default=None, help="layer to study (default: the middle one)")
    p.add_argument("--d-sae", type=positive(int, MAX_LATENTS), default=512, help="latents of each SAE (default: 512)")
    p.add_argument("--k", type=positive(int, MAX_LATENTS), default=16, help="active latents per token (default: 16)")
    p.add_argument("--epochs", type=positive(int, 10_000), default=3,
                   help="SAE training passes over the store (default: 3)")
    p.add_argument("--snmf-rank", type=positive(int, 1 << 16), default=32, help="SNMF features (default: 32)")
    # The SNMF keeps the dense matrix in memory: its own cap on rows is the flag's.
    p.add_argument("--snmf-tokens", type=positive(int, SNMF_MAX_TOKENS), default=8000,
                   help="MLP rows the SNMF is fit on (default: 8000)")
    p.add_argument("--snmf-iters", type=positive(int, 1_000_000), default=60, help="SNMF iterations (default: 60)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the text, the SAEs and the SNMF (default: 0)")
    also_names(p, {"max_tokens": "--tokens", "d_sae": "--d-sae", "k": "--k", "rank": "--snmf-rank",
                   "max_iter": "--snmf-iters", "layer": "--layer"})
    p.set_defaults(func=run)


def _say(step: str, message: str) -> None:
    print(f"[{step}] {message}", flush=True)


def world_texts(n_docs: int, seed: int) -> list[str]:
    """Plain text of world documents (the packer adds BOS/EOS itself)."""
    from interp.world import World

    return [" ".join(doc.tokens[1:-1]) for doc in World().iter_docs(n_docs, seed=seed)]


def run(args: argparse.Namespace) -> int:
    from interp.activations.harvest import harvest
    from interp.model.loading import load
    from saes.formats.durable import atomic_write_text

    if args.k >= args.d_sae:  # the SAEs would refuse it, but only after the harvest
        raise InterpError(f"--k {args.k} must be below --d-sae {args.d_sae}: otherwise every latent fires on "
                          "every token; lower --k or widen --d-sae")
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    model = load(args.model)
    layer = args.layer if args.layer is not None else model.n_layers // 2
    if not 0 <= layer < model.n_layers:
        raise InterpError(f"--layer {layer}: {model.name} has layers 0 to {model.n_layers - 1}")
    resid, mlp = f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"
    model.check_hooks([resid, mlp])
    # Built now, before the harvest: an SAE too large for memory is refused in a second.
    sae_models = _build_saes(math.prod(model.hook_shape(resid)), args)
    d_mlp = math.prod(model.hook_shape(mlp))
    if args.snmf_rank > min(d_mlp, args.snmf_tokens):
        raise InterpError(f"--snmf-rank {args.snmf_rank} is more than the SNMF can fit: at most the MLP width "
                          f"({d_mlp}) and --snmf-tokens ({args.snmf_tokens})")
    _say("model", f"{model.name}: {model.n_layers} layers, d_model {model.d_model}, "
                  f"{len(model.hook_names())} hook points; studying layer {layer}")
    on_world = args.model in ("world", "default") and args.data is None

    data = args.data or world_texts(n_docs=max(200, args.tokens // 20), seed=args.seed + 1)
    t = time.perf_counter()
    store = harvest(model, data, hooks=[resid, mlp], out=out / "store", max_tokens=args.tokens,
                    context_length=min(128, getattr(model.model.config, "n_positions", 128)), batch_size=32)
    seconds = time.perf_counter() - t
    if len(store) < MIN_ROWS:
        raise InterpError(f"the harvest gave {len(store)} token rows, too few to train SAEs on; give --tokens "
                          f"{MIN_ROWS} or more (and --data with at least that much text)")
    mlp_store = store.select(mlp)
    _say("harvest", f"{len(store):,} tokens x {{{resid}: {store.d}, {mlp}: {mlp_store.d}}} -> {out / 'store'} "
                    f"({store.n_shards} shard(s), {len(store) / max(seconds, 1e-9):,.0f} tokens/s)")

    dictionaries = _train_saes(sae_models, store, resid, args, out)
    dictionaries["snmf"] = _fit_snmf(mlp_store, mlp, args, out)

    eval_tokens = torch.stack([store.tokens_for(i).tokens for i in range(0, len(store), len(store) // 16 + 1)][:16])
    labels = _topic_labels(model, [resid, mlp]) if on_world else None
    table = {name: _evaluate(model, d, hook, eval_tokens, labels) for name, (d, hook) in dictionaries.items()}
    _print_table(table)

    summary: dict[str, Any] = {"model": model.name, "layer": layer, "tokens": len(store), "hooks": [resid, mlp],
                               "dictionaries": table}
    topk = dictionaries["topk"][0]
    if labels is not None:
        summary["dashboard"] = _dashboard(model, topk, store, table["topk"], labels, out)
        summary["steering"] = _steer_topic(model, topk, resid, table["topk"], out)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    _say("done", f"{summary['seconds']}s; summary in {out / 'summary.json'}")
    return 0


def _build_saes(d: int, args: argparse.Namespace) -> dict:
    """TopK, Matryoshka and MP SAEs of the same width and L0 on ``d``-wide activations."""
    import saes

    n, k = args.d_sae, args.k
    groups = [n // 8, n // 8, n // 4, n - n // 8 - n // 8 - n // 4]
    if min(groups) < 1:
        raise saes.ConfigError(f"--d-sae {n}: the Matryoshka SAE splits it into 4 nested groups; use at least 8")
    return {"topk": saes.TopKSAE(d, n, k=k), "matryoshka": saes.MatryoshkaSAE(d, group_sizes=groups, k=k),
            "mp": saes.MPSAE(d, n, k=k)}


def _train_saes(models: dict, store: Any, hook: str, args: argparse.Namespace, out: Path) -> dict:
    """The three SAEs of :func:`_build_saes`, trained in one sweep that reads each batch once."""
    import saes

    t = time.perf_counter()
    n, k = args.d_sae, args.k
    # 512 rows a step; a store smaller than that (short --data or --tokens) trains on what it has.
    config = saes.TrainConfig(batch_size=min(512, len(store)), total_tokens=args.epochs * len(store), lr=2e-3,
                              seed=args.seed)
    saes.train(list(models.values()), store, config, progress=True)
    for name, sae in models.items():  # each records the store's hook and model (saes.train)
        sae.save(out / name)
    _say("train", f"TopK, Matryoshka and MP SAEs, d_sae={n} k={k}, one sweep over {config.total_tokens:,} tokens "
                  f"in {time.perf_counter() - t:.0f}s -> {out}/{{topk,matryoshka,mp}}")
    return {name: (sae, hook) for name, sae in models.items()}


def _fit_snmf(store: Any, hook: str, args: argparse.Namespace, out: Path) -> tuple[Any, str]:
    import saes

    t = time.perf_counter()
    rows = min(len(store), args.snmf_tokens)
    if args.snmf_rank > rows:
        raise InterpError(f"--snmf-rank {args.snmf_rank} is more than the {rows} token rows harvested; lower it or "
                          "give more --tokens")
    A = store[:rows].float()  # reads only the shards holding those rows
    result = saes.SNMF(rank=args.snmf_rank, sparsity=0.05, max_iter=args.snmf_iters, seed=args.seed).fit(A)
    result.config.update(hook_name=hook)
    result.save(out / "snmf")
    _say("snmf", f"rank {args.snmf_rank} on {rows:,} x {store.d} MLP activations in {time.perf_counter() - t:.0f}s "
                 f"-> {out / 'snmf'}")
    return result.as_dictionary(n_iter=30), hook


@torch.no_grad()
def _topic_labels(model: Any, hooks: list[str]) -> dict:
    """Content words of world documents (agents, objects, places, verbs, adjectives) with
    their document's topic, and the activations at ``hooks``. Function words and full stops
    are shared by every topic: only content words can show one."""
    from interp.world import labelled_batch
    from interp.world.labels import topic_words

    batch = labelled_batch(64, seed=7, kind="topical")
    topic = batch.labels["topic"]
    keep = (topic >= 0) & topic_words(batch.labels["word_class"])
    _, cache = model.run_with_cache(batch.tokens, names=hooks, return_logits=False,
                                    attention_mask=batch.attention_mask)
    topics = sorted(set(topic[keep].tolist()))
    return {"acts": {h: cache[h][keep].float() for h in hooks}, "topics": topics,
            "onehot": torch.stack([topic[keep] == t for t in topics], dim=1)}


def _evaluate(model: Any, dictionary: Any, hook: str, tokens: torch.Tensor, labels: dict | None) -> dict:
    """In-model figures of one dictionary, and its coverage of the planted topics."""
    from probes import coverage

    from interp.evaluation.splice import evaluate_sae

    row = {k: v for k, v in dataclasses.asdict(evaluate_sae(model, dictionary, hook, tokens)).items()
           if isinstance(v, float)}
    row["hook"] = hook
    if labels is not None:
        with torch.no_grad():
            report = coverage(dictionary.encode(labels["acts"][hook]), labels["onehot"])
        row["topic_coverage"] = float(report.coverage)
        row["topic_best_auroc_mean"] = float(report.best_auroc.mean())
        row["topic_latents"] = [int(i) for i in report.best_latent]
        row["topic_aurocs"] = [float(a) for a in report.best_auroc]
        row["topics"] = labels["topics"]
    return row


def _print_table(table: dict) -> None:
    columns = [("fvu", "FVU"), ("l0", "L0"), ("dead_fraction", "dead"), ("ce_loss_recovered", "CE rec."),
               ("kl_spliced", "KL"), ("topic_best_auroc_mean", "topic AUROC"), ("topic_coverage", "cov>0.9")]
    shown = [(k, h) for k, h in columns if all(k in row for row in table.values())]
    print(f"    {'dictionary':<11}{'hook':<28}" + "".join(f"{h:>12}" for _, h in shown))
    undefined = []
    for name, row in table.items():
        # CE-loss recovered is measured against zero-ablating the hook; where zeroing it does
        # not raise the loss, the ratio means nothing and is not shown.
        no_ratio = row["ce_zero_ablation"] <= row["ce_clean"]
        if no_ratio:
            undefined.append(f"{name} ({row['hook']}: zero-ablation CE {row['ce_zero_ablation']:.3f} "
                             f"<= clean {row['ce_clean']:.3f})")
        cells = ["n/a" if no_ratio and k == "ce_loss_recovered" else f"{row[k]:.3f}" for k, _ in shown]
        print(f"    {name:<11}{row['hook']:<28}" + "".join(f"{c:>12}" for c in cells))
    if undefined:
        print("    CE rec. n/a: zeroing the hook does not raise the loss for " + "; ".join(undefined))


def _dashboard(model: Any, sae: Any, store: Any, row: dict, labels: dict, out: Path) -> dict:
    """One HTML page with the latent that best matches each planted topic."""
    from interp.dashboards import build_dashboard
    from interp.world.lexicon import TOPICS

    t = time.perf_counter()
    latents = sorted(set(row["topic_latents"]))
    names = list(TOPICS)
    # Why each latent is on the page, in the words of the selection above (one latent may be
    # the best for several topics).
    why: dict[int, list[str]] = {}
    for topic, latent, auroc in zip(labels["topics"], row["topic_latents"], row["topic_aurocs"]):
        why.setdefault(latent, []).append(f"topic:{names[topic]} ({auroc:.2f})")
    reasons = {lat: f"chosen: best AUROC for {', '.join(why[lat])} among the content words of topical documents"
               for lat in latents}
    dash = build_dashboard(model, sae, store, latents=latents, n_examples=8, n_quantile_examples=4, reasons=reasons)
    dash.save_html(out / "dashboard.html")
    pairs = ", ".join(f"{names[t]}: {lat}" for t, lat in zip(labels["topics"], row["topic_latents"]))
    _say("dashboard", f"{len(latents)} latents ({pairs}) in {time.perf_counter() - t:.0f}s -> {out / 'dashboard.html'}")
    return {"path": str(out / "dashboard.html"), "latents": latents}


def _steer_topic(model: Any, sae: Any, hook: str, row: dict, out: Path) -> dict:
    """Steer a generation with the latent that best detects a planted topic."""
    from interp.interventions.steering import Steering, calibrate_scale
    from interp.world.lexicon import TOPICS

    best = max(range(len(row["topic_aurocs"])), key=lambda i: row["topic_aurocs"][i])
    latent = row["topic_latents"][best]
    name = list(TOPICS)[row["topics"][best]]
    spec, kl = calibrate_scale(model, Steering.from_sae(sae, latent, scale=4.0, hook=hook), ["the"], target_kl=1.0)
    prompt = "the"
    before = model.generate(prompt, max_new_tokens=16, seed=0).texts[0]
    after = model.generate(prompt, max_new_tokens=16, steering=[spec], seed=0).texts[0]
    spec.save(out / "steering.safetensors")  # replayed by `interp steer --vector`
    _say("steer", f"latent {latent} (topic {name!r}, AUROC {row['topic_aurocs'][best]:.3f}) at scale "
                  f"{spec.scale:.1f} (next-token KL {kl:.2f}) -> {out / 'steering.safetensors'}")
    print(f"    before: {prompt} {before}\n    after:  {prompt} {after}")
    return {"topic": name, "latent": latent, "scale": spec.scale, "kl": kl, "before": before, "after": after,
            "path": str(out / "steering.safetensors")}
