"""Transcoders on the command line: `interp train --hook-out` (from a store holding both hooks,
or live) and `interp transcoders` (one per MLP, trained live together, each spliced in place
of its MLP and then all at once). `interp eval-sae` evaluates a transcoder as it is.

Output of `interp transcoders --out DIR`::

    DIR/layer_<L>/               each layer's transcoder (cfg.json + sae_weights.safetensors,
                                 SAELens's transcoder layout), with its checkpoint and log
    DIR/circuit-tracer/          the set in circuit-tracer's layout (ReLU / JumpReLU codes,
                                 e.g. --arch batchtopk), for attribution graphs
    DIR/results.json             per layer CE / KL recovered, FVU, L0; the replacement model
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from interp.activations.live import LiveConfig
from interp.activations.tokens import TokenSource
from interp.cli.options import (
    DATA_FLAGS,
    DATA_RANGES,
    MAX_BATCH,
    MAX_LATENTS,
    MAX_TOKENS,
    MAX_WINDOWS,
    TABLE_DEST,
    add_config_options,
    add_model_option,
    also_names,
    check_context,
    config_values,
    flag_name,
    positive,
    to_flags,
)
from interp.cli.train import ARCHS, FAMILY_FLAGS, add_family_options, build_sae, family_settings
from interp.errors import InterpError
from saes.architectures import registry
from saes.training.config import TrainConfig

# The families that train as transcoders (the others are refused with a reason by the trainer).
TRANSCODER_ARCHS = tuple(a for a in ARCHS if registry.for_cli(a).trains_as_transcoder())

EPILOG = """examples:
  interp transcoders --model world --data corpus.txt --arch batchtopk --d-sae 512 --k 16 \\
      --tokens 4096 --batch-size 512 --eval-tokens 1000 --out runs/world-transcoders
  interp transcoders --model world --layers 1,2 --skip --data corpus.txt --arch topk --d-sae 256 --k 8 \\
      --tokens 2048 --batch-size 256 --eval-tokens 500 --eval-data heldout.txt --out runs/world-skip-transcoders

  One forward pass per batch gives every layer's MLP input (ln2.hook_normalized, or
  hook_resid_mid where the model has no such hook) and output (hook_mlp_out), so all
  layers train together. Each transcoder is then spliced in place of its MLP alone (CE-loss
  and KL recovered against zeroing that MLP, FVU of its output, L0), and all at once (the
  replacement model's CE). --eval-data defaults to --data; use held-out text for honest
  figures. Re-run with --resume after an interruption; --eval-only evaluates DIR as it is.
"""

TRAIN_EXAMPLE = """
  # a transcoder: reads the MLP's input, reconstructs its output (live here; from a store,
  # harvest both hooks into one: interp harvest --hook IN --hook OUT); see interp transcoders
  interp train --model world --hook blocks.1.hook_resid_mid --hook-out blocks.1.hook_mlp_out \\
      --data corpus.txt --arch batchtopk --d-sae 256 --k 8 --tokens 4000 --batch-size 512 \\
      --out runs/world-l1-transcoder
"""


def register(subparsers: Any) -> None:
    """Add the ``transcoders`` subcommand, and ``--hook-out`` / ``--skip`` to ``interp train``
    (registered before this module: see ``interp.cli.COMMAND_MODULES``)."""
    _extend_train(subparsers.choices["train"])
    p = subparsers.add_parser(
        "transcoders", help="a transcoder per MLP, trained live together; each in place of its MLP and all at once",
        description="Train one transcoder per MLP of the model (live, all layers from one forward pass per batch), "
                    "then evaluate each in place of its MLP and the model with every MLP replaced.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p, default="world", help="the model (default: world, the shipped model)")
    p.add_argument("--layers", default="all", help="layers whose MLP to replace, comma-separated, or all (default)")
    p.add_argument("--arch", choices=TRANSCODER_ARCHS, default="batchtopk",
                   help="architecture (default batchtopk: a JumpReLU at inference, which circuit-tracer runs)")
    p.add_argument("--d-sae", type=positive(int, MAX_LATENTS), default=None,
                   help="latents per transcoder (needed unless --eval-only)")
    p.add_argument("--k", type=positive(int, MAX_LATENTS), default=None,
                   help="active latents per token; needed by topk, batchtopk and matryoshka, not taken by the "
                        "penalised families (l1, jumprelu, gated)")
    p.add_argument("--groups", default=None, help="matryoshka group sizes, comma-separated, summing to --d-sae")
    p.add_argument("--per-token-topk", action="store_true", help="matryoshka: per-token TopK codes")
    p.add_argument("--skip", action="store_true", help="skip-transcoders: add a linear skip path (Paulo et al. 2025)")
    add_family_options(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the checkpoints in --out")
    p.add_argument("--eval-only", action="store_true", help="evaluate the transcoders already in --out")
    p.add_argument("--eval-tokens", type=positive(int, MAX_TOKENS), default=20_000,
                   help="tokens to evaluate on (default 20000)")
    p.add_argument("--eval-data", default=None, help="text to evaluate on (default: --data)")
    add_config_options(p, TrainConfig, overrides={
        "total_tokens": {"maximum": MAX_TOKENS, "cli_default": None, "default_text": "needed unless --eval-only"},
        "batch_size": {"maximum": MAX_BATCH},
        "init_rows": {"maximum": MAX_BATCH}, "k_aux": {"maximum": MAX_LATENTS}})
    add_config_options(p, LiveConfig, ["model_batch_size", "buffer_tokens"], overrides={
        "model_batch_size": {"help": "windows per forward pass", "positive": True, "maximum": MAX_WINDOWS},
        "buffer_tokens": {"help": "shuffle buffer rows", "positive": True}})
    add_config_options(p, TokenSource, DATA_FLAGS, required=["data"], overrides={
        "data": {"help": ".txt (one document per line) or .jsonl file to train on"},
        "context_length": {"help": "tokens per window", **DATA_RANGES["context_length"]},
        "exclude_bos": {"off_help": "also train and evaluate on position 0 (BOS)"}})
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    also_names(p, {"d_sae": "--d-sae", "k": "--k", "group_sizes": "--groups", "checkpoint_dir": "--out",
                   "max_tokens": "--eval-tokens", **{n: flag_name(n) for n in FAMILY_FLAGS}})
    p.set_defaults(func=run_transcoders)


# --------------------------------------------------------------------------- interp train --hook-out


def _extend_train(train: argparse.ArgumentParser) -> None:
    """``--hook-out`` and ``--skip`` on `interp train`, which then trains transcoders."""
    train.add_argument("--hook-out", action="append", dest="hook_outs", metavar="HOOK", default=None,
                       help="train a transcoder that reads --hook and reconstructs HOOK (one --hook-out per --hook, in "
                            "order; e.g. --hook blocks.1.hook_resid_mid --hook-out blocks.1.hook_mlp_out)")
    train.add_argument("--skip", action="store_true",
                       help="with --hook-out: skip-transcoders, with a linear skip path (Paulo et al. 2025)")
    also_names(train, {"hook_name_out": "--hook-out", "skip": "--skip"})
    head, sep, tail = (train.epilog or "").partition("\n  Re-run")
    train.epilog = head.rstrip("\n") + "\n" + TRAIN_EXAMPLE + sep + tail
    sae_training = train.get_default("func")

    def run(args: argparse.Namespace) -> int:
        return run_train_transcoders(args) if args.hook_outs or args.skip else sae_training(args)

    train.set_defaults(func=run)


def transcoder_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``--hook`` / ``--hook-out`` as ``(hook_in, hook_out)`` pairs, one per --hook."""
    if not args.hook_outs:
        raise InterpError("--skip makes a skip-transcoder: give --hook-out (the hook it reconstructs) with each --hook")
    if not args.hooks or len(args.hooks) != len(args.hook_outs):
        raise InterpError(f"a transcoder reads --hook and reconstructs --hook-out: give one --hook-out per --hook "
                          f"(got {len(args.hooks or [])} --hook and {len(args.hook_outs)} --hook-out)")
    pairs = list(zip(args.hooks, args.hook_outs))
    for hook_in, hook_out in pairs:
        if hook_in == hook_out:
            raise InterpError(f"--hook and --hook-out are both {hook_in}; a transcoder reconstructs another hook "
                              "(drop --hook-out to train an SAE)")
    if len(set(pairs)) != len(pairs):
        raise InterpError("the same --hook / --hook-out pair is given twice")
    if getattr(args, "hook_devices", None):
        raise InterpError("--hook-device places the SAEs of single hooks; transcoders train on --device")
    return pairs


def _build(args: argparse.Namespace, d_in: int, d_out: int) -> Any:
    """The transcoder the options describe: ``interp train``'s SAE for them, rebuilt with ``d_out``."""
    if args.arch not in TRANSCODER_ARCHS:
        raise InterpError(f"--arch {args.arch} cannot train as a transcoder yet; use one of {', '.join(TRANSCODER_ARCHS)}")
    if args.d_sae is None:
        raise InterpError(f"--arch {args.arch} needs --d-sae (latents per transcoder)")
    if args.total_tokens is None:
        raise InterpError("training needs --tokens (tokens to train on); --eval-only evaluates the transcoders "
                          "already in --out instead")
    # --k where the family needs one, its penalty settings where it has them (a flag the
    # family does not take is an error, as in interp train).
    settings = family_settings(args)
    sae = build_sae(args.arch, d_in, args.d_sae, args.k, args.groups, not args.per_token_topk, settings)
    return type(sae)(**sae.arch_config(), d_out=d_out, skip=bool(args.skip))


def _main_process() -> bool:
    """False on the ranks of a data-parallel run other than 0 (rank 0 saves and reports)."""
    from saes.training import distributed

    dp = distributed.current()
    return dp is None or dp.is_main


def run_train_transcoders(args: argparse.Namespace) -> int:
    """`interp train` with --hook-out; Ctrl-C ends with one line saying how to resume (status 130)."""
    from saes.errors import SAEError

    try:
        return train_transcoders(args)
    except SAEError as err:
        raise InterpError(str(err)) from err
    except KeyboardInterrupt as err:
        said = str(err) if str(err) else "interrupted; run it again with --resume to continue from the last checkpoint"
        print(f"interp train: {to_flags(said, getattr(args, TABLE_DEST, None))}", file=sys.stderr)
        return 130


def train_transcoders(args: argparse.Namespace) -> int:
    """Transcoders from a store holding both hooks of each pair, or live from the model."""
    from interp.activations.live import hook_dir_name, lane_name

    pairs = transcoder_pairs(args)
    out = Path(args.out)
    several = len(pairs) > 1
    dirs = {lane_name(p): out / hook_dir_name(lane_name(p)) if several else out for p in pairs}
    common = {"checkpoint_dir": {n: d / "checkpoint" for n, d in dirs.items()}, "resume": args.resume,
              "log_dir": {n: d / "train_log.jsonl" for n, d in dirs.items()}, "progress": not args.no_progress}
    cfg = TrainConfig(**config_values(TrainConfig, args))
    if args.store:
        from interp.activations.store import ActivationStore
        from interp.activations.store_train import train_store

        if args.data:
            raise InterpError("--data is for live training (--model); a store already holds its activations")
        store = ActivationStore.open(args.store, hook=pairs[0][0])
        tcs = {p: _build(args, store.select(p[0]).d, store.select(p[1]).d) for p in pairs}
        results = train_store(store, tcs, cfg, **common)
    else:
        from interp.activations.live import train_live
        from interp.model.loading import load

        if not args.data:
            raise InterpError("live training needs --data (a .txt or .jsonl file)")
        model = load(args.model, device=args.device)
        model.check_hooks([h for p in pairs for h in p])
        tcs = {p: _build(args, *(math.prod(model.hook_shape(h)) for h in p)) for p in pairs}
        source = TokenSource(**config_values(TokenSource, args))
        check_context(model, source.context_length)
        cfg.device = cfg.device or str(model.device)
        results = train_live(model, source, tcs, cfg, live=LiveConfig(**config_values(LiveConfig, args)), **common)
    if _main_process():
        for (hook_in, hook_out), result in zip(pairs, results.values()):
            where = dirs[lane_name((hook_in, hook_out))]
            result.sae.save(where)
            m = result.metrics
            print(json.dumps({"sae": str(where), "hook": hook_in, "hook_out": hook_out, "steps": result.steps,
                              "tokens": result.tokens, "fvu": m.get("fvu"), "l0": m.get("l0"),
                              "dead_fraction": m.get("dead_fraction"), "stopped_early": result.stopped_early}))
    return 0


# --------------------------------------------------------------------------- interp transcoders


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``all`` or ``0,2,3`` as layer indices of a model with ``n_layers`` layers."""
    if text.strip() == "all":
        return list(range(n_layers))
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InterpError(f"--layers takes comma-separated layer numbers or all, got {text!r}") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if not layers or bad:
        raise InterpError(f"--layers {text!r}: the model has layers 0 to {n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise InterpError(f"--layers {text!r} names a layer twice")
    return sorted(layers)


def run_transcoders(args: argparse.Namespace) -> int:
    from saes.errors import SAEError

    try:
        return _run_transcoders(args)
    except SAEError as err:
        raise InterpError(str(err)) from err


def _run_transcoders(args: argparse.Namespace) -> int:
    import saes
    from interp.activations.live import lane_name, train_live
    from interp.evaluation.transcoders import mlp_hooks
    from interp.model.loading import load
    from saes.formats.durable import atomic_write_text

    model = load(args.model, device=args.device)
    layers = parse_layers(args.layers, model.n_layers)
    pairs = {layer: mlp_hooks(model, layer) for layer in layers}
    out = Path(args.out)
    dirs = {lane_name(pairs[layer]): out / f"layer_{layer}" for layer in layers}
    source = TokenSource(**config_values(TokenSource, args))
    check_context(model, source.context_length)
    training: dict[str, Any] = {}
    if args.eval_only:
        tcs = {layer: saes.load(dirs[lane_name(pairs[layer])]) for layer in layers}
    else:
        tcs = {layer: _build(args, *(math.prod(model.hook_shape(h)) for h in pairs[layer])) for layer in layers}
        cfg = TrainConfig(**config_values(TrainConfig, args))
        cfg.device = cfg.device or str(model.device)
        results = train_live(model, source, {pairs[layer]: tcs[layer] for layer in layers}, cfg,
                             live=LiveConfig(**config_values(LiveConfig, args)), resume=args.resume,
                             checkpoint_dir={n: d / "checkpoint" for n, d in dirs.items()},
                             log_dir={n: d / "train_log.jsonl" for n, d in dirs.items()}, progress=not args.no_progress)
        if not _main_process():
            return 0
        for name, result in results.items():
            result.sae.save(dirs[name])
            training[dirs[name].name] = {"steps": result.steps, "tokens": result.tokens, "fvu": result.metrics.get("fvu"),
                                         "l0": result.metrics.get("l0"), "stopped_early": result.stopped_early}
    report = _evaluate(args, model, tcs, pairs)
    report["training"] = training
    report["circuit_tracer"] = _export(out, [tcs[layer] for layer in layers], layers)
    atomic_write_text(out / "results.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    print()
    print(results_table(report))
    return 0


def _evaluate(args: argparse.Namespace, model: Any, tcs: dict[int, Any], pairs: dict[int, tuple[str, str]]
              ) -> dict[str, Any]:
    """Each transcoder alone in place of its MLP, then all at once, on the evaluation text."""
    from interp.evaluation.transcoders import evaluate_replacement, evaluate_transcoder

    options = config_values(TokenSource, args)
    if args.eval_data:
        options["data"] = args.eval_data
    eval_source = TokenSource(**options)
    run = {"batch_size": args.model_batch_size, "max_tokens": args.eval_tokens}
    per_layer = {layer: evaluate_transcoder(model, tc, eval_source, pairs[layer], **run).to_dict()
                 for layer, tc in tcs.items()}
    replacement = evaluate_replacement(model, list(tcs.values()), eval_source, **run).to_dict()
    return {"model": model.name, "arch": type(next(iter(tcs.values()))).__name__,
            "layers": per_layer, "replacement": replacement}


def _export(out: Path, transcoders: list[Any], layers: list[int]) -> str | None:
    """The circuit-tracer layout of the set, where circuit-tracer can run it (else why not)."""
    from saes.errors import FormatError
    from saes.formats.circuit_tracer import save_circuit_tracer

    if layers != list(range(len(layers))):
        return "not written: circuit-tracer needs a transcoder for every layer from 0 up"
    try:
        return str(save_circuit_tracer(transcoders, out / "circuit-tracer"))
    except FormatError as err:
        return f"not written: {err}"


def results_table(results: dict[str, Any]) -> str:
    """Per layer CE (spliced, MLP zeroed), CE / KL recovered, FVU, L0 and the share of latents
    silent on the evaluation text, then the replacement model (Markdown)."""
    rows = [("| layer | MLP input -> output | CE spliced | CE, MLP zeroed | CE recovered | KL recovered | FVU (MLP out) "
            "| L0 | silent latents |"), "|---|---|---|---|---|---|---|---|---|"]
    for layer, r in results["layers"].items():
        rows.append(f"| {layer} | {r['hook_in'].split('.', 2)[-1]} -> {r['hook_out'].split('.', 2)[-1]} | "
                    f"{r['ce_spliced']:.4f} | {r['ce_zero_ablation']:.4f} | {r['ce_loss_recovered']:.3f} | "
                    f"{r['kl_recovered']:.3f} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} |")
    rep = results["replacement"]
    rows.append(f"| all {len(results['layers'])} | replacement model | {rep['ce_replacement']:.4f} | "
                f"{rep['ce_zero_ablation']:.4f} | {rep['ce_loss_recovered']:.3f} | {rep['kl_recovered']:.3f} | | | |")
    rows.append("")
    rows.append(f"CE of the clean model {rep['ce_clean']:.4f} nats per token, on {rep['tokens']} evaluated tokens.")
    return "\n".join(rows)
