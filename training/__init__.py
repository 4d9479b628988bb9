"""Training-side utilities for QualiCLIP: the synthetic degradation bank used to build quality-ranked pairs."""
