"""The graph JSON that circuit-tracer's and Neuronpedia's attribution-graph viewers read.

The layout is circuit-tracer 0.5's ``create_graph_files`` (``frontend/graph_models.py``):
``{"metadata", "qParams", "nodes", "links"}`` with the pruned graph's nodes and edges, node
ids ``{layer}_{feature}_{pos}`` (features), ``0_{layer}_{pos}`` (errors),
``E_{token}_{pos}`` (tokens) and ``{n_layers + 1}_{token}_{pos}`` (logits), and each node's
place in the cumulative influence as ``influence``. The viewer's ``graph-metadata.json``
lists the graphs of a directory.

>>> data = graph_json(graph, "capital-mip", node_threshold=0.8, edge_threshold=0.98)
>>> write_graph_files(graph, "graphs/", "capital-mip")   # graphs/capital-mip.json + graph-metadata.json
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from interp.circuits.graph import AttributionGraph, PruneResult
from interp.errors import InterpError

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
METADATA_FILE = "graph-metadata.json"
FEATURE_TYPE = "cross layer transcoder"  # what circuit-tracer labels per-layer transcoder features too


def cantor(x: int, y: int) -> int:
    """Cantor's pairing of two non-negative integers (circuit-tracer's feature ids)."""
    return (x + y) * (x + y + 1) // 2 + y


def _node(graph: AttributionGraph, i: int, influence: float) -> dict[str, Any]:
    n = graph.node(i)
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
            "influence": influence, "activation": None, "ctx_idx": n["pos"]}
    if n["kind"] == "feature":
        layer, feature = n["layer"], n["feature"]
        return {**base, "node_id": f"{layer}_{feature}_{n['pos']}", "feature": cantor(layer, feature),
                "layer": str(layer), "feature_type": FEATURE_TYPE, "jsNodeId": f"{layer}_{feature}-0",
                "activation": n["activation"]}
    if n["kind"] == "error":
        return {**base, "node_id": f"0_{n['layer']}_{n['pos']}", "feature": -1, "layer": str(n["layer"]),
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{n['layer']}_{n['pos']}-0"}
    if n["kind"] == "token":
        return {**base, "node_id": f"E_{n['token']}_{n['pos']}", "feature": n["pos"], "layer": "E",
                "feature_type": "embedding", "jsNodeId": f"E_{n['token']}-{n['pos']}"}
    layer = str(graph.n_layers + 1)
    return {**base, "node_id": f"{layer}_{n['token']}_{n['pos']}", "feature": n["token"], "layer": layer,
            "feature_type": "logit", "token_prob": n["probability"], "is_target_logit": i == graph.logit_start,
            "jsNodeId": f"L_{n['token']}-{n['pos']}", "clerp": f'Output "{n["string"]}" (p={n["probability"]:.3f})'}


def graph_json(graph: AttributionGraph, slug: str, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               scan: str | None = None, pruned: PruneResult | None = None) -> dict[str, Any]:
    """The pruned graph as circuit-tracer's viewer JSON (see the module docstring).

    ``scan`` names the transcoder set (Neuronpedia looks features up by it); default the
    graph's own. ``pruned`` reuses a :meth:`AttributionGraph.prune` result made with the same
    thresholds.
    """
    if not SLUG.match(slug):
        raise InterpError(f"slug {slug!r} must be 1-128 letters, digits, '.', '_' or '-' (it names the JSON file)")
    pruned = pruned or graph.prune(node_threshold, edge_threshold)
    scores = pruned.cumulative_scores.tolist()
    nodes = {i: _node(graph, i, scores[i]) for i in pruned.node_mask.nonzero().squeeze(1).tolist()}
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources].tolist()
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
             for t, s, w in zip(targets.tolist(), sources.tolist(), weights) if s in nodes and t in nodes]
    linked = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    metadata = {"slug": slug, "scan": scan or graph.scan or graph.model_name or "interp", "transcoder_list": [],
                "prompt_tokens": list(graph.token_strings), "prompt": graph.prompt,
                "node_threshold": node_threshold, "schema_version": 1}
    return {"metadata": metadata,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": used, "links": links}


def write_graph_files(graph: AttributionGraph, directory: str | os.PathLike, slug: str, **options: Any) -> Path:
    """``directory/<slug>.json`` and the directory's ``graph-metadata.json`` (this graph's
    entry added or replaced), both written atomically. ``options`` as for :func:`graph_json`."""
    from saes.formats import schema
    from saes.formats.durable import atomic_write_text, ensure_directory

    data = graph_json(graph, slug, **options)
    d = Path(directory)
    ensure_directory(d)
    path = d / f"{slug}.json"
    atomic_write_text(path, json.dumps(data, indent=1))
    listing: dict[str, Any] = {"graphs": []}
    if (d / METADATA_FILE).is_file():
        found = schema.read_json(d / METADATA_FILE, InterpError)
        if not isinstance(found, dict) or not isinstance(found.get("graphs"), list):
            raise InterpError(f"{d / METADATA_FILE} is not a graph listing ({{\"graphs\": [...]}}); move it away")
        listing = found
    listing["graphs"] = [g for g in listing["graphs"] if not (isinstance(g, dict) and g.get("slug") == slug)]
    listing["graphs"].append(data["metadata"])
    atomic_write_text(d / METADATA_FILE, json.dumps(listing, indent=2))
    return path
