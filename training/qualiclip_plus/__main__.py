"""python -m training.qualiclip_plus --config FILE [key.sub=value ...]  (also under torchrun)"""

import sys

from training.cli import main
from training.qualiclip_plus.task import QualiCLIPPlusTask, QualiCLIPPlusTrainConfig

if __name__ == "__main__":
    sys.exit(
        main(QualiCLIPPlusTrainConfig, QualiCLIPPlusTask, prog="python -m training.qualiclip_plus", argv=sys.argv[1:])
    )
