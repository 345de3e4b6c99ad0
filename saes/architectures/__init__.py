"""saes.architectures."""
