"""`interp circuit`: the attribution graph of one prompt over a model's transcoders.

Output of ``--out DIR`` (``SLUG`` from ``--slug``, default from the prompt)::

    DIR/SLUG.json            the pruned graph as circuit-tracer's / Neuronpedia's viewers read it
    DIR/graph-metadata.json  the viewers' listing of the graphs in DIR
    DIR/SLUG.html            a single-file offline view (click a node for its examples)
    DIR/SLUG.graph/          with --save-graph: the whole unpruned graph (AttributionGraph.load)
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from interp.circuits.attribution import CircuitConfig
from interp.cli.options import (
    add_config_options,
    add_device_option,
    add_model_option,
    also_names,
    bounded,
    config_values,
    path_text,
)
from interp.errors import InterpError

EPILOG = """examples (runs/world-transcoders: the first example of `interp transcoders --help`):
  interp circuit --model world --transcoders runs/world-transcoders \\
      --prompt "the flag of the land whose capital is vimfex is" --out runs/graphs
  interp circuit --model world --transcoders runs/world-transcoders --prompt "the flag of grexdra is" \\
      --out runs/graphs --intervene 3:42@-1=5 --intervene 2:7@-1*2

  --transcoders takes the --out of `interp transcoders` (layer_<L>/) or a circuit-tracer set
  (config.yaml + layer_<i>.safetensors). --store DIR puts each feature's top activating
  examples in the HTML view: one store of the transcoders' input hooks, from `interp harvest
  --hook blocks.0.hook_resid_mid ... --hook blocks.3.hook_resid_mid --out DIR`.
  --intervene LAYER:FEATURE[@POS,...]=VALUE sets a feature (0 zeroes it) and *SCALE multiplies
  it, in the real model with attention frozen (--free-attention lets it respond); the logit
  changes are printed.
"""

_EDIT = re.compile(r"^(\d+):(\d+)(?:@(-?\d+(?:,-?\d+)*))?(?:=(.+)|\*(.+))$")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("circuit", help="attribution graph of one prompt over transcoder features (JSON + HTML)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p, default="world", help="the model (default: world, the shipped model)")
    p.add_argument("--transcoders", required=True, type=path_text, help="directory of the transcoders (see below)")
    p.add_argument("--prompt", required=True, help="the prompt to explain (BOS is prepended)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--slug", default=None, help="name of the graph's files (default: from the prompt)")
    p.add_argument("--scan", default=None, help="name of the transcoder set in the JSON (default: the directory's)")
    p.add_argument("--store", default=None, help="activation store for each feature's top examples in the HTML")
    p.add_argument("--examples", type=bounded(int, 0, 100), default=5, help="top examples per feature (default 5)")
    p.add_argument("--save-graph", action="store_true", help="also save the whole unpruned graph")
    p.add_argument("--intervene", action="append", default=[], metavar="L:F[@POS]=V|*S",
                   help="a feature edit to test in the real model (repeatable; see below)")
    p.add_argument("--free-attention", action="store_true", help="interventions let attention patterns respond")
    add_config_options(p, CircuitConfig)
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    also_names(p, {"transcoders": "--transcoders", "prompt": "--prompt", "slug": "--slug", "edits": "--intervene"})
    p.set_defaults(func=run)


def default_slug(prompt: str) -> str:
    """``the flag of ...`` -> ``the-flag-of-...`` (letters, digits, '-'; at most 60)."""
    words = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()
    return (words[:60].rstrip("-") or "graph")


def parse_edit(text: str) -> Any:
    """``1:42@-1=0`` / ``1:42*2`` / ``1:42@3,4=1.5`` as a FeatureEdit."""
    from interp.circuits.interventions import FeatureEdit

    m = _EDIT.match(text.replace(" ", ""))
    if m is None:
        raise InterpError(f"--intervene {text!r}: write LAYER:FEATURE[@POS,...]=VALUE or LAYER:FEATURE[@POS,...]*SCALE, "
                          "e.g. 1:42@-1=0")
    layer, feature, pos, value, scale = m.groups()
    try:
        number = float(value if value is not None else scale)
    except ValueError:
        raise InterpError(f"--intervene {text!r}: {value if value is not None else scale!r} is not a number") from None
    positions = [int(x) for x in pos.split(",")] if pos else None
    return FeatureEdit(int(layer), int(feature), positions, value=number if value is not None else None,
                       scale=number if scale is not None else None)


def run(args: argparse.Namespace) -> int:
    from interp.circuits import ReplacementModel, attribute
    from interp.circuits.export import write_graph_files
    from interp.circuits.html import feature_examples, save_html
    from interp.circuits.interventions import check_edits
    from interp.model.loading import load

    cfg = config_values(CircuitConfig, args)
    edits = [parse_edit(t) for t in args.intervene]
    slug = args.slug or default_slug(args.prompt)
    out = Path(args.out)
    started = time.perf_counter()
    model = load(args.model, device=args.device)
    rm = ReplacementModel(model, args.transcoders, args.prompt, exclude_bos=cfg["exclude_bos"])
    check_edits(rm, edits)  # before the graph is built, not after
    graph = attribute(model, rm, max_n_logits=cfg["max_n_logits"], desired_logit_prob=cfg["desired_logit_prob"],
                      batch_size=cfg["batch_size"], max_feature_nodes=cfg["max_feature_nodes"],
                      update_interval=cfg["update_interval"], progress=not args.no_progress)
    graph.scan = args.scan or Path(args.transcoders).resolve().name
    pruned = graph.prune(cfg["node_threshold"], cfg["edge_threshold"])
    thresholds = {"node_threshold": cfg["node_threshold"], "edge_threshold": cfg["edge_threshold"]}
    json_path = write_graph_files(graph, out, slug, pruned=pruned, **thresholds)
    examples = {}
    if args.store:
        from interp.activations.store import ActivationStore, Manifest

        stored = [h.name for h in Manifest.read(Path(args.store)).hooks]
        wanted = [lt.hook_in for lt in rm.layers if lt.sae is not None and lt.hook_in in stored]
        if not wanted:
            raise InterpError(f"--store {args.store} holds none of the transcoders' input hooks "
                              f"({', '.join(lt.hook_in for lt in rm.layers if lt.sae is not None)}); harvest them "
                              "into one store (see the example)")
        store = ActivationStore.open(args.store, hook=wanted[0], model=model)
        tcs = {lt.layer: lt.sae for lt in rm.layers if lt.sae is not None}
        examples = feature_examples(model, tcs, store, graph, pruned, args.examples, progress=not args.no_progress)
    html_path = save_html(graph, out / f"{slug}.html", pruned=pruned, examples=examples, **thresholds)
    if args.save_graph:
        graph.save(out / f"{slug}.graph")
    print(summary(graph, pruned))
    if edits:
        print(intervention_report(model, rm, edits, freeze_attention=not args.free_attention))
    print(f"wrote {json_path} and {html_path} ({time.perf_counter() - started:.1f} s in all)")
    return 0


def summary(graph: Any, pruned: Any) -> str:
    scores = graph.scores()
    kept_features = int(pruned.node_mask[:graph.n_features].sum())
    logits = ", ".join(f"{s!r} {float(p):.3f}" for s, p in zip(graph.logit_strings, graph.logit_probabilities))
    return "\n".join([
        f"prompt: {graph.prompt!r} ({graph.n_pos} tokens)",
        f"logit nodes: {logits}",
        (f"active features {graph.n_features}, nodes {graph.n_nodes}; kept {kept_features} features, "
         f"{int(pruned.node_mask.sum())} nodes, {int(pruned.edge_mask.sum())} edges"),
        (f"replacement score {scores.replacement:.3f}, completeness {scores.completeness:.3f}; "
         f"edges sum to each input within {graph.input_residual():.1e} (relative)"),
        f"attribution took {graph.seconds:.2f} s",
    ])


def intervention_report(model: Any, rm: Any, edits: list[Any], freeze_attention: bool = True) -> str:
    from interp.circuits.interventions import intervene

    result = intervene(model, rm, edits=edits, freeze_attention=freeze_attention)
    before = ", ".join(f"{t!r} {p:.3f}" for t, p in result.top(5, clean=True))
    after = ", ".join(f"{t!r} {p:.3f}" for t, p in result.top(5))
    moved = ", ".join(f"{t!r} {d:+.3f}" for t, d in result.top_changes(5))
    return (f"intervention ({len(edits)} edits, attention {'frozen' if freeze_attention else 'free'}):\n"
            f"  next token before: {before}\n  next token after:  {after}\n  largest logit changes: {moved}")
