"""QualiCLIP: opinion-unaware, CLIP-based no-reference image quality (higher is better, in [0, 1])."""

from qualiclip_metric._version import __version__
from qualiclip_metric.checkpoint import Checkpoint
from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS, QualiCLIPConfig
from qualiclip_metric.errors import CheckpointError, ImageLoadError, WeightsNotFoundError
from qualiclip_metric.export import export_scorer
from qualiclip_metric.functional import qualiclip_score
from qualiclip_metric.inputs import load_image
from qualiclip_metric.loss import QualiCLIPLoss
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.pretrained import list_pretrained
from qualiclip_metric.pyiqa_plugin import install as _install_pyiqa_plugin
from qualiclip_metric.runtimes import fastest_configuration

_install_pyiqa_plugin()


def __getattr__(name: str):
    if name == "QualiCLIPScore":  # torchmetrics is imported only when the metric is asked for
        from qualiclip_metric.torchmetrics import QualiCLIPScore

        return QualiCLIPScore
    raise AttributeError(f"module 'qualiclip_metric' has no attribute {name!r}")


__all__ = [
    "DEFAULT_PROMPT_PAIRS",
    "Checkpoint",
    "CheckpointError",
    "ImageLoadError",
    "QualiCLIP",
    "QualiCLIPConfig",
    "QualiCLIPLoss",
    "QualiCLIPScore",
    "WeightsNotFoundError",
    "__version__",
    "export_scorer",
    "fastest_configuration",
    "list_pretrained",
    "load_image",
    "qualiclip_score",
]
