"""interp.activations."""
