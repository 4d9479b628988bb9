"""Training: the shared engine, the QualiCLIP trainer, the RankIQA and Re-IQA baselines, and the degradation bank."""
