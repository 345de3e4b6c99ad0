"""interp.model."""
