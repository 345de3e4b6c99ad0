"""`interp train` and `interp eval-sae`: train SAEs from a store or live, evaluate them.

:func:`register` adds both subcommands to the `interp` command's argparse subparsers; each
handler takes the parsed ``args`` and returns an exit status.

Output of `interp train --out DIR` (one hook)::

    DIR/cfg.json, DIR/sae_weights.safetensors    the SAE (load with saes.load(DIR))
    DIR/checkpoint/checkpoint.safetensors          resumable training state (--resume)
    DIR/train_log.jsonl                            metrics every --log-every steps

With several ``--hook`` (live or from a store) each hook gets that layout in ``DIR/<hook>/``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from interp.activations.tokens import TokenSource
from interp.activations.live import LiveConfig
from interp.cli.options import (
    DATA_FLAGS, DATA_RANGES, MAX_BATCH, MAX_CONTEXT, MAX_LATENTS, MAX_TOKENS, MAX_WINDOWS, TABLE_DEST,
    add_config_options,
    add_device_option, add_model_option, also_names, bounded, check_context, check_device, config_values, flag_name,
    positive, to_flags,
)
from interp.errors import InterpError
from saes.architectures import registry
from saes.training.config import TrainConfig

# Every architecture registered as trainable from the command line (saes.architectures.registry).
ARCHS = registry.cli_names()

# Settings of the sparsity-penalised families (l1, jumprelu, gated): one flag each, the help
# and range here, the default each family's own (read from its signature, shown per family).
# A flag is passed on only when given, and only to a family that has the setting.
FAMILY_FLAGS: dict[str, tuple[str, Any]] = {
    "l1_coefficient": ("weight of the L1 penalty (same meaning as SAELens's)", bounded(float, minimum=0)),
    "l0_coefficient": ("weight of the L0 penalty, or of the tanh one (same meaning as SAELens's)",
                       bounded(float, minimum=0)),
    "coefficient_warmup_frac": ("fraction of --tokens over which the sparsity coefficient rises linearly from 0",
                                bounded(float, minimum=0, maximum=1)),
    "init_threshold": ("every threshold at the start, in pre-activation units", bounded(float, minimum=0)),
    "bandwidth": ("width of the straight-through kernel that trains the thresholds, in pre-activation units",
                  positive(float)),
    "sparsity_loss": ("step (L0, the paper's) or tanh (SAELens's option)", str),
    "tanh_scale": ("scale inside the tanh penalty", positive(float)),
    "unit_norm_decoder": ("keep decoder rows at unit norm (--no-unit-norm-decoder frees them)", bool),
    "decoder_init_norm": ("norm at which free decoder rows start", positive(float)),
    "frozen_aux_decoder": (("the gate's auxiliary reconstruction does not train the decoder (the paper); "
                            "--no-frozen-aux-decoder lets it, as SAELens does"), bool),
}

TRAIN_EPILOG = """examples:
  # from an activation store written by `interp harvest` (here the quickstart's)
  interp train --store runs/quickstart/store --hook blocks.2.hook_resid_post --arch topk \\
      --d-sae 512 --k 16 --tokens 20000 --out saes/world-l2-topk
  interp train --store runs/gpt2-l6 --arch topk --d-sae 16384 --k 32 --tokens 50000000 \\
      --out saes/gpt2-l6-topk

  # sparsity from a penalty instead of k: L1 (SAELens "standard"), JumpReLU, Gated
  interp train --store runs/quickstart/store --hook blocks.2.hook_resid_post --arch jumprelu \\
      --d-sae 512 --l0-coefficient 1 --normalize-input --tokens 20000 --out saes/world-l2-jumprelu

  # live, straight from the model (no store on disk); several --hook train at once
  interp train --model gpt2 --hook blocks.6.hook_resid_post --data corpus.txt \\
      --arch matryoshka --d-sae 16384 --k 32 --tokens 20000000 --out saes/gpt2-l6-mat

  Re-run the same command with --resume to continue after an interruption; the resumed
  run ends with exactly the weights an uninterrupted one would have.
