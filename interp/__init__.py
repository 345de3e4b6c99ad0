"""interp: hooked models, activation caching and stores, and interventions.

>>> import interp
>>> model = interp.load("world")                       # the shipped default model
>>> logits, cache = model.run_with_cache("the cat", names=["blocks.0.hook_resid_post"])
"""
from interp.activations.harvest import HarvestConfig, harvest, run_harvest
from interp.activations.store import ActivationStore
from interp.activations.tokens import TokenSource
from interp.errors import HookNameError, InterpError, LayerRangeError, ModelLoadError, ShapeError, StoreError
from interp.evaluation.splice import evaluate_sae
from interp.interventions.steering import Clamp, Positions, Steering, calibrate_scale
from interp.model.hooked import HookedModel
from interp.model.loading import load

__all__ = [
    "load", "HookedModel", "TokenSource", "harvest", "HarvestConfig", "run_harvest", "ActivationStore", "evaluate_sae",
    "Steering", "Clamp", "Positions", "calibrate_scale",
    "InterpError", "HookNameError", "LayerRangeError", "ModelLoadError", "StoreError", "ShapeError",
]
