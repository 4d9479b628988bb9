"""python -m training.rankiqa --config FILE [key.sub=value ...]  (also under torchrun)"""

import logging
import sys

from training.cli import main
from training.rankiqa.task import RankIQATask, RankIQATrainConfig

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(RankIQATrainConfig, RankIQATask, prog="python -m training.rankiqa", argv=sys.argv[1:]))