"""

EVAL_EPILOG = """examples:
  interp eval-sae --sae runs/quickstart/topk --model world --data heldout.txt --tokens 5000
  interp eval-sae --sae saes/gpt2-l6-topk --model gpt2 --data heldout.txt --tokens 200000

  heldout.txt is text the SAE was not trained on, one document per line (or .jsonl), in
  the model's language. Prints the metrics as JSON, then as a table: CE-loss recovered
  against zero ablation, KL of the spliced model from the clean one, FVU, L0 and dead
  fraction at the hook. The hook defaults to the one recorded in the SAE's cfg.json; an
  SAE whose cfg.json records another model or hook is refused (its figures would measure
  the mismatch) unless --allow-mismatch.
"""


def register(subparsers: Any) -> None:
    """Add the ``train`` and ``eval-sae`` subcommands to ``subparsers``."""
    t = subparsers.add_parser(
        "train",
        help="train an SAE (TopK, BatchTopK, Matryoshka, MP, L1, JumpReLU, Gated) from a store or live from a model",
        description="Train a sparse autoencoder on hook activations, read from an activation store "
        "(--store) or produced live by a model (--model, --hook, --data).",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="activation store directory (from `interp harvest`)")
    src.add_argument("--model", help="model for live training: HF hub name, local directory, or 'world'")
    t.add_argument("--hook", action="append", dest="hooks", metavar="HOOK",
                   help="hook to train on; repeat it to train several hooks at once (each in DIR/<hook>/)")
    t.add_argument("--arch", choices=ARCHS, default="topk", help="architecture (default topk)")
    t.add_argument("--d-sae", type=positive(int, MAX_LATENTS), required=True, help="number of latents")
    t.add_argument("--k", type=positive(int, MAX_LATENTS), default=None,
                   help="active latents per token (MP: pursuit steps); needed by topk, batchtopk, matryoshka and "
                        "mp, not taken by the penalised families (l1, jumprelu, gated)")
    t.add_argument("--groups", default=None,
                   help="matryoshka group sizes, comma-separated, summing to --d-sae (default: doubling prefixes)")
    t.add_argument("--per-token-topk", action="store_true",
                   help="matryoshka: per-token TopK codes instead of BatchTopK")
    add_family_options(t)
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    add_config_options(t, TrainConfig, required=["total_tokens"], overrides={
        "total_tokens": {"maximum": MAX_TOKENS}, "batch_size": {"maximum": MAX_BATCH},
        "init_rows": {"maximum": MAX_BATCH}, "k_aux": {"maximum": MAX_LATENTS}})
    t.add_argument("--hook-device", action="append", dest="hook_devices", default=None, metavar="HOOK=DEVICE",
                   help="train HOOK's SAE on DEVICE (e.g. blocks.6.hook_resid_post=cuda:1); repeatable")
    also_names(t, {"d_sae": "--d-sae", "k": "--k", "hook": "--hook", "hooks": "--hook", "resume": "--resume",
                   "group_sizes": "--groups", "checkpoint_dir": "--out", **{n: flag_name(n) for n in FAMILY_FLAGS}})
    add_config_options(t, LiveConfig, ["model_batch_size", "buffer_tokens"], overrides={
        "model_batch_size": {"help": "live: windows per forward pass", "positive": True, "maximum": MAX_WINDOWS},
        "buffer_tokens": {"help": "live: shuffle buffer rows", "positive": True}})
    add_config_options(t, TokenSource, DATA_FLAGS, overrides={
        "data": {"help": "live: .txt (one document per line) or .jsonl file"},
        "text_field": {"help": "live: field of a .jsonl record holding the text"},
        "context_length": {"help": "live: tokens per window", **DATA_RANGES["context_length"]},
        "exclude_bos": {"off_help": "live: also train on position 0 (BOS)"}})
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval-sae",
        help="CE-loss recovered, KL and reconstruction metrics of an SAE spliced into a model",
        description="Splice an SAE's reconstruction into a model at its hook and report CE-loss "
        "recovered (against zero ablation), the KL from the clean model, FVU, L0 and dead fraction.",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--sae", required=True, help="SAE directory (ours, SAELens or sparsify)")
    add_model_option(e, required=True)
    e.add_argument("--hook", default=None, help="hook to splice at (default: the SAE's recorded hook)")
    e.add_argument("--tokens", type=positive(int, MAX_TOKENS), default=100_000,
                   help="tokens to evaluate (default 100000)")
    e.add_argument("--batch-size", type=positive(int, MAX_WINDOWS), default=8,
                   help="windows per forward pass (default 8)")
    e.add_argument("--allow-mismatch", action="store_true",
                   help="evaluate even where the SAE's cfg.json records another model or hook (the same model "
                        "under another name, or a deliberate transfer test)")
    add_config_options(e, TokenSource, DATA_FLAGS, required=["data"],
                       overrides={"context_length": {"cli_default": None, "default_text": "the SAE's recorded "
                                                     "context size, else 128", **DATA_RANGES["context_length"]},
                                  "exclude_bos": {"off_help": "also splice at position 0 (BOS)"}})
    also_names(e, {"hook": "--hook", "max_tokens": "--tokens", "batch_size": "--batch-size"})
    add_device_option(e)
    e.add_argument("--json", action="store_true", help="print only the JSON")
    e.set_defaults(func=run_eval_sae)


# --------------------------------------------------------------------------- train


def add_family_options(parser: argparse.ArgumentParser) -> None:
    """The flags of :data:`FAMILY_FLAGS`, each help naming the families that take it and their defaults."""
    for name, (text, kind) in FAMILY_FLAGS.items():
        defaults = {a: p.default for a in ARCHS if (p := registry.settings_of(registry.for_cli(a)).get(name))}
        shown = "; ".join(f"{a}: {v}" for a, v in defaults.items())
        options: dict[str, Any] = {"default": None, "help": f"{'/'.join(defaults)}: {text} (default {shown})",
                                   "metavar": None if kind is bool or name == "sparsity_loss" else "X"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif name == "sparsity_loss":
            options["choices"] = ("step", "tanh")
        else:
            options["type"] = kind
        parser.add_argument(flag_name(name), **options)


def family_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The given family flags as settings for ``--arch``'s class; --k where it needs one. A
    flag that the family does not take is an error, not silently dropped."""
    takes = registry.settings_of(registry.for_cli(args.arch))
    if "k" in takes and args.k is None:
        raise InterpError(f"--arch {args.arch} needs --k (active latents per token)")
    if "k" not in takes and args.k is not None:
        raise InterpError(f"--arch {args.arch} takes no --k: its sparsity comes from a penalty; set "
                          f"--{'l0' if 'l0_coefficient' in takes else 'l1'}-coefficient instead")
    given = {n: getattr(args, n) for n in FAMILY_FLAGS if getattr(args, n, None) is not None}
    for name in given:
        if name not in takes:
            users = [a for a in ARCHS if name in registry.settings_of(registry.for_cli(a))]
            raise InterpError(f"{flag_name(name)} is a setting of --arch {' / '.join(users)}, not of --arch {args.arch}")
    return given


