"""python -m training.rankiqa --config FILE [key.sub=value ...]  (also under torchrun)"""

import sys

from training.cli import main
from training.rankiqa.task import RankIQATask, RankIQATrainConfig

if __name__ == "__main__":
    sys.exit(main(RankIQATrainConfig, RankIQATask, prog="python -m training.rankiqa", argv=sys.argv[1:]))
