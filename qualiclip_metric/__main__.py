import sys

from qualiclip_metric.cli import main

sys.exit(main())
