"""`interp steer`, `interp steer-eval` and `interp patch`."""
from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from interp.cli.options import (
    MAX_NEW_TOKENS, add_config_options, add_model_option, also_names, bounded, check_context, config_values,
    model_positions, positive, seed,
)
from interp.interventions.steering_eval import SteerEvalConfig
from interp.errors import InterpError

MAX_SCALE = 1e6

STEER_EPILOG = """examples (after `interp quickstart`, which writes runs/quickstart/):
  interp steer --model world --sae runs/quickstart/topk --latent 12 --scale 8 --prompt "the"
  interp steer --model world --vector runs/quickstart/steering.safetensors --prompt "the" --prompt "a" \\
      --positions generated
  interp steer --model world --sae runs/quickstart/topk --latent 12 --target-kl 0.5 --prompt "the"

--sae steers along one latent's decoder row (unit norm; --scale is in the hook's activation
units); --vector replays a file written by Steering.save(), such as the quickstart's
calibrated topic vector. The SAE's cfg.json names its hook and model; steering another
model's activations is refused unless --allow-mismatch.
"""

STEER_EVAL_EPILOG = """examples:
  interp quickstart && interp steer-eval --from runs/quickstart            # SAE, SNMF and diff-in-means
  interp steer-eval --from runs/quickstart --topics school,music --kl 0.25,0.5,1 --out runs/steer-eval
  interp steer-eval --from runs/quickstart --candidates 3 --dim-hook resid_post
  interp steer-eval --from runs/quickstart --protocol lexical --prompts 12  # the earlier protocol

--protocol paper (default) follows the SNMF paper: neutral prompts sampled several times,
a selection set that picks each dictionary's (unit, sign) among --candidates units steered
with +alpha and -alpha, a report set it is scored on, alpha matched to the KL at the last
prompt token, success and fluency read exactly from the world's generator, 95% bootstrap
intervals. The defaults take about 3 minutes of CPU for 8 topics x 3 KL targets on a
4-layer, d_model-256 world model.

writes OUT/steering.json (one row per topic, method and KL target) and OUT/steering.html
(success against fluency, over topics).
"""

