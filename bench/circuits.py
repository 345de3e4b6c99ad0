"""Attribution graphs: speed as the prompt and the feature count grow, and the same graph as
circuit-tracer's.

    python bench/circuits.py speed [--lengths 10,30,60,120] [--k 8,16,32,64] [--threads 2]
    python bench/circuits.py compare --transcoders CT_SET_DIR --ct-python /path/to/python \\
        [--prompt "..."] [--threads 2]
    python bench/circuits.py planted --transcoders DIR [DIR ...] [--pairs 40]

``speed`` times :func:`interp.circuits.attribute` on the world model with random BatchTopK-
shaped TopK transcoders (d_sae 2048, ``k`` features per token and layer; the cost depends on
how many features are active, not on what they mean) over prompts of world text of each
length, and prints one JSON line per run and a markdown table.

``compare`` builds the graph of one prompt twice from the same circuit-tracer transcoder set
(``interp transcoders`` writes one, ``DIR/circuit-tracer``): here, and with circuit-tracer
0.5.0 itself under ``--ct-python`` (a Python with circuit-tracer and its pins, running
bench/circuit_tracer_graph.py), then compares the node sets and the edge weights and
prints both times.

``planted`` runs :func:`interp.circuits.planted.bridge_check` (the bridge land of
``the flag of the land whose capital is CITY is``) with the transcoders of the given
directories (later ones override earlier ones layer by layer) and prints its table. The
layer-0 transcoder it needs is trained on the world's fact text::

    python -c "from interp.circuits.planted import bridge_corpus; print('\\n'.join(bridge_corpus(16)))" > facts.txt
    interp transcoders --model world --layers 0 --data facts.txt --arch batchtopk --d-sae 4096 --k 32 \\
        --tokens 1000000 --batch-size 1024 --eval-tokens 2000 --out runs/l0-facts
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _world_prompt(model, length: int) -> torch.Tensor:
    """``length`` tokens (BOS first) of world fact text."""
    from interp.world import World

    words: list[str] = []
    for doc in World().iter_docs(200, seed=3):
        words += doc.tokens[1:-1]
        if len(words) >= length:
            break
    return model.to_tokens(" ".join(words[:length - 1]))[0]


def speed(args: argparse.Namespace) -> None:
    import saes
    from interp import load
    from interp.circuits import ReplacementModel, attribute

    model = load("world")
    rows = []
    for k in (int(x) for x in args.k.split(",")):
        gen = torch.Generator().manual_seed(0)
        tcs = {}
        for layer in range(model.n_layers):
            tc = saes.TopKSAE(model.d_model, 2048, k=k, d_out=model.d_model,
                              metadata={"hook_name": f"blocks.{layer}.hook_resid_mid",
                                        "hook_name_out": f"blocks.{layer}.hook_mlp_out"})
            tc.reset_parameters(gen)
            tcs[layer] = tc.eval()
        for length in (int(x) for x in args.lengths.split(",")):
            tokens = _world_prompt(model, length)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                rm = ReplacementModel(model, tcs, tokens)
                graph = attribute(model, rm, batch_size=args.batch_size)
                times.append(time.perf_counter() - started)
            row = {"tokens": int(tokens.numel()), "k": k, "features": graph.n_features, "nodes": graph.n_nodes,
                   "seconds": round(statistics.median(times), 3), "seconds_all": [round(t, 3) for t in times],
                   "input_residual": graph.input_residual(), "threads": torch.get_num_threads()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| prompt tokens | k per layer | active features | nodes | seconds (median) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['k']} | {r['features']:,} | {r['nodes']:,} | {r['seconds']:.2f} |")


def compare(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    from interp import load
    from interp.circuits import ReplacementModel, attribute
    from interp.world import default_model_path

    model = load("world")
    tokens = model.to_tokens(args.prompt)[0]
    rm = ReplacementModel(model, args.transcoders, tokens)
    limit = {"max_feature_nodes": args.max_feature_nodes}
    attribute(model, rm, batch_size=args.batch_size, **limit)       # warm-up, as circuit-tracer's second run below
    started = time.perf_counter()
    rm = ReplacementModel(model, args.transcoders, tokens)
    ours = attribute(model, rm, batch_size=args.batch_size, **limit)
    ours_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.ct_python, str(HERE / "circuit_tracer_graph.py"), "--model", str(default_model_path()),
               "--transcoders", str(args.transcoders), "--tokens", ",".join(map(str, tokens.tolist())),
               "--out", tmp, "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
        if args.max_feature_nodes:
            cmd += ["--max-feature-nodes", str(args.max_feature_nodes)]
        subprocess.run(cmd, check=True, capture_output=not args.verbose)
        theirs = load_file(str(Path(tmp) / "graph.safetensors"))
        timing = json.loads((Path(tmp) / "graph.json").read_text())
    # Their active_features lists every active feature; the graph's nodes are the selected ones.
    their_nodes = theirs["active_features"].long()[theirs["selected_features"].long()]
    ours_set, theirs_set = set(map(tuple, ours.active_features.tolist())), set(map(tuple, their_nodes.tolist()))
    same_features = torch.equal(their_nodes, ours.active_features.long())
    same_logits = theirs["logit_tokens"].tolist() == ours.logit_tokens
    report = {"prompt": args.prompt, "tokens": int(tokens.numel()), "features_ours": ours.n_features,
              "features_circuit_tracer": len(their_nodes), "active_features": int(theirs["active_features"].shape[0]),
              "max_feature_nodes": args.max_feature_nodes, "same_feature_nodes": same_features,
              "shared_feature_nodes": len(ours_set & theirs_set) / max(len(theirs_set), 1),
              "same_logit_nodes": same_logits, "seconds_ours": round(ours_seconds, 3),
              "seconds_circuit_tracer": round(timing["attribute_seconds"], 3), "threads": torch.get_num_threads()}
    if same_features and same_logits:
        a, b = ours.adjacency, theirs["adjacency_matrix"].float()
        scale = float(b.abs().max())
        report.update({"max_abs_edge_difference": float((a - b).abs().max()), "largest_edge": scale,
                       "relative_difference": float((a - b).abs().max()) / scale,
                       "activation_difference": float((ours.activations - theirs["activation_values"][theirs["selected_features"].long()]).abs().max())})
        ours_pruned = ours.prune()
        from interp.circuits.graph import AttributionGraph

        theirs_graph = AttributionGraph(**{**ours.__dict__, "adjacency": b})
        report["same_pruned_nodes"] = torch.equal(ours_pruned.node_mask, theirs_graph.prune().node_mask)
    print(json.dumps(report, indent=1))


def planted(args: argparse.Namespace) -> None:
    from interp import load
    from interp.circuits import load_transcoders
    from interp.circuits.planted import bridge_check

    model = load("world")
    tcs: dict = {}
    for d in args.transcoders:
        tcs.update(load_transcoders(d))
    started = time.perf_counter()
    check = bridge_check(model, tcs, n_pairs=args.pairs)
    print(check.table())
    print(json.dumps({**{k: v for k, v in check.__dict__.items() if k != "pairs"},
                      "layers": sorted(tcs), "seconds": round(time.perf_counter() - started, 1)}))
    if args.renderings:
        from interp.circuits.planted import rendering_check

        started = time.perf_counter()
        renderings = rendering_check(model, tcs, n_items=args.renderings)
        print(renderings.table())
        print(json.dumps({**renderings.renderings, "seconds": round(time.perf_counter() - started, 1)}))
    if args.instructions:
        from interp.circuits.planted import instruction_check

        started = time.perf_counter()
        gate = instruction_check(model, tcs, n_items=args.instructions)
        print(gate.table())
        print(json.dumps({**gate.directions, "seconds": round(time.perf_counter() - started, 1)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--lengths", default="10,30,60,120")
    s.add_argument("--k", default="8,16,32,64")
    s.add_argument("--repeats", type=int, default=3)
    c = sub.add_parser("compare")
    c.add_argument("--transcoders", required=True, type=Path, help="a circuit-tracer transcoder set")
    c.add_argument("--ct-python", required=True, help="a Python with circuit-tracer 0.5.0 installed")
    c.add_argument("--prompt", default="the flag of the land whose capital is vimfex is")
    c.add_argument("--max-feature-nodes", type=int, default=None,
                   help="both attribute only this many features, the most influential first")
    c.add_argument("--verbose", action="store_true")
    w = sub.add_parser("planted")
    w.add_argument("--transcoders", required=True, nargs="+", type=Path)
    w.add_argument("--pairs", type=int, default=40)
    w.add_argument("--renderings", type=int, default=0, help="also the PK/CK renderings check on this many QA items")
    w.add_argument("--instructions", type=int, default=0,
                   help="also the instruction's gate (instruction_check) on this many conflicting QA items")
    for q in (s, c, w):
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"speed": speed, "compare": compare, "planted": planted}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
