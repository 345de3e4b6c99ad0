"""interp.evaluation."""