PATCH_EPILOG = """examples:
  interp patch --model world --clean "the flag of grimges is" --corrupted "the flag of faskim is" \\
      --correct black --wrong white --out patch.html
  interp patch --model gpt2 --clean "When Mary and John went to the store, John gave a drink to" \\
      --corrupted "When Mary and John went to the store, Mary gave a drink to" \\
      --correct " Mary" --wrong " John" --out patch.html
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("steer", help="generate with and without a steering vector, side by side",
                              description="Generate from each prompt twice, unsteered and with a vector added at "
                                          "a hook (an SAE latent's decoder row, or a saved steering file), and "
                                          "print the continuations side by side.",
                              epilog=STEER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p, default="world")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sae", help="SAE directory; steer along the decoder row of --latent")
    source.add_argument("--vector", help="a steering file written by Steering.save()")
    p.add_argument("--latent", type=int, help="SAE latent (with --sae)")
    p.add_argument("--hook", help="hook to steer at (default: the SAE's or the file's)")
    # A million activation units is far past any visible effect; beyond it the logits overflow.
    p.add_argument("--scale", type=bounded(float, -MAX_SCALE, MAX_SCALE), default=None,
                   help="steering strength (the norm added, in the hook's activation units)")
    p.add_argument("--target-kl", type=positive(float), default=None,
                   help="calibrate the scale to this next-token KL instead")
    p.add_argument("--positions", default="all", choices=("all", "prompt", "generated", "last_prompt"),
                   help="where to add the vector: every position, the prompt's, the generated ones', or the "
                        "last prompt token's (default: all)")
    p.add_argument("--max-new-tokens", type=positive(int, MAX_NEW_TOKENS), default=20,
                   help="tokens to generate (default: 20)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed (default: 0)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="steer even where the SAE's cfg.json records another model or hook")
    also_names(p, {"hook": "--hook", "latent": "--latent", "scale": "--scale", "target_kl": "--target-kl",
                   "positions": "--positions", "max_new_tokens": "--max-new-tokens"})
    p.set_defaults(func=steer)

    e = subparsers.add_parser("steer-eval", help="SAE latent vs SNMF feature vs diff-in-means steering at matched KL (world)",
                              description="Compare three ways to steer the world model towards a planted topic (an "
                                          "SAE latent, an SNMF feature, the difference in means) at matched "
                                          "next-token KL, scored by the world's exact generator.",
                              epilog=STEER_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(e, default="world")
    e.add_argument("--from", dest="source", default="runs/quickstart",
                   help="a quickstart output directory: its topk/ SAE and snmf/ are used")
    e.add_argument("--sae", default=None, help="SAE directory at blocks.L.hook_resid_post (default: FROM/topk)")
    e.add_argument("--snmf", default=None, help="SNMF directory at blocks.L.mlp.hook_post (default: FROM/snmf)")
    e.add_argument("--topics", default=None, help="comma-separated planted topics (default: all)")
    e.add_argument("--kl", default="0.25,0.5,1.0", help="next-token KL targets the methods are matched at")
    e.add_argument("--protocol", choices=("paper", "lexical"), default="paper",
                   help="paper: the SNMF paper's protocol, scored by the world's generator; lexical: the earlier "
                        "one (best-AUROC unit, greedy continuations of other topics' openings, topic-word share) "
                        "(default: paper)")
    e.add_argument("--prompts", type=positive(int, 100_000), default=12,
                   help="--protocol lexical: prompts per topic (openings of other topics' documents) (default: 12)")
    add_config_options(e, SteerEvalConfig)
    e.add_argument("--out", default="runs/steer-eval",
                   help="directory for steering.json and steering.html (default: runs/steer-eval)")
    also_names(e, {"kl_targets": "--kl", "n_prompts": "--prompts", "topics": "--topics", "protocol": "--protocol"})
    e.set_defaults(func=steer_eval)

    q = subparsers.add_parser("patch", help="activation patching heat map (layer x position) as HTML",
                              description="Run a clean and a corrupted prompt of the same length, patch each "
                                          "layer's activation at each position from the clean run into the "
                                          "corrupted one, and map how much of the correct-vs-wrong logit "
                                          "difference comes back.",
                              epilog=PATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(q, default="world")
    q.add_argument("--clean", required=True, help="the prompt whose activations are patched in")
    q.add_argument("--corrupted", required=True, help="the prompt they are patched into (same token count)")
    q.add_argument("--correct", required=True, help="the clean answer token")
    q.add_argument("--wrong", required=True, help="the corrupted answer token")
    q.add_argument("--hook-template", default="blocks.{layer}.hook_resid_pre",
                   help="hook patched at each layer (default: blocks.{layer}.hook_resid_pre)")
    q.add_argument("--attribution", action="store_true", help="the gradient approximation (one pass)")
    q.add_argument("--out", default="patch.html", help="HTML file to write (default: patch.html)")
    q.set_defaults(func=patch)


def _template_hooks(template: str, n_layers: int) -> list[str]:
    """The hooks ``--hook-template`` names, one per layer, or one line saying how to write it."""
    try:
        hooks = [template.format(layer=layer) for layer in range(n_layers)]
    except (ValueError, KeyError, IndexError, AttributeError) as err:
        raise InterpError(f"--hook-template {template!r} is not a template with {{layer}} ({type(err).__name__}: "
                          f"{err}); write e.g. blocks.{{layer}}.hook_resid_pre") from None
    if len(set(hooks)) < n_layers:
        raise InterpError(f"--hook-template {template!r} names the same hook at every layer; put {{layer}} in it, "
                          "e.g. blocks.{layer}.hook_resid_pre")
    return hooks


def _single_token(model: Any, text: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise InterpError(f"{text!r} is {len(ids)} tokens for this tokenizer; --correct/--wrong need one token each")
    return ids[0]


def steer_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import saes
    from saes.formats.durable import atomic_write_text

    from interp.model.loading import load

    source = Path(args.source)
    sae_dir = Path(args.sae) if args.sae else source / "topk"
    snmf_dir = Path(args.snmf) if args.snmf else source / "snmf"
    for what, d in (("SAE", sae_dir), ("SNMF", snmf_dir)):
        if not d.exists():
            raise InterpError(f"no {what} at {d}: run `interp quickstart` first (it writes {source}/topk and "
                              f"{source}/snmf), or pass --sae/--snmf")
    kl = _kl_targets(args.kl)
    topics = _topics(args.topics)
    try:
        config = SteerEvalConfig(**config_values(SteerEvalConfig, args))
    except ValueError as err:
        raise InterpError(str(err)) from None
    model = load(args.model)
    require_world_model(model, args.model, "steer-eval")
    sae = saes.load(sae_dir)
    snmf = saes.SNMFResult.load(snmf_dir)
    layer = _common_layer(sae, snmf)
    model.check_hooks([f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"])
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InterpError(f"--out {out} is a file; give a directory for steering.json and steering.html")
    try:
        if args.protocol == "lexical":
            report = _lexical(args, model, topics, layer, sae, snmf, kl)
        else:
            report = _paper(args, config, model, topics, layer, sae, snmf, kl)
    except ValueError as err:
        raise InterpError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    payload, chart = report
    atomic_write_text(out / "steering.json", json.dumps(_finite(payload), indent=2))
    atomic_write_text(out / "steering.html", chart.to_html(include_plotlyjs=True))
    print(f"wrote {out}/steering.json and steering.html")
    return 0


def _kl_targets(text: str) -> list[float]:
    import math

    try:
        kl = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InterpError(f"--kl {text!r}: give comma-separated numbers, e.g. --kl 0.25,0.5,1") from None
    if not kl or not all(math.isfinite(k) and k > 0 for k in kl):
        raise InterpError(f"--kl {text!r}: KL targets must be positive numbers, e.g. --kl 0.25,0.5,1")
    return kl


def _topics(text: str | None) -> list[str]:
    """``--topics`` as planted topic names (all of them when not given)."""
    from interp.world.lexicon import TOPICS

    if text is None:
        return list(TOPICS)
    topics = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in topics if t not in TOPICS]
    if not topics or unknown:
        raise InterpError(f"--topics {text!r}: {'no topic given' if not topics else f'no planted topic {unknown[0]!r}'}; "
                          f"choose from {','.join(TOPICS)}")
    return topics


def require_world_model(model: Any, name: str, command: str) -> None:
    """Refuse a model that does not speak the synthetic world's language (its topics, its QA)."""
    if "answer" not in model.tokenizer.get_vocab():  # a word of the world's QA grammar, of every world
        raise InterpError(f"{name!r} does not speak the synthetic world's language; `interp {command}` needs a "
                          "model trained on the world (--model world, or a directory from `interp world train`)")


