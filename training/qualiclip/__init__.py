"""Self-supervised QualiCLIP fine-tuning: crop-pair data, margin ranking losses, the model and the trainer task."""
