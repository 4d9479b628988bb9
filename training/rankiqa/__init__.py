"""RankIQA (Liu, van de Weijer, Bagdanov, ICCV 2017) as a baseline on the shared training engine.

Stage 1 learns to rank synthetically degraded crops with a Siamese hinge loss; stage 2 regresses MOS.
See ``training/rankiqa/README.md`` for the commands and the choices that differ from the paper.
"""
