"""saes.formats."""
