"""Feature dashboards for latents of a sparse dictionary (SAE or SNMF) at one hook.

>>> from interp.dashboards import build_dashboard
>>> dash = build_dashboard(model, sae, store, latents=[3, 17, 42])
>>> dash.save_html("features.html")      # one self-contained file, opens offline
>>> dash.save_json("features.json")      # Neuronpedia-style fields
>>> dash.figures(17)["histogram"]        # plotly figures in a notebook
>>> dash.examples_html(17)               # top and quantile examples, tokens shaded

Built in two streaming passes over an ActivationStore (see :mod:`.stream`): memory grows
with the number of latents shown, never with the number of tokens.
"""
from interp.dashboards.build import build_dashboard
from interp.dashboards.dashboard import Dashboard
from interp.dashboards.data import Example, LabelMatch, LatentCard, QuantileGroup

__all__ = ["Dashboard", "Example", "LabelMatch", "LatentCard", "QuantileGroup", "build_dashboard"]
