"""python -m training.reiqa --config FILE [key.sub=value ...]  (also under torchrun)"""

import sys

from training.cli import main
from training.reiqa.task import ReIQATask, ReIQATrainConfig

if __name__ == "__main__":
    sys.exit(main(ReIQATrainConfig, ReIQATask, prog="python -m training.reiqa", argv=sys.argv[1:]))
