"""A single-file offline view of a pruned attribution graph.

Nodes sit by layer (rows: embeddings at the bottom, then each layer, logits on top) and
position (columns, labelled with the prompt's tokens); edges are drawn with a width by
their weight and a colour by their sign (blue excites, red inhibits). Clicking a node shows
what it is, its strongest incoming and outgoing edges (each a link to that node) and, for a
feature, its top activating examples from an activation store. No network access: the page
is plain HTML, CSS, SVG and a small script.

>>> from interp.circuits.html import save_html, feature_examples
>>> examples = feature_examples(model, transcoders, store, graph, pruned)   # optional
>>> save_html(graph, "graph.html", pruned=pruned, examples=examples)
"""
from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from interp.circuits.graph import AttributionGraph, PruneResult

ROW = 90          # px between layer rows
SPACING = 24      # px between nodes of one cell
MIN_COLUMN = 64   # px: the narrowest position column
MARGIN = 40


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element ("</" would end it early)."""
    return json.dumps(data).replace("</", "<\\/")


def _label(node: dict[str, Any]) -> str:
    kind = node["kind"]
    if kind == "feature":
        return f"L{node['layer']} #{node['feature']} @{node['pos']}"
    if kind == "error":
        return f"error L{node['layer']} @{node['pos']}"
    if kind == "token":
        return f"token {node['string']!r} @{node['pos']}"
    return f"logit {node['string']!r} (p={node['probability']:.3f})"


def _row(node: dict[str, Any], n_layers: int) -> int:
    return {"token": 0, "logit": n_layers + 1}.get(node["kind"], node.get("layer", 0) + 1)


def layout(graph: AttributionGraph, kept: list[int]) -> tuple[dict[int, tuple[float, float]], list[float], float, float]:
    """``({node: (x, y)}, column centres, width, height)`` in px: a column per position wide
    enough for its fullest cell, a row per layer."""
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in kept:
        n = graph.node(i)
        cells[(_row(n, graph.n_layers), n["pos"])].append(i)
    widths = [max([MIN_COLUMN] + [len(v) * SPACING + 16 for (r, p), v in cells.items() if p == pos])
              for pos in range(graph.n_pos)]
    starts = [MARGIN + sum(widths[:p]) for p in range(graph.n_pos)]
    n_rows = graph.n_layers + 2
    where = {}
    for (row, pos), ids in cells.items():
        centre = starts[pos] + widths[pos] / 2
        for j, i in enumerate(sorted(ids, key=lambda i: (graph.node(i)["kind"] == "error", i))):
            where[i] = (centre + (j - (len(ids) - 1) / 2) * SPACING, MARGIN + (n_rows - 1 - row) * ROW)
    centres = [s + w / 2 for s, w in zip(starts, widths)]
    return where, centres, MARGIN * 2 + sum(widths), MARGIN * 2 + (n_rows - 1) * ROW + 40


def page_data(graph: AttributionGraph, pruned: PruneResult, examples: dict[str, str] | None = None) -> dict[str, Any]:
    """What the page's script draws: nodes with positions, links, axis labels, examples."""
    kept = pruned.node_mask.nonzero().squeeze(1).tolist()
    where, centres, width, height = layout(graph, kept)
    scores = pruned.cumulative_scores
    nodes = []
    for i in kept:
        n = graph.node(i)
        key = f"{n['layer']}_{n['feature']}" if n["kind"] == "feature" else None
        nodes.append({"id": i, "kind": n["kind"], "label": _label(n), "x": round(where[i][0], 1),
                      "y": round(where[i][1], 1), "influence": round(float(scores[i]), 4),
                      "activation": n.get("activation"), "key": key,
                      "input": round(float(graph.node_inputs[i]), 4)})
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources]
    links = [{"s": s, "t": t, "w": round(float(w), 5)} for t, s, w in
             zip(targets.tolist(), sources.tolist(), weights.tolist()) if s in where and t in where]
    rows = ["embeddings", *[f"layer {i}" for i in range(graph.n_layers)], "logits"]
    return {"nodes": nodes, "links": links, "width": width, "height": height,
            "columns": [{"x": c, "token": t} for c, t in zip(centres, graph.token_strings)],
            "rows": [{"y": MARGIN + (len(rows) - 1 - r) * ROW, "name": name} for r, name in enumerate(rows)],
            "examples": examples or {}}


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2937;background:#fff}
header{padding:12px 18px;border-bottom:1px solid #e5e7eb}
h1{font-size:18px;margin:0 0 4px}
header p{margin:2px 0;font-size:13px;color:#4b5563}
main{display:flex;align-items:flex-start;gap:0;min-height:0}
#graph-box{flex:1 1 auto;overflow:auto;min-width:0;max-height:calc(100vh - 90px)}
#panel{flex:0 0 340px;max-width:40vw;border-left:1px solid #e5e7eb;padding:12px 14px;font-size:13px;
  max-height:calc(100vh - 90px);overflow:auto;box-sizing:border-box}
#panel h2{font-size:15px;margin:0 0 6px}
#panel table{border-collapse:collapse;width:100%}
#panel td{padding:2px 4px;border-bottom:1px solid #f3f4f6;vertical-align:top}
#panel td.w{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#panel a{color:#1d4ed8;cursor:pointer;text-decoration:none}
.link{fill:none;stroke-linecap:round}
.link.dim{opacity:.06!important}
.node{cursor:pointer;stroke:#111827;stroke-width:.8}
.node.feature{fill:#fbbf24}.node.error{fill:#9ca3af}.node.token{fill:#a7f3d0}.node.logit{fill:#c4b5fd}
.node.selected{stroke:#dc2626;stroke-width:2.5}
.axis{font-size:11px;fill:#374151}
.rowname{font-size:11px;fill:#6b7280}
.example{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:nowrap;overflow:hidden;
  display:flex;margin:2px 0;border-bottom:1px solid #f3f4f6}
.example .v{flex:0 0 3.5em;color:#6b7280}
.example .left{flex:1 1 0;overflow:hidden;direction:rtl;text-align:right;white-space:nowrap}
.example .left>span{direction:ltr;unicode-bidi:isolate}
.example .right{flex:1 1 0;overflow:hidden;white-space:nowrap}
.tok{padding:0 1px;border-radius:2px}.tok.own{outline:1.5px solid #111827}
.note{color:#6b7280}
"""

SCRIPT = """
(function () {
  var D = JSON.parse(document.getElementById('graph-data').textContent);
  var NS = 'http://www.w3.org/2000/svg';
  var svg = document.getElementById('graph');
  svg.setAttribute('viewBox', '0 0 ' + D.width + ' ' + D.height);
  svg.setAttribute('width', D.width); svg.setAttribute('height', D.height);
  var byId = {}; D.nodes.forEach(function (n) { byId[n.id] = n; });
  var maxW = D.links.reduce(function (m, l) { return Math.max(m, Math.abs(l.w)); }, 1e-12);
  function el(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  D.rows.forEach(function (r) { svg.appendChild(el('text', {x: 4, y: r.y - 8, 'class': 'rowname'}, r.name)); });
  D.columns.forEach(function (c, i) {
    svg.appendChild(el('text', {x: c.x, y: D.height - 14, 'text-anchor': 'middle', 'class': 'axis'}, c.token));
  });
  var linkEls = [];
  var gl = el('g', {}); svg.appendChild(gl);
  D.links.forEach(function (l) {
    var a = byId[l.s], b = byId[l.t], f = Math.abs(l.w) / maxW;
    var dy = (b.y - a.y) / 2;
    var p = el('path', {d: 'M' + a.x + ',' + a.y + ' C' + a.x + ',' + (a.y + dy) + ' ' + b.x + ',' + (b.y - dy) +
                        ' ' + b.x + ',' + b.y, 'class': 'link',
                        stroke: l.w >= 0 ? '#2563eb' : '#dc2626', 'stroke-width': (0.4 + 4 * f).toFixed(2),
                        opacity: (0.15 + 0.6 * f).toFixed(2)});
    p.dataset.s = l.s; p.dataset.t = l.t; gl.appendChild(p); linkEls.push(p);
  });
  var nodeEls = {};
  D.nodes.forEach(function (n) {
    var e = n.kind === 'error' ? el('rect', {x: n.x - 5, y: n.y - 5, width: 10, height: 10})
                               : el('circle', {cx: n.x, cy: n.y, r: n.kind === 'feature' ? 6 : 7});
    e.setAttribute('class', 'node ' + n.kind); e.dataset.id = n.id;
    e.appendChild(el('title', {}, n.label));
    e.addEventListener('click', function () { select(n.id); });
    svg.appendChild(e); nodeEls[n.id] = e;
  });
  function edgeRows(list, other) {
    list.sort(function (x, y) { return Math.abs(y.w) - Math.abs(x.w); });
    return '<table>' + list.slice(0, 12).map(function (l) {
      var n = byId[l[other]];
      return '<tr><td><a data-go="' + n.id + '">' + esc(n.label) + '</a></td><td class="w">' + l.w.toFixed(3) + '</td></tr>';
    }).join('') + '</table>';
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]; }); }
  function select(id) {
    var n = byId[id];
    Object.keys(nodeEls).forEach(function (k) { nodeEls[k].classList.toggle('selected', +k === id); });
    linkEls.forEach(function (p) { p.classList.toggle('dim', +p.dataset.s !== id && +p.dataset.t !== id); });
    var ins = D.links.filter(function (l) { return l.t === id; });
    var outs = D.links.filter(function (l) { return l.s === id; });
    var h = '<h2>' + esc(n.label) + '</h2><p>' + n.kind + (n.activation !== null ? ' · activation <b>' +
            n.activation.toFixed(3) + '</b>' : '') + ' · cumulative influence ' + n.influence.toFixed(3) + '</p>';
    if (n.kind === 'feature') {
      var ex = D.examples[n.key];
      h += '<h3>Top activating examples</h3>' + (ex ? '<div class="examples">' + ex + '</div>' :
           '<p class="note">no examples: build the page with an activation store of this layer</p>');
    }
    h += '<h3>Inputs (' + ins.length + ')</h3>' + edgeRows(ins, 's') + '<h3>Outputs (' + outs.length + ')</h3>' +
         edgeRows(outs, 't');
    var panel = document.getElementById('panel');
    panel.innerHTML = h; panel.dataset.node = id;
    panel.querySelectorAll('a[data-go]').forEach(function (a) {
      a.addEventListener('click', function () { select(+a.dataset.go); });
    });
  }
  var first = D.nodes.filter(function (n) { return n.kind === 'logit'; })[0];
  if (first) select(first.id);
  // The prompt's end, where the logits sit, is where a reader starts.
  var box = document.getElementById('graph-box'); box.scrollLeft = box.scrollWidth;
  document.body.dataset.rendered = String(D.nodes.length);
})();
"""


def graph_html(graph: AttributionGraph, *, pruned: PruneResult | None = None, node_threshold: float = 0.8,
               edge_threshold: float = 0.98, examples: dict[str, str] | None = None) -> str:
    """The page (see the module docstring); ``examples`` maps ``"<layer>_<feature>"`` to the
    HTML of that feature's examples (:func:`feature_examples`)."""
    pruned = pruned or graph.prune(node_threshold, edge_threshold)
    data = page_data(graph, pruned, examples)
    scores = graph.scores()
    n_kept = int(pruned.node_mask[:graph.n_features].sum())
    title = f"Attribution graph: {graph.prompt}"
    header = (f"<header><h1>{html.escape(title)}</h1><p>model <b>{html.escape(graph.model_name or '?')}</b> · "
              f"{n_kept} of {graph.n_features} active features, {len(data['links'])} edges kept (node threshold "
              f"{node_threshold:g}, edge threshold {edge_threshold:g}) · replacement score "
              f"<b>{scores.replacement:.3f}</b> · completeness <b>{scores.completeness:.3f}</b></p>"
              "<p>Click a node for its inputs, outputs and examples; blue edges excite, red inhibit.</p></header>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{header}\n"
            '<main><div id="graph-box"><svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg></div>'
            '<aside id="panel"></aside></main>\n'
            f'<script type="application/json" id="graph-data">{_script_json(data)}</script>\n'
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def save_html(graph: AttributionGraph, path: str | os.PathLike, **options: Any) -> Path:
    """Write :func:`graph_html` to ``path`` atomically."""
    from saes.formats.durable import atomic_write_text

    atomic_write_text(Path(path), graph_html(graph, **options))
    return Path(path)


def feature_examples(model: Any, transcoders: dict[int, Any], store: Any, graph: AttributionGraph,
                     pruned: PruneResult, n_examples: int = 5, progress: bool = False) -> dict[str, str]:
    """``{"<layer>_<feature>": HTML}`` for the features kept in ``pruned``: each one's top
    activating examples from ``store``, read at its transcoder's input hook (one store of
    several hooks serves every layer; layers whose hook it lacks get none), and the labelled
    concepts it detects best where the store has labels (the world's planted ones)."""
    from interp.dashboards import build_dashboard
    from interp.dashboards.render import example_html
    from interp.evaluation.transcoders import mlp_hooks

    kept = pruned.node_mask[:graph.n_features].nonzero().squeeze(1)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, feature in graph.active_features[kept][:, [0, 2]].tolist():
        if feature not in by_layer[layer]:
            by_layer[layer].append(feature)
    out = {}
    for layer, features in sorted(by_layer.items()):
        tc = transcoders.get(layer)
        hook = (getattr(tc, "metadata", None) or {}).get("hook_name") or mlp_hooks(model, layer)[0]
        if tc is None or hook not in store.hooks:
            continue
        dash = build_dashboard(model, tc, store.select(hook), features, n_examples=n_examples,
                               n_quantile_examples=0, progress=progress)
        for card in dash.cards:
            scale = max(card.max_value, 1e-12)
            matches = "".join(f"<li>{html.escape(m.label)} (AUROC {m.auroc:.2f})</li>" for m in card.label_matches[:3])
            out[f"{layer}_{card.latent}"] = ("".join(example_html(e, scale) for e in card.top)
                                             + (f"<p>Detects best:</p><ul>{matches}</ul>" if matches else ""))
    return out
