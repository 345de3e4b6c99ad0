"""Attribution graphs over transcoder features (Ameisen et al. 2025, "Circuit Tracing").

* :mod:`.freeze`: attention patterns and norm denominators held at their values on a prompt;
* :mod:`.replacement`: the local replacement model (transcoders in place of MLPs, error nodes
  holding the exact difference) and its frozen linear system;
* :mod:`.attribution`: the direct effects by batched backward passes (:func:`attribute`);
* :mod:`.graph`: the graph, pruning by influence on the logits, replacement and completeness
  scores;
* :mod:`.interventions`: feature edits in the real model (:func:`intervene`);
* :mod:`.export`: the JSON circuit-tracer's and Neuronpedia's viewers read;
* :mod:`.html`: a single-file offline view;
* :mod:`.planted`: the world's bridge-land check (graph routing and an intervention).
"""
from interp.circuits.attribution import CircuitConfig, attribute, logit_targets
from interp.circuits.graph import AttributionGraph, GraphScores, PruneResult
from interp.circuits.interventions import (
           FeatureEdit,
           InterventionResult,
           intervene,
           patch_features,
)
from interp.circuits.replacement import ReplacementModel, load_transcoders

__all__ = ["AttributionGraph", "CircuitConfig", "FeatureEdit", "GraphScores", "InterventionResult", "PruneResult",
           "ReplacementModel", "attribute", "intervene", "load_transcoders", "logit_targets", "patch_features"]
