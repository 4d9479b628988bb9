"""``python -m qualiclip_metric.cli``, the same as ``qualiclip``."""

import sys

from qualiclip_metric.cli import main

sys.exit(main())