def build_sae(arch: str, d_in: int, d_sae: int, k: int | None, groups: str | None = None, batch_topk: bool = True,
              settings: dict[str, Any] | None = None) -> Any:
    """The SAE the command-line options describe: the registry's class for ``--arch``, given
    the options it takes (``--groups`` and ``--per-token-topk`` only mean something to
    families with ``group_sizes`` / ``batch_topk`` settings; others ignore them) and
    ``settings`` (:func:`family_settings`)."""
    cls = registry.for_cli(arch)
    settings = {"d_in": d_in, "d_sae": d_sae, "k": k, "batch_topk": batch_topk, **(settings or {})}
    if groups and "group_sizes" in registry.settings_of(cls):
        try:
            settings["group_sizes"] = [int(g) for g in groups.split(",") if g.strip()]
        except ValueError:
            raise InterpError(f"--groups must be comma-separated integers, got {groups!r}") from None
    return registry.build(cls, settings)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**config_values(TrainConfig, args))


def _summary(result: Any) -> dict[str, Any]:
    m = result.metrics
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in
            {"steps": result.steps, "tokens": result.tokens, "fvu": m.get("fvu"), "l0": m.get("l0"),
             "dead_fraction": m.get("dead_fraction"), "stopped_early": result.stopped_early}.items()}


