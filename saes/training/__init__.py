"""saes.training."""
