"""The pretrained registry: every named checkpoint, pinned to a commit and a sha256.

A name (``"qualiclip"``, ``"qualiclip+-spaq"``...) is the only way the package reaches the network on its
own: :mod:`qualiclip_metric.weights` downloads exactly the files listed here, at their pinned commit,
and refuses any whose size or sha256 differs before it is converted or loaded.

The QualiCLIP weights are the authors' (Agnolucci, Galteri, Bertini), served by pyiqa's weight mirror;
the QualiCLIP+ prompt learners were trained on MOS by pyiqa.
"""

from __future__ import annotations

from dataclasses import dataclass

#: pyiqa's weight repository on the Hugging Face Hub, at the commit that added QualiCLIP ("Upload QualiCLIP (#1)").
PYIQA_REPO = "chaofengc/IQA-PyTorch-Weights"
PYIQA_COMMIT = "9c1c305ce9d08878a3e5c92626b444ab6c855e99"
LICENSE = "CC-BY-NC-4.0"
#: The default, as in open_clip's ``pretrained=`` tags.
DEFAULT_NAME = "qualiclip"


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository at a pinned commit, with its expected size and sha256."""

    repo_id: str
    filename: str
    revision: str
    sha256: str
    size: int

    def __str__(self) -> str:
        return f"hf-hub:{self.repo_id}@{self.revision[:12]} ({self.filename})"


@dataclass(frozen=True)
class Pretrained:
    """A named checkpoint: where its files are, what they hash to, and how it scores.

    ``weights`` is either a ``.pth`` state dict in the official layout (image tower, text tower, prompt
    features), converted once into the package's layout, or the ``model.safetensors`` of a release in
    that layout, which then also lists its ``config.json`` and, optionally, its ``text.safetensors``.
    ``prompt_learner``, when set, is a QualiCLIP+ prompt learner in pyiqa's layout: its 14 learned
    prompts replace the prompt features, and scores use pyiqa's temperature 2 with exp(logit_scale).
    """

    name: str
    description: str
    weights: HubFile
    prompt_learner: HubFile | None = None
    config: HubFile | None = None
    text: HubFile | None = None
    license: str = LICENSE

    @property
    def is_release(self) -> bool:
        """Whether the files are a release in the package's own layout (nothing to convert)."""
        return self.weights.filename.endswith(".safetensors")

    @property
    def files(self) -> tuple[HubFile, ...]:
        """Every file of the entry, the weights first."""
        optional = (self.config, self.text, self.prompt_learner)
        return (self.weights, *(file for file in optional if file is not None))


def _pyiqa_file(filename: str, sha256: str, size: int) -> HubFile:
    return HubFile(PYIQA_REPO, filename, PYIQA_COMMIT, sha256, size)


_QUALICLIP = _pyiqa_file(
    "QualiCLIP.pth", "5818e085ac4b3d297cdd183fd2b1d8a4ddb2242e5bb7fd24b2cd66d7d132bc7e", 408_494_502
)
_PROMPT_LEARNER_SIZE = 2_209_627
_PLUS = {
    "koniq": ("KonIQ-10k", "450292893e96f38dca09d51ca2e0e1cd7cb1c2c55d444cfe2ac8ea2ab5d1d894"),
    "clive": ("LIVE In the Wild (CLIVE)", "5a2c75e4586abbaf1bc55e945691be14c70d68ede7dbabd86caebaf838ec50a3"),
    "flive": ("FLIVE (PaQ-2-PiQ)", "ac20494683fb8c26abae04c6df671c389bf42f08461b2eac8497d91d53d558cc"),
    "spaq": ("SPAQ", "2d9c2ef6b746d0f42573c24a118a6f0bf1f919d60163b5dbd6de0b6fc7e1a0e9"),
}

REGISTRY: dict[str, Pretrained] = {
    DEFAULT_NAME: Pretrained(
        DEFAULT_NAME,
        "QualiCLIP, opinion-unaware: the authors' self-supervised RN50 image tower and 7 antonym prompt pairs",
        _QUALICLIP,
    ),
    **{
        f"qualiclip+-{key}": Pretrained(
            f"qualiclip+-{key}",
            f"QualiCLIP+: QualiCLIP with 14 prompts learned on the MOS of {dataset} (pyiqa)",
            _QUALICLIP,
            _pyiqa_file(f"QualiCLIP+_{key}.pth", sha256, _PROMPT_LEARNER_SIZE),
        )
        for key, (dataset, sha256) in _PLUS.items()
    },
}
#: Other names for registry entries, as pyiqa spells them.
ALIASES: dict[str, str] = {"qualiclip+": "qualiclip+-koniq"}


def list_pretrained() -> list[str]:
    """Every name :meth:`QualiCLIP.from_pretrained` accepts without a path, aliases included.

    Examples:
        >>> "qualiclip+-spaq" in list_pretrained()
        True
    """
    return [*REGISTRY, *ALIASES]


def is_pretrained_name(source: object) -> bool:
    return isinstance(source, str) and (source in REGISTRY or source in ALIASES)


def get_pretrained(name: str) -> Pretrained:
    """The registry entry for ``name`` (an alias gives the entry it stands for).

    Raises:
        KeyError: ``name`` is not registered; the message lists the names that are.
    """
    try:
        return REGISTRY[ALIASES.get(name, name)]
    except KeyError:
        raise KeyError(f"no pretrained weights named {name!r}; known: {', '.join(list_pretrained())}") from None