def run_train(args: argparse.Namespace) -> int:
    from saes.errors import SAEError
    from saes.training.runner import TrainingInterrupted

    try:
        return _train_from_store(args) if args.store else _train_live(args)
    except SAEError as err:
        raise InterpError(str(err)) from err
    except KeyboardInterrupt as err:
        # Ctrl-C: one line saying where the last checkpoint is (not a traceback), and the
        # shell's status for SIGINT.
        said = str(err) if isinstance(err, TrainingInterrupted) else (
            "interrupted; run it again with resume=True to continue from the last checkpoint, if one was written")
        print(f"interp train: {to_flags(said, getattr(args, TABLE_DEST, None))}", file=sys.stderr)
        return 130


def _train_from_store(args: argparse.Namespace) -> int:
    import saes
    from saes.training.runner import record_origin

    from interp.activations.store import ActivationStore
    from interp.activations.store_train import store_origin

    if args.data:
        raise InterpError("--data is for live training (--model); a store already holds its activations")
    if args.hooks and len(args.hooks) > 1:
        return _train_store_hooks(args)
    if args.hook_devices:
        raise InterpError("--hook-device places the SAEs of several --hook values; with one hook use --device")
    store = ActivationStore.open(args.store, hook=args.hooks[0] if args.hooks else None)
    sae = build_sae(args.arch, store.d, args.d_sae, args.k, args.groups, not args.per_token_topk, family_settings(args))
    record_origin([sae], store_origin(store))
    out = Path(args.out)
    result = saes.train(sae, store, _train_config(args), checkpoint_dir=out / "checkpoint", resume=args.resume,
                        log_path=out / "train_log.jsonl", progress=not args.no_progress)
    if _main_process():  # under torchrun every rank trained; rank 0 saves and reports
        sae.save(out)
        print(json.dumps({"sae": str(out), "hook": store.hook, **_summary(result)}))
    return 0


def _train_store_hooks(args: argparse.Namespace) -> int:
    """Several stored hooks at once: DIR/<hook>/ per hook, each on its --hook-device."""
    from interp.activations.live import hook_dir_name
    from interp.activations.store import ActivationStore
    from interp.activations.store_train import train_store

    store = ActivationStore.open(args.store, hook=args.hooks[0])
    for hook in args.hooks[1:]:
        store.select(hook)  # every hook must be in the store: fail before any training
    saes_by_hook = {h: build_sae(args.arch, store.select(h).d, args.d_sae, args.k, args.groups,
                                 not args.per_token_topk, family_settings(args)) for h in args.hooks}
    out = Path(args.out)
    dirs = {h: out / hook_dir_name(h) for h in args.hooks}
    results = train_store(store, saes_by_hook, _train_config(args), resume=args.resume,
                          checkpoint_dir={h: d / "checkpoint" for h, d in dirs.items()},
                          log_dir={h: d / "train_log.jsonl" for h, d in dirs.items()},
                          progress=not args.no_progress, devices=_hook_devices(args.hook_devices, args.hooks))
    if _main_process():
        for hook, result in results.items():
            result.sae.save(dirs[hook])
            print(json.dumps({"sae": str(dirs[hook]), "hook": hook, **_summary(result)}))
    return 0


def _main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _train_live(args: argparse.Namespace) -> int:
    from interp.activations.live import LiveConfig, hook_dir_name, train_live
    from interp.model.loading import load

    if not args.hooks:
        raise InterpError("live training needs --hook (repeat it for several hooks)")
    if not args.data:
        raise InterpError("live training needs --data (a .txt or .jsonl file)")
    model = load(args.model, device=args.device)
    model.check_hooks(args.hooks)
    out = Path(args.out)
    several = len(args.hooks) > 1
    saes_by_hook = {}
    for hook in args.hooks:
        d_in = math.prod(model.hook_shape(hook))
        saes_by_hook[hook] = build_sae(args.arch, d_in, args.d_sae, args.k, args.groups, not args.per_token_topk,
                                       family_settings(args))
    live = LiveConfig(**config_values(LiveConfig, args))
    source = TokenSource(**config_values(TokenSource, args))
    check_context(model, source.context_length)
    cfg = _train_config(args)
    cfg.device = cfg.device or str(model.device)
    # One hook: DIR is the SAE directory (as for store training); several: DIR/<hook>/.
    dirs = {hook: out / hook_dir_name(hook) if several else out for hook in args.hooks}
    devices = _hook_devices(args.hook_devices, args.hooks)
    results = train_live(
        model, source, saes_by_hook, cfg, live=live, devices=devices,
        checkpoint_dir={h: d / "checkpoint" for h, d in dirs.items()}, resume=args.resume,
        log_dir={h: d / "train_log.jsonl" for h, d in dirs.items()}, progress=not args.no_progress,
    )
    for hook, result in results.items():
        result.sae.save(dirs[hook])
        print(json.dumps({"sae": str(dirs[hook]), "hook": hook, **_summary(result)}))
    return 0


