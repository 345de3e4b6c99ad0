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

PAGE_FIGURES = ("histogram", "logit_histogram")  # the promoted/suppressed lists are tables on the page

# Layout of a panel (a CSS grid). Wide screens: the tables in a narrow left column beside a
# main column of top examples, histograms and group examples, so neither column leaves a
# hole beside a taller neighbour. Narrow screens: one column, top examples first, then the
# tables, histograms and group examples. Either way the top examples open the first screen.
# The histograms sit in a grid whose columns stretch to fill the width (two side by side
# down to about 650 px), so no fixed-size plot leaves a gap at the end of a row.
CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: .5em; }
header h1 { font-size: 1.4em; margin: .4em 0 .2em; }
header p { margin: .2em 0 .4em; }
nav a { margin-right: .6em; }
.feature-panel { border: 1px solid #ddd; border-radius: 6px; padding: .4em 1em 1em; margin: 1em 0; }
.feature-panel h2 { margin: .2em 0; font-size: 1.3em; }
.reason { margin: 0 0 .3em; color: #444; }
.stats span { margin-right: 1.5em; }
.panel-grid { display: grid; grid-template-columns: minmax(0, 1fr);
  grid-template-areas: "top" "side" "plots" "groups"; gap: .6em 1.5em; align-items: start; }
@media (min-width: 1000px) { .panel-grid { grid-template-columns: minmax(21em, 1fr) minmax(0, 3fr);
  grid-template-areas: "side top" "side plots" "side groups"; } }
.top-examples { grid-area: top; }
.side { grid-area: side; display: flex; flex-wrap: wrap; gap: 0 1.2em; align-content: flex-start; }
.side > div { min-width: 0; }
.plots { grid-area: plots; display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 1em; }
.quantile-examples { grid-area: groups; }
.plot { height: 260px; min-width: 0; }
table.small { border-collapse: collapse; font-size: 88%; }
table.small td, table.small th { padding: 1px 5px; text-align: left; }
table.small td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { background: rgba(255, 110, 0, .18); }
td.neg { background: rgba(40, 110, 255, .16); }
.examples { font-family: ui-monospace, monospace; font-size: 85%; min-width: 0; }
.example { display: flex; align-items: baseline; margin: 2px 0; white-space: nowrap; overflow: hidden; }
.example .v { flex: 0 0 5em; color: #666; }
.example .left { flex: 0 0 40%; display: flex; justify-content: flex-end; overflow: hidden;
  -webkit-mask-image: linear-gradient(to right, transparent, #000 2.5em); mask-image: linear-gradient(to right, transparent, #000 2.5em); }
.example .right { flex: 1 1 0; display: flex; overflow: hidden; min-width: 0; }
.example .left .tok, .example .right .tok { flex: 0 0 auto; }
.tok { white-space: pre; border-radius: 2px; padding: 0 1px; margin-right: 3px; }
.tok.own { outline: 1.5px solid #000; margin-left: 1px; }
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
                       yaxis_title="tokens", bargap=0, margin={"l": 50, "r": 10, "t": 40, "b": 40})
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
                             margin={"l": 120, "r": 10, "t": 40, "b": 40}, yaxis={"tickfont": {"size": 9}, "dtick": 1})
        figures["logits"] = logits
    if card.logit_hist_counts:
        lh = go.Figure(go.Bar(x=card.logit_hist_centres, y=card.logit_hist_counts, marker_color="#888"))
        lh.update_layout(title="Logit effect on every token", xaxis_title="logit effect", yaxis_title="tokens",
                         bargap=0, margin={"l": 50, "r": 10, "t": 40, "b": 40})
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


def _tok(token: str, value: float, scale: float, own: bool = False) -> str:
    cls = "tok own" if own else "tok"
    return (f'<span class="{cls}" style="background:{_shade(value, scale)}" title="{value:.4g}">'
            f"{_token_text(token)}</span>")


def example_html(example: Example, scale: float) -> str:
    """One context as a row: value, left context (right-aligned, clipped on the left), the
    example's own token, right context; the own token therefore sits in one column."""
    k = example.token_index
    cells = [_tok(t, v, scale) for t, v in zip(example.tokens, example.values)]
    return (f'<div class="example" data-row="{example.row}"><span class="v">{example.value:.3g}</span>'
            f'<span class="left">{"".join(cells[:k])}</span>'
            f"{_tok(example.tokens[k], example.values[k], scale, own=True)}"
            f'<span class="right">{"".join(cells[k + 1:])}</span></div>')


def _scale(card: LatentCard) -> float:
    # One shading scale per latent (its maximum), so examples compare across groups.
    return max(card.max_value, -card.min_value, 1e-12)


def top_examples_html(card: LatentCard) -> str:
    parts = [f'<div class="examples top-examples" data-latent="{card.latent}">',
             f"<h4>Top activations (max {card.max_value:.4g})</h4>"]
    if not card.top:
        parts.append('<p class="note">this latent never fires on the store</p>')
    parts += [example_html(e, _scale(card)) for e in card.top]
    return "\n".join(parts + ["</div>"])


def quantile_examples_html(card: LatentCard) -> str:
    parts = [f'<div class="examples quantile-examples" data-latent="{card.latent}">']
    for g in reversed(card.quantiles):  # highest group first, continuing from the top examples
        parts.append(f"<h4>Activations {g.lo:.3g} – {g.hi:.3g} ({g.contains:.1%} of firing tokens)</h4>")
        parts += [example_html(e, _scale(card)) for e in g.examples]
    return "\n".join(parts + ["</div>"])


def examples_html(card: LatentCard) -> str:
    """Top and quantile examples of one latent, tokens shaded by activation."""
    return top_examples_html(card) + "\n" + quantile_examples_html(card)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], classes: tuple[str, ...] = ()) -> str:
    def cell(i: int, text: str) -> str:
        cls = classes[i] if i < len(classes) else ""
        return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(i, x) for i, x in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="small"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{body}</table>'


LABEL_HEADINGS = {"document": "Document labels", "token": "Token labels", "given": "Labels"}


def _side_tables(card: LatentCard) -> str:
    """Best-matching labels per scope, then the promoted and suppressed tokens (each once)."""
    parts = []
    for scope, heading in LABEL_HEADINGS.items():
        matches = [m for m in card.label_matches if m.scope == scope]
        if matches:
            parts.append(f'<div class="labels" data-scope="{scope}"><h4>{heading}</h4>'
                         + _table(("label", "AUROC", "tokens"),
                                  [(m.label, f"{m.auroc:.3f}", f"{m.n_positive:,}") for m in matches],
                                  ("", "num", "num")) + "</div>")
    if card.promoted:
        rows = [(repr(p), f"{a:+.3g}", repr(n), f"{b:+.3g}") for (p, a), (n, b) in zip(card.promoted, card.suppressed)]
        parts.append('<div class="logit-table"><h4>Logit effects (W_U · decoder row)</h4>'
                     + _table(("promoted", "logit", "suppressed", "logit"), rows, ("", "num pos", "", "num neg"))
                     + "</div>")
    elif card.logits_note:
        parts.append(f'<p class="note">{html.escape(card.logits_note)}</p>')
    return f'<aside class="side">{"".join(parts)}</aside>'


def _percent(x: float) -> str:
    return f"{100 * x:.3g}%"


def _stats(card: LatentCard) -> str:
    best = card.label_matches[0] if card.label_matches else None
    label = ""
    if best is not None and best.auroc >= GOOD_AUROC:
        label = (f"<span>best label <b>{html.escape(best.label)}</b> (AUROC {best.auroc:.3f}, "
                 f"{best.n_positive:,} tokens)</span>")
    elif best is not None:  # naming a label that barely beats chance would mislead
        label = f"<span>no label at AUROC ≥ {GOOD_AUROC} (best {best.auroc:.3f})</span>"
    return (f'<p class="reason">{html.escape(card.reason)}</p>'
            f'<div class="stats"><span>density <b>{_percent(card.density)}</b> ({card.n_fire:,} of {card.n_rows:,} '
            f"tokens)</span><span>max <b>{card.max_value:.4g}</b></span>{label}</div>")


# ---------------------------------------------------------------- page


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element ("</" would end the element early)."""
    from plotly.utils import PlotlyJSONEncoder

    return json.dumps(data, cls=PlotlyJSONEncoder).replace("</", "<\\/")


def _panel(card: LatentCard) -> tuple[str, int]:
    figures = latent_figures(card)
    plots = []
    for name in PAGE_FIGURES:
        if name not in figures:
            continue
        spec = figures[name].to_plotly_json()
        spec["layout"].pop("template", None)  # one shared template for the page, not one per figure
        fid = f"fig-{card.latent}-{name}"
        plots.append(f'<div class="plot" data-figure="{fid}"></div>'
                     f'<script type="application/json" id="{fid}">{_script_json(spec)}</script>')
    body = (f'<section class="feature-panel" id="latent-{card.latent}" data-latent="{card.latent}">'
            f"<h2>Latent {card.latent}</h2>{_stats(card)}"
            f'<div class="panel-grid">{top_examples_html(card)}{_side_tables(card)}'
            f'<div class="plots">{"".join(plots)}</div>{quantile_examples_html(card)}</div></section>')
    return body, len(plots)


def page_html(dash: Dashboard) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    title = f"{dash.model_name} {dash.hook}: latents {', '.join(map(str, dash.latents))}"
    panels = [_panel(c) for c in dash.cards]
    template = pio.templates["plotly_white"].to_plotly_json()
    d = dash.dictionary
    kind = " ".join(dict.fromkeys(str(d.get(k)) for k in ("architecture", "kind")))  # "topk sae", "snmf"
    header = (f"<header><h1>Feature dashboard</h1><p>model <b>{html.escape(dash.model_name)}</b> · hook "
              f"<b>{html.escape(dash.hook)}</b> ({layer_id(dash.hook)}) · {html.escape(kind)} with {d.get('d_sae')} latents"
              + (f" (codes: {html.escape(str(d['codes']))})" if d.get("codes") else "")
              + f" · {dash.n_rows:,} tokens · labels: "
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
    parts = [(f"<style>{CSS}</style><div><b>{html.escape(dash.model_name)}</b> · {html.escape(dash.hook)} · "
             f"{dash.n_rows:,} tokens</div>")]
    for card in dash.cards:
        parts.append(f'<div class="feature-panel"><h3>Latent {card.latent}</h3>{_stats(card)}'
                     f'<div class="panel-grid">{top_examples_html(card)}{_side_tables(card)}'
                     f"{quantile_examples_html(card)}</div></div>")
    return "\n".join(parts)
