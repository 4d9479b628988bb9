"""python -m training.qualiclip --config FILE [key.sub=value ...]  (also under torchrun)"""

import sys

from training.cli import main
from training.qualiclip.task import QualiCLIPTask, QualiCLIPTrainConfig

if __name__ == "__main__":
    sys.exit(main(QualiCLIPTrainConfig, QualiCLIPTask, prog="python -m training.qualiclip", argv=sys.argv[1:]))
