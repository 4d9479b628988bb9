"""Self-supervised QualiCLIP fine-tuning: data, losses (and, later, the training engine)."""