def _common_layer(sae: Any, snmf: Any) -> int:
    """The layer both dictionaries read: steer-eval compares dictionaries of one layer."""
    from interp.model.hooked import layer_of

    hook = sae.metadata.get("hook_name") or ""
    layer = layer_of(hook)
    if layer is None:
        raise InterpError(f"the SAE's hook {hook!r} is not a per-layer hook (blocks.L....); "
                          "steer-eval compares dictionaries of one layer")
    snmf_hook = snmf.config.get("hook_name", f"blocks.{layer}.mlp.hook_post")
    if snmf_hook != f"blocks.{layer}.mlp.hook_post":
        raise InterpError(f"the SAE reads {hook} but the SNMF was fit at {snmf_hook}; "
                          f"compare dictionaries of one layer (the SNMF at blocks.{layer}.mlp.hook_post)")
    return layer


def _lexical(args: argparse.Namespace, model: Any, topics: list[str], layer: int, sae: Any, snmf: Any,
             kl: list[float]) -> tuple[dict, Any]:
    """The earlier protocol: its JSON payload and chart, its table printed."""
    from interp.interventions.steering_eval import compare_methods
    from interp.interventions.steering_lexical import mean_by_method, steering_chart

    rows = compare_methods(model, topics, layer, sae=sae, snmf=snmf, kl_targets=kl, n_prompts=args.prompts,
                           new_tokens=args.new_tokens, seed=args.seed, protocol="lexical")
    means = mean_by_method(rows)
    print(f"layer {layer}; {len(topics)} topics x {args.prompts} prompts; mean over topics (lexical protocol)")
    print(f"{'method':<15}{'KL target':>10}{'KL':>8}{'success':>9}{'fluency':>9}")
    for r in means:
        print(f"{r.method:<15}{r.target_kl:>10.2f}{r.kl:>8.2f}{r.success:>9.3f}{r.fluency:>9.3f}")
    payload = {"protocol": "lexical", "layer": layer, "topics": topics, "kl_targets": kl, "rows": rows,
               "mean": [vars(r) for r in means]}
    return payload, steering_chart(means, topic=f"{len(topics)} topics (mean)")


