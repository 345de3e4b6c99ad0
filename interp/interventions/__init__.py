"""interp.interventions."""
