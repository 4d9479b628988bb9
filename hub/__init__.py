"""Tools that convert, verify and publish QualiCLIP checkpoints (run as ``python -m hub.<tool>``)."""