def _hook_devices(specs: list[str] | None, hooks: list[str]) -> dict[str, str] | None:
    """``["HOOK=DEVICE", ...]`` as a mapping, each hook one of the trained ones."""
    if not specs:
        return None
    out: dict[str, str] = {}
    for spec in specs:
        hook, sep, device = spec.partition("=")
        if not sep or not hook or not device:
            raise InterpError(f"--hook-device takes HOOK=DEVICE (e.g. blocks.6.hook_resid_post=cuda:1), got {spec!r}")
        if hook not in hooks:
            raise InterpError(f"--hook-device names {hook!r}, which is not one of the --hook values {hooks}")
        check_device(device, flag="--hook-device")
        out[hook] = device
    return out


# ------------------------------------------------------------------------- eval-sae


def run_eval_sae(args: argparse.Namespace) -> int:
    import saes
    from saes.errors import SAEError

    from interp.evaluation.splice import evaluate_sae
    from interp.model.loading import load

    try:
        sae = saes.load(args.sae)
    except SAEError as err:
        raise InterpError(str(err)) from err
    hook = args.hook or sae.metadata.get("hook_name")
    if not hook:
        raise InterpError(f"{args.sae} records no hook name; pass --hook")
    if not isinstance(hook, str):
        raise InterpError(f"{Path(args.sae) / 'cfg.json'}: hook_name is {hook!r}, not a hook name; fix it or pass --hook")
    options = config_values(TokenSource, args)
    if options["context_length"] is None:
        # Evaluate on the windows the SAE was trained on; cfg.json's metadata is edited by hand.
        options["context_length"] = _recorded_context(sae, args.sae)
    model = load(args.model, device=args.device)
    _check_origin(model, sae, hook, args)
    source = TokenSource(**options)
    check_context(model, source.context_length,
                  "--context-length" if args.context_length is not None else f"the context size {args.sae} records")
    result = evaluate_sae(model, sae, hook, source, batch_size=args.batch_size,
                          max_tokens=args.tokens, progress=False)
    out = {"sae": str(args.sae), "model": model.name, **result.to_dict()}
    print(json.dumps(out))
    if not args.json:
        print()
        print(result.table())
    return 0


def _recorded_context(sae: Any, where: str) -> int | None:
    """The context size the SAE's cfg.json records (None: none), or one line saying it is no size."""
    recorded = sae.metadata.get("context_size")
    if recorded is None:
        return None
    if isinstance(recorded, float) and recorded.is_integer():  # 128.0 from a JSON writer that knows no ints
        recorded = int(recorded)
    if isinstance(recorded, bool) or not isinstance(recorded, int) or not 0 < recorded <= MAX_CONTEXT:
        raise InterpError(f"{Path(where) / 'cfg.json'}: context_size is {recorded!r:.40}, not a window length "
                          f"(an integer from 1 to {MAX_CONTEXT:,}); fix it there, or pass --context-length N")
    return recorded


def _check_origin(model: Any, sae: Any, hook: str, args: argparse.Namespace) -> None:
    """Refuse an SAE whose cfg.json records another model or hook, unless --allow-mismatch."""
    from interp.evaluation.splice import origin_mismatches

    problems = origin_mismatches(model, sae, hook)
    if problems and not args.allow_mismatch:
        raise InterpError(f"{'; '.join(problems)} (its cfg.json says so): its figures here would measure the "
                          "mismatch, not the SAE. Evaluate it with the model and hook it was trained on, or pass "
                          "--allow-mismatch if this is the same model under another name or a deliberate test")
