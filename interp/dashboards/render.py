"""HTML and plotly views of a :class:`~interp.dashboards.dashboard.Dashboard` and its cards.

The page is self-contained: plotly.js is inlined once in ``<head>``, every figure's JSON
sits in a ``<script type="application/json">`` block, and one inline script draws them all.
When every figure is drawn, it sets ``<body data-rendered="N">`` (the browser test reads it).
"""
from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from interp.dashboards.data import Example, LatentCard, layer_id

if TYPE_CHECKING:  # the Dashboard's views call these functions: the dependency runs one way
    from interp.dashboards.dashboard import Dashboard

FIRE_RGB = "255, 110, 0"  # positive codes
NEG_RGB = "40, 110, 255"  # negative codes (signed dictionaries)
GOOD_AUROC = 0.75  # below this the panel does not name a best label

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
nav a { margin-right: .6em; }
.feature-panel { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em 1em; margin: 1em 0; }
.feature-panel h2 { margin: .3em 0; }
.stats span { margin-right: 1.5em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; }
.plot { width: 440px; height: 300px; }
table.small { border-collapse: collapse; font-size: 90%; }
table.small td, table.small th { padding: 1px 8px; text-align: left; }
.examples { font-family: ui-monospace, monospace; font-size: 85%; }
.example { margin: 2px 0; white-space: nowrap; overflow-x: auto; }
.example .v { display: inline-block; width: 5.5em; color: #666; }
.tok { white-space: pre; border-radius: 2px; padding: 0 1px; margin-right: 3px; }
.tok.own { outline: 1.5px solid #000; }
h4 { margin: .6em 0 .2em; }
.note { color: #777; font-style: italic; }
"""


# ---------------------------------------------------------------- figures


def latent_figures(card: LatentCard) -> dict[str, Any]:
    import plotly.graph_objects as go

    figures: dict[str, Any] = {}
    width = (card.hist_edges[1] - card.hist_edges[0]) if len(card.hist_edges) > 1 else 1.0
    hist = go.Figure(go.Bar(x=card.hist_centres, y=card.hist_counts, width=width, marker_color=f"rgb({FIRE_RGB})",
                            hovertemplate="activation %{x:.3g}<br>%{y} tokens<extra></extra>"))
    hist.update_layout(title=f"Activations when firing (density {_percent(card.density)})", xaxis_title="activation",
                       yaxis_title="tokens", bargap=0, margin=dict(l=50, r=10, t=40, b=40))
    figures["histogram"] = hist
    if card.promoted:
        tokens = [t for t, _ in card.suppressed][::-1] + [t for t, _ in card.promoted][::-1]
        values = [v for _, v in card.suppressed][::-1] + [v for _, v in card.promoted][::-1]
        labels = [repr(t) for t in tokens]
        if len(set(labels)) < len(labels):  # a categorical axis would merge repeated strings into one bar
            labels = [f"{i}: {t}" for i, t in enumerate(labels)]
        logits = go.Figure(go.Bar(x=values, y=labels, orientation="h",
                                  marker_color=[f"rgb({FIRE_RGB})" if v > 0 else f"rgb({NEG_RGB})" for v in values],
                                  hovertemplate="%{y}<br>logit effect %{x:.3g}<extra></extra>"))
        logits.update_layout(title="Promoted and suppressed tokens", xaxis_title="logit effect (W_U · decoder row)",
                             margin=dict(l=120, r=10, t=40, b=40), yaxis=dict(tickfont=dict(size=9), dtick=1))
        figures["logits"] = logits
    if card.logit_hist_counts:
        lh = go.Figure(go.Bar(x=card.logit_hist_centres, y=card.logit_hist_counts, marker_color="#888"))
        lh.update_layout(title="Logit effect on every token", xaxis_title="logit effect", yaxis_title="tokens",
                         bargap=0, margin=dict(l=50, r=10, t=40, b=40))
        figures["logit_histogram"] = lh
    return figures


# ---------------------------------------------------------------- examples


def _shade(value: float, scale: float) -> str:
    if value == 0 or scale <= 0:
        return "transparent"
    alpha = min(abs(value) / scale, 1.0)
    return f"rgba({FIRE_RGB if value > 0 else NEG_RGB}, {alpha:.3f})"


def _token_text(token: str) -> str:
    return html.escape(token.replace("\n", "↵").replace("\t", "⇥") or "∅")


def example_html(example: Example, scale: float) -> str:
    spans = []
    for i, (tok, v) in enumerate(zip(example.tokens, example.values)):
        own = " own" if i == example.token_index else ""
        spans.append(f'<span class="tok{own}" style="background:{_shade(v, scale)}" title="{v:.4g}">'
                     f"{_token_text(tok)}</span>")
    return f'<div class="example" data-row="{example.row}"><span class="v">{example.value:.3g}</span>{"".join(spans)}</div>'


def examples_html(card: LatentCard) -> str:
    # One shading scale per latent (its maximum), so examples compare across groups.
    scale = max(card.max_value, -card.min_value, 1e-12)
    parts = [f'<div class="examples" data-latent="{card.latent}">']
    parts.append(f"<h4>Top activations (max {card.max_value:.4g})</h4>")
    if not card.top:
        parts.append('<p class="note">this latent never fires on the store</p>')
    parts += [example_html(e, scale) for e in card.top]
    for g in reversed(card.quantiles):  # highest group first, continuing from the top examples
        parts.append(f"<h4>Activations {g.lo:.3g} – {g.hi:.3g} ({g.contains:.1%} of firing tokens)</h4>")
        parts += [example_html(e, scale) for e in g.examples]
    parts.append("</div>")
    return "\n".join(parts)


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows)
    return f'<table class="small"><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>'


def _side_tables(card: LatentCard) -> str:
    parts = []
    if card.label_matches:
        parts.append("<div><h4>Best-matching labels (AUROC; ranked by its lower 95% bound)</h4>"
                     + _table([(m.label, f"{m.auroc:.3f} ({m.n_positive} tokens)") for m in card.label_matches],
                              ("label", "AUROC")) + "</div>")
    if card.promoted:
        parts.append("<div><h4>Promoted tokens</h4>"
                     + _table([(repr(t), f"{v:+.3g}") for t, v in card.promoted], ("token", "logit")) + "</div>")
        parts.append("<div><h4>Suppressed tokens</h4>"
                     + _table([(repr(t), f"{v:+.3g}") for t, v in card.suppressed], ("token", "logit")) + "</div>")
    elif card.logits_note:
        parts.append(f'<p class="note">{html.escape(card.logits_note)}</p>')
    return f'<div class="row">{"".join(parts)}</div>'


def _percent(x: float) -> str:
    return f"{100 * x:.3g}%"


def _stats(card: LatentCard) -> str:
    best = card.label_matches[0] if card.label_matches else None
    label = ""
    if best is not None and best.auroc >= GOOD_AUROC:
        label = f"<span>best label <b>{html.escape(best.label)}</b> (AUROC {best.auroc:.3f})</span>"
    elif best is not None:  # naming a label that barely beats chance would mislead
        label = f"<span>no label at AUROC ≥ {GOOD_AUROC} (best {best.auroc:.3f})</span>"
    return (f'<div class="stats"><span>density <b>{_percent(card.density)}</b> ({card.n_fire:,} of {card.n_rows:,} '
            f"tokens)</span><span>max <b>{card.max_value:.4g}</b></span>{label}</div>")


# ---------------------------------------------------------------- page


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element ("</" would end the element early)."""
    from plotly.utils import PlotlyJSONEncoder

    return json.dumps(data, cls=PlotlyJSONEncoder).replace("</", "<\\/")


def _panel(card: LatentCard) -> tuple[str, int]:
    figures = latent_figures(card)
    plots = []
    for name, fig in figures.items():
        spec = fig.to_plotly_json()
        spec["layout"].pop("template", None)  # one shared template for the page, not one per figure
        fid = f"fig-{card.latent}-{name}"
        plots.append(f'<div class="plot" data-figure="{fid}"></div>'
                     f'<script type="application/json" id="{fid}">{_script_json(spec)}</script>')
    body = (f'<section class="feature-panel" id="latent-{card.latent}" data-latent="{card.latent}">'
            f"<h2>Latent {card.latent}</h2>{_stats(card)}"
            f'<div class="row">{"".join(plots)}</div>{_side_tables(card)}{examples_html(card)}</section>')
    return body, len(plots)


def page_html(dash: Dashboard) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    title = f"{dash.model_name} {dash.hook}: latents {', '.join(map(str, dash.latents))}"
    panels = [_panel(c) for c in dash.cards]
    template = pio.templates["plotly_white"].to_plotly_json()
    d = dash.dictionary
    header = (f"<header><h1>Feature dashboard</h1><p>model <b>{html.escape(dash.model_name)}</b> · hook "
              f"<b>{html.escape(dash.hook)}</b> ({layer_id(dash.hook)}) · {html.escape(str(d.get('architecture')))} "
              f"{d.get('kind')} with {d.get('d_sae')} latents · {dash.n_rows:,} tokens · labels: "
              f"{html.escape(dash.labels_source or 'none')}</p><nav>"
              + "".join(f'<a href="#latent-{i}">{i}</a>' for i in dash.latents) + "</nav></header>")
    draw = """
(function () {
  var template = JSON.parse(document.getElementById('plotly-template').textContent);
  var jobs = [];
  document.querySelectorAll('.plot[data-figure]').forEach(function (div) {
    var spec = JSON.parse(document.getElementById(div.dataset.figure).textContent);
    spec.layout.template = template;
    jobs.push(Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, displayModeBar: false, responsive: true}));
  });
  Promise.all(jobs).then(function () { document.body.dataset.rendered = String(jobs.length); });
})();
"""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>\n"
        f"<script>{get_plotlyjs()}</script>\n</head><body data-panels=\"{len(panels)}\">\n{header}\n"
        + "\n".join(p for p, _ in panels)
        + f'\n<script type="application/json" id="plotly-template">{_script_json(template)}</script>'
        + f"\n<script>{draw}</script>\n</body></html>\n"
    )


def notebook_html(dash: Dashboard) -> str:
    """A light view for Jupyter: stats, tables and shaded examples (figures via ``dash.figures``)."""
    parts = [f"<style>{CSS}</style><div><b>{html.escape(dash.model_name)}</b> · {html.escape(dash.hook)} · "
             f"{dash.n_rows:,} tokens</div>"]
    for card in dash.cards:
        parts.append(f'<div class="feature-panel"><h3>Latent {card.latent}</h3>{_stats(card)}'
                     f"{_side_tables(card)}{examples_html(card)}</div>")
    return "\n".join(parts)
