"""The description of a checkpoint that travels with it as ``config.json``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PromptPair = tuple[str, str]

#: The seven antonym pairs of the official scorer, positive prompt first.
DEFAULT_PROMPT_PAIRS: tuple[PromptPair, ...] = (
    ("Good photo.", "Bad photo."),
    ("Sharp image.", "Blurry image."),
    ("Sharp edges.", "Blurry edges."),
    ("High-resolution image.", "Low-resolution image."),
    ("Noise-free image.", "Noisy image."),
    ("High-quality image.", "Low-quality image."),
    ("Good picture.", "Bad picture."),
)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

FORMAT_NAME = "qualiclip-metric"
FORMAT_VERSION = 1
ARCHITECTURE = "RN50-quickgelu"
EMBED_DIM = 1024
#: The official scorer multiplies cosine similarities by a fixed 100, not by the learned logit scale.
SCORE_LOGIT_SCALE = 100.0


def positive_finite(name: str, value: object) -> float:
    """``value`` as a float, or an error naming argument ``name`` for 0, negatives, infinities, NaN or non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < math.inf:
        raise ValueError(f"Argument `{name}` must be a positive finite number, but got {value!r}")
    return float(value)


def pair_name(pair: PromptPair) -> str:
    """A readable, unique name for an antonym pair, e.g. ``"Good photo./Bad photo."``."""
    return f"{pair[0]}/{pair[1]}"


def validate_prompt_pairs(pairs: Any) -> tuple[PromptPair, ...]:
    """Turn user input into a tuple of (positive, negative) string pairs or say what is wrong."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise ValueError(f"prompts must be a sequence of (positive, negative) string pairs, got {pairs!r}")
    result = []
    for item in pairs:
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not all(isinstance(text, str) and text.strip() for text in item)
        ):
            raise ValueError(f"each prompt pair must be two non-empty strings (positive, negative), got {item!r}")
        result.append((item[0], item[1]))
    if not result:
        raise ValueError("prompts must contain at least one (positive, negative) pair")
    names: dict[str, PromptPair] = {}
    for pair in result:
        earlier = names.setdefault(pair_name(pair), pair)
        if earlier is not pair:  # per-pair results are keyed by name: one would overwrite the other
            raise ValueError(
                f"prompt pairs {earlier!r} and {pair!r} share the name {pair_name(pair)!r}; "
                "make them differ (a '/' inside a prompt can cause this)"
            )
    return tuple(result)


@dataclass
class QualiCLIPConfig:
    """Everything needed to rebuild the scorer besides the tensors themselves.

    A :class:`~qualiclip_metric.model.QualiCLIP` scores with its ``config``: its prompt pairs,
    temperature and score scale are read from it, and changing them replaces it.
    """

    prompt_pairs: tuple[PromptPair, ...] = DEFAULT_PROMPT_PAIRS
    temperature: float = 1.0
    architecture: str = ARCHITECTURE
    embed_dim: int = EMBED_DIM
    score_logit_scale: float = SCORE_LOGIT_SCALE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    #: sha256 of every tensor file of the release, by file name.
    files: dict[str, str] = field(default_factory=dict)
    #: Where the weights came from (upstream URL, source file hash, conversion tool).
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.prompt_pairs = validate_prompt_pairs(self.prompt_pairs)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"unsupported architecture {self.architecture!r}; expected {ARCHITECTURE!r}")
        self.temperature = positive_finite("temperature", self.temperature)
        self.score_logit_scale = positive_finite("score_logit_scale", self.score_logit_scale)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompt_pairs"] = [list(pair) for pair in self.prompt_pairs]
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualiCLIPConfig:
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} config (format={data.get('format')!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"config format_version {version!r} is newer than this package understands "
                f"({FORMAT_VERSION}); upgrade qualiclip-metric"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        values = dict(data)
        values["prompt_pairs"] = tuple(tuple(pair) for pair in data.get("prompt_pairs", DEFAULT_PROMPT_PAIRS))
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> QualiCLIPConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the top level is not a JSON object")
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            from qualiclip_metric.errors import CheckpointError

            raise CheckpointError(f"{path}: invalid config: {err}") from err
