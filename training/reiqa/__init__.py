"""Re-IQA (Saha, Mishra, Bovik, CVPR 2023) as a baseline: quality-aware MoCo encoder, features, linear regressor."""
