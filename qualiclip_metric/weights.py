"""Where weights come from: the Hugging Face Hub, pyiqa's mirror, or local files.

The only module that touches the network. It resolves a ``source`` to files in the local cache and
hands them to :mod:`qualiclip_metric.checkpoint`; models never know where their bytes came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from qualiclip_metric._version import __version__
from qualiclip_metric.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    OFFICIAL_URL,
    TEXT_FILE,
    Checkpoint,
    read_checkpoint,
    sha256_file,
    write_layout,
)
from qualiclip_metric.errors import WeightsNotFoundError

HUB_PREFIX = "hf-hub:"
#: The project's release on the Hub; ``QUALICLIP_HUB_REPO`` overrides it.
DEFAULT_HUB_REPO = "qualiclip-metric/qualiclip-rn50"
HUB_REPO_ENV = "QUALICLIP_HUB_REPO"
#: pyiqa's mirror of the official weights, used when the project's release is unavailable.
PYIQA_MIRROR_REPO = "chaofengc/IQA-PyTorch-Weights"
PYIQA_MIRROR_FILE = "QualiCLIP.pth"
CONVERTED_DIR = "qualiclip-metric--converted"


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def default_hub_repo() -> str:
    return os.environ.get(HUB_REPO_ENV) or DEFAULT_HUB_REPO


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache in use (``HF_HUB_CACHE`` unless ``cache_dir`` is given)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def parse_hub_source(source: str, revision: str | None = None) -> HubSource:
    """``hf-hub:ORG/REPO[@REVISION]``; a revision in the string and the argument must agree."""
    spec = source.removeprefix(HUB_PREFIX)
    repo_id, _, pinned = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"expected 'hf-hub:ORG/REPO[@REVISION]', got {source!r}")
    if pinned and revision and pinned != revision:
        raise ValueError(f"conflicting revisions: {pinned!r} in {source!r} and revision={revision!r}")
    return HubSource(repo_id, pinned or revision)


class _Unavailable(Exception):
    """A file that cannot be had from here (not cached, offline, no such repo/revision/file)."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(where)
        self.where, self.cause = where, cause


def _download(repo_id: str, filename: str, revision: str | None, cache_dir: Path, local_files_only: bool) -> Path:
    from huggingface_hub import errors, hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                library_name="qualiclip-metric",
                library_version=__version__,
            )
        )
    except (errors.EntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as err:
        # Network failures surface as LocalEntryNotFoundError (an OSError) when nothing is cached;
        # HfHubHTTPError (also an OSError) covers missing repositories, revisions, files and gated access.
        where = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "") + f" ({filename})"
        raise _Unavailable(where, err) from err


def fetch_hub_layout(source: HubSource, *, cache_dir: Path, local_files_only: bool, need_text: bool) -> Path:
    """Download (or find in the cache) the files of a Hub release and return their snapshot directory."""
    config_path = _download(source.repo_id, CONFIG_FILE, source.revision, cache_dir, local_files_only)
    _download(source.repo_id, MODEL_FILE, source.revision, cache_dir, local_files_only)
    if need_text:
        _download(source.repo_id, TEXT_FILE, source.revision, cache_dir, local_files_only)
    return config_path.parent


def _converted_dir(cache_dir: Path, revision: str | None) -> Path:
    name = f"{PYIQA_MIRROR_REPO.replace('/', '--')}--{PYIQA_MIRROR_FILE}--{revision or 'main'}"
    return cache_dir / CONVERTED_DIR / name


def convert_to_layout(
    pth: Path, target: Path, provenance: dict[str, object], *, include_text: bool = False, overwrite: bool = False
) -> Path:
    """Convert an official/pyiqa ``.pth`` into our layout at ``target``, recording where it came from."""
    checkpoint = read_checkpoint(pth, need_text=include_text)
    checkpoint.config = replace(
        checkpoint.config,
        provenance={
            **provenance,
            "source_sha256": sha256_file(pth),
            "upstream": OFFICIAL_URL,
            "converted_by": f"qualiclip-metric {__version__}",
        },
    )
    return write_layout(checkpoint, target, include_text=include_text, overwrite=overwrite)


