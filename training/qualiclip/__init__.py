"""Self-supervised QualiCLIP fine-tuning: training data and losses."""