def _paper(args: argparse.Namespace, config: SteerEvalConfig, model: Any, topics: list[str], layer: int, sae: Any,
           snmf: Any, kl: list[float]) -> tuple[dict, Any]:
    """The SNMF paper's protocol: its JSON payload and chart, its table (with intervals) printed."""
    from dataclasses import asdict

    from interp.interventions.steering_eval import paper_protocol, summarize, summary_chart

    rows, sets = paper_protocol(model, topics, layer, sae, snmf, kl, config, world=_world_for(args.model),
                                progress=True)
    summary = summarize(rows, n_boot=config.n_boot, seed=config.seed)
    print(f"layer {layer}; {len(topics)} topics; chosen on {len(sets.selection)} prompts x {sets.selection_samples} "
          f"samples, reported on {len(sets.report)} x {sets.report_samples} "
          f"({'other' if sets.disjoint else 'the same'} prompts, other seeds)")
    print("mean over topics x prompts x samples [95% bootstrap interval]; success = P(target topic | grammatical "
          "prefix), log p = generator's log-prob per accepted token, accepted = share of generated tokens accepted")
    print(f"{'method':<15}{'KL target':>10}{'KL':>7}  {'success':<24}{'log p/token':<27}{'accepted':<24}")
    for r in summary:
        print(f"{r.method:<15}{r.target_kl:>10.2f}{r.kl:>7.2f}  {str(r.success):<24}{str(r.logprob):<27}"
              f"{str(r.accepted):<24}")
    reached = {(r.method, r.target_kl): r.topics for r in summary}
    for method in ("diff-in-means", "sae latent", "snmf feature"):
        for target in kl:
            if reached.get((method, target), 0) < len(topics):
                print(f"note: {method} reaches KL {target:g} on {reached.get((method, target), 0)} of {len(topics)} "
                      "topics only (elsewhere every candidate saturates below it)")
    payload = {"protocol": "paper", "layer": layer, "topics": topics, "kl_targets": kl, "settings": asdict(config),
               "prompts": {"selection": list(sets.selection), "report": list(sets.report),
                           "selection_samples": sets.selection_samples, "report_samples": sets.report_samples,
                           "selection_seed": sets.selection_seed, "report_seed": sets.report_seed,
                           "disjoint": sets.disjoint},
               "rows": rows, "mean": [r.to_dict() for r in summary]}
    return payload, summary_chart(summary, f"{len(topics)} topics")


def _world_for(model: str) -> Any:
    """The world the model was trained on (its world.json), or the default world."""
    from pathlib import Path

    from interp.model.loading import DEFAULT_MODEL_ALIASES
    from interp.world import World, world_of_model

    if model in DEFAULT_MODEL_ALIASES:
        return world_of_model()
    return world_of_model(model) if Path(model).is_dir() else World()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no NaN."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def steer(args: argparse.Namespace) -> int:
    import saes

    from interp.model.loading import load
    from interp.interventions.steering import Positions, Steering, calibrate_scale

    model = load(args.model)
    positions = Positions.parse(args.positions)
    if args.sae:
        spec = _sae_steering(model, saes.load(args.sae), args, positions)
    else:
        try:
            spec = Steering.load(args.vector)
        except ValueError as err:  # not a steering file: say so in one line
            raise InterpError(f"--vector: {err}") from None  # the message names the file
        spec.positions = positions
        spec.hook = args.hook or spec.hook
        if args.scale is not None:
            spec.scale = args.scale
    _check_fits(model, spec, "the SAE" if args.sae else f"the vector in {args.vector}")
    _check_length(model, args.prompt, args.max_new_tokens)
    if args.target_kl is not None:
        try:
            spec, kl = calibrate_scale(model, spec, args.prompt, args.target_kl)
        except ValueError as err:  # the direction cannot reach the target: a message, not a traceback
            raise InterpError(str(err)) from None
        print(f"calibrated scale {spec.scale:.3g} reaches next-token KL {kl:.3g}")
    elif args.scale is None and args.sae:
        raise InterpError("give --scale S or --target-kl K")
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    plain = model.generate(args.prompt, **options)
    steered = model.generate(args.prompt, steering=[spec], **options)
    width = 48
    print(f"{spec.name or 'vector'} at {spec.hook}, scale {spec.scale:.3g}, positions {json.dumps(spec.positions.to_dict())}")
    for prompt, a, b in zip(args.prompt, plain.texts, steered.texts):
        print(f"\nprompt: {prompt}")
        left, right = textwrap.wrap(a, width) or [""], textwrap.wrap(b, width) or [""]
        print(f"  {'unsteered':<{width}} | steered")
        for i in range(max(len(left), len(right))):
            print(f"  {(left[i] if i < len(left) else ''):<{width}} | {right[i] if i < len(right) else ''}")
    return 0


