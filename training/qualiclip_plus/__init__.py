"""QualiCLIP+: CoOp-style prompts learned on MOS over a frozen QualiCLIP/CLIP, as pyiqa trains them."""