def fetch_pyiqa_mirror(*, cache_dir: Path, revision: str | None, local_files_only: bool) -> Path:
    """Our layout converted from pyiqa's mirror: reused from the cache, or downloaded and converted once."""
    target = _converted_dir(cache_dir, revision)
    if (target / CONFIG_FILE).is_file():
        return target
    pth = _download(PYIQA_MIRROR_REPO, PYIQA_MIRROR_FILE, revision, cache_dir, local_files_only)
    provenance = {
        "source": f"{HUB_PREFIX}{PYIQA_MIRROR_REPO}/{PYIQA_MIRROR_FILE}",
        "source_revision": pth.parent.name,  # the snapshot directory is named after the commit
    }
    try:
        return convert_to_layout(pth, target, provenance)
    except FileExistsError:  # another process converted the same file first
        return target


def _not_found(tried: list[_Unavailable], offline: bool) -> WeightsNotFoundError:
    lines = ["QualiCLIP weights could not be found. Sources tried:"]
    for attempt in tried:
        reason = str(attempt.cause).strip().splitlines()[0] if str(attempt.cause).strip() else ""
        lines.append(f"  - {attempt.where}: {type(attempt.cause).__name__}: {reason}")
    lines.append("To fix this:")
    if offline:
        lines.append("  - unset HF_HUB_OFFLINE / drop local_files_only to allow a download, or")
    lines += [
        "  - run `qualiclip download` once on a machine with network access (shares the Hugging Face cache), or",
        "  - point HF_HUB_CACHE (or cache_dir=) to a cache that holds the weights, or",
        f"  - pass a local file or directory as the source (e.g. the official qualiclip.pth from {OFFICIAL_URL}).",
    ]
    return WeightsNotFoundError("\n".join(lines))


def resolve(
    source: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    need_text: bool = False,
) -> Path:
    """Local path (file or layout directory) holding the weights for ``source``, downloading if needed.

    ``None`` tries the project's release, then a converted copy of pyiqa's mirror in the cache, then
    downloads and converts that mirror once. Custom prompts (``need_text``) use the mirror's ``.pth``
    as is, since only it holds the text tower.
    """
    if source is not None and not (isinstance(source, str) and source.startswith(HUB_PREFIX)):
        path = Path(source).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"{path}: no such file or directory (use 'hf-hub:ORG/REPO' for Hub sources)")
        return path
    cache = hub_cache_dir(cache_dir)
    hub = parse_hub_source(str(source), revision) if source is not None else HubSource(default_hub_repo(), revision)
    tried: list[_Unavailable] = []
    try:
        return fetch_hub_layout(hub, cache_dir=cache, local_files_only=local_files_only, need_text=need_text)
    except _Unavailable as err:
        tried.append(err)
    if source is None:
        try:
            if need_text:
                return _download(PYIQA_MIRROR_REPO, PYIQA_MIRROR_FILE, revision, cache, local_files_only)
            return fetch_pyiqa_mirror(cache_dir=cache, revision=revision, local_files_only=local_files_only)
        except _Unavailable as err:
            tried.append(err)
    raise _not_found(tried, local_files_only or is_offline())


def load_checkpoint(
    source: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    need_text: bool = False,
    verify: bool = True,
) -> Checkpoint:
    """Resolve ``source`` (see :func:`resolve`) and read its tensors."""
    path = resolve(
        source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, need_text=need_text
    )
    checkpoint = read_checkpoint(path, need_text=need_text, verify=verify)
    if source is None or str(source).startswith(HUB_PREFIX):
        checkpoint.origin = f"{source or 'default weights'} ({path})"
    return checkpoint