def _sae_steering(model: Any, sae: Any, args: argparse.Namespace, positions: Any) -> Any:
    """The --latent's decoder row of the SAE, at --hook or the SAE's recorded hook."""
    from interp.evaluation.splice import origin_mismatches
    from interp.interventions.steering import Steering

    if args.latent is None:
        raise InterpError("--sae needs --latent: which latent's decoder row to steer with")
    if not 0 <= args.latent < sae.d_sae:
        raise InterpError(f"--latent {args.latent} is outside the SAE's {sae.d_sae} latents; pick one from 0 to "
                          f"{sae.d_sae - 1} (a dashboard of the SAE shows what each does)")
    spec = Steering.from_sae(sae, args.latent, scale=args.scale or 1.0, positions=positions, hook=args.hook)
    model.check_hooks(spec.hook)  # a typo in --hook lists the close matches
    problems = origin_mismatches(model, sae, spec.hook)
    if problems and not args.allow_mismatch:
        raise InterpError(f"{'; '.join(problems)} (its cfg.json says so): its latent's direction means nothing "
                          "there. Steer the model and hook it was trained on (without --hook, the recorded one), "
                          "or pass --allow-mismatch to steer there anyway (the same model under another name)")
    return spec


def _check_length(model: Any, prompts: list[str], new_tokens: int) -> None:
    """Prompt and continuation fit in the model's positions (beyond them its position table
    would be indexed out of range mid-generation)."""
    limit = model_positions(model)
    if limit is None:
        return
    longest = max(int(model.to_tokens(p).shape[1]) for p in prompts)
    if longest + new_tokens > limit:
        room = limit - longest
        fix = f"use --max-new-tokens {room} or fewer" if room > 0 else "shorten the prompt"
        raise InterpError(f"the longest --prompt is {longest} tokens; with --max-new-tokens {new_tokens} that is more "
                          f"than the {limit} positions {model.name} has: {fix}")


def _check_fits(model: Any, spec: Any, what: str) -> None:
    """The vector has the hook's per-token shape, or a one-line error before generating."""
    model.check_hooks(spec.hook)
    shape = tuple(int(s) for s in model.hook_shape(spec.hook))
    if tuple(spec.vector.shape) != shape:
        raise InterpError(f"{what} has width {list(spec.vector.shape)} but {spec.hook} of {model.name} carries "
                          f"{list(shape)} per token: it was made for another model or hook; steer with one "
                          f"made for this hook of this model, or pass the model it was made for with --model")


def patch(args: argparse.Namespace) -> int:
    from interp.interventions.patching import activation_patching, attribution_patching, heatmap, logit_diff
    from interp.model.loading import load
    from saes.formats.durable import atomic_write_text

    model = load(args.model)
    model.check_hooks(_template_hooks(args.hook_template, model.n_layers))
    clean, corrupted = model.to_tokens(args.clean), model.to_tokens(args.corrupted)
    if clean.shape != corrupted.shape:
        raise InterpError(f"the clean prompt is {clean.shape[1]} tokens and the corrupted one {corrupted.shape[1]}; "
                          "patching needs prompts of the same length")
    check_context(model, clean.shape[1], "--clean")
    correct, wrong = _single_token(model, args.correct), _single_token(model, args.wrong)
    if correct == wrong:
        raise InterpError(f"--correct {args.correct!r} and --wrong {args.wrong!r} are the same token, so their logit "
                          "difference is always 0; give two different answers")
    metric = logit_diff(correct, wrong)
    run = attribution_patching if args.attribution else activation_patching
    try:
        result = run(model, clean, corrupted, metric, hook_template=args.hook_template)
    except ValueError as err:  # e.g. both runs give the same logit difference: nothing to restore
        raise InterpError(f"{err}; choose prompts or answers whose logit difference the corruption changes") from None
    figure = heatmap(result, tokens=model.tokenizer.convert_ids_to_tokens(clean[0].tolist()))
    # Whole or not at all: a full disk leaves no cut-off page behind.
    atomic_write_text(args.out, figure.to_html(include_plotlyjs=True))
    best = divmod(int(result.scores.abs().argmax()), result.scores.shape[1])
    print(f"clean {result.clean:.3f}, corrupted {result.corrupted:.3f}; strongest cell: "
          f"{result.row_labels[best[0]]} at position {best[1]} ({float(result.scores[best]):.2f}); wrote {args.out}")
    return 0
