"""QualiCLIP: opinion-unaware, CLIP-based no-reference image quality (higher is better, in [0, 1])."""

from qualiclip_metric._version import __version__
from qualiclip_metric.checkpoint import Checkpoint
from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS, QualiCLIPConfig
from qualiclip_metric.errors import CheckpointError, ImageLoadError, WeightsNotFoundError
from qualiclip_metric.functional import qualiclip_score
from qualiclip_metric.inputs import load_image
from qualiclip_metric.model import QualiCLIP

__all__ = [
    "DEFAULT_PROMPT_PAIRS",
    "Checkpoint",
    "CheckpointError",
    "ImageLoadError",
    "QualiCLIP",
    "QualiCLIPConfig",
    "WeightsNotFoundError",
    "__version__",
    "load_image",
    "qualiclip_score",
]
