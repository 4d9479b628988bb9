"""Where weights come from: the pretrained registry, a Hugging Face Hub repository, or local files.

The only module that touches the network. It resolves a ``source`` to files on disk and hands them to
:mod:`qualiclip_metric.checkpoint`; models never know where their bytes came from.

- A registry name (:mod:`qualiclip_metric.pretrained`) downloads exactly the files the registry lists,
  at their pinned commit, and refuses any whose size or sha256 differs before it is read. Files in the
  official ``.pth`` layout are converted once into the package's layout, in the Hugging Face assets
  cache (``HF_ASSETS_CACHE``), never inside the hub cache; the copy records its sources and hashes.
- ``hf-hub:ORG/REPO[@REVISION]`` reads a release in the package's layout from any repository.
- Anything else is a local file or folder.

When a file is not cached, the Hub's host is probed once (a TCP connection, a few seconds at most)
before downloading: without network the answer is immediate instead of a minute of retries.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from qualiclip_metric._version import __version__
from qualiclip_metric.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    OFFICIAL_URL,
    TEXT_FILE,
    Checkpoint,
    read_checkpoint,
    write_layout,
)
from qualiclip_metric.config import QualiCLIPConfig
from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
from qualiclip_metric.integrity import (
    Verify,
    is_verified,
    package_cache_dir,
    sha256_file,
    validate_verify,
    verify_sha256,
)
from qualiclip_metric.pretrained import DEFAULT_NAME, HubFile, Pretrained, get_pretrained, is_pretrained_name

HUB_PREFIX = "hf-hub:"
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
PROBE_TIMEOUT_S = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


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
    """A file that cannot be had from here (not cached and no network, no such repo/revision/file)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


@dataclass
class _Network:
    """Whether downloads may be tried, probed at most once per resolution."""

    allowed: bool
    _unreachable: str | None = field(default=None, init=False)
    _probed: bool = field(default=False, init=False)

    def unavailable(self) -> str | None:
        """Why nothing can be downloaded now, or None when downloads may go ahead."""
        if not self.allowed:
            return "not in the cache, and downloads are off (HF_HUB_OFFLINE or local_files_only)"
        if not self._probed:
            self._probed = True
            self._unreachable = _probe_endpoint()
        return self._unreachable


def _probe_endpoint() -> str | None:
    """None if the Hub's host accepts a TCP connection (or a proxy is configured), else why not."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None  # the proxy decides; huggingface_hub goes through it
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        return f"not in the cache, and {endpoint.scheme}://{endpoint.netloc} cannot be reached ({reason})"
    return None


def _hub_download(repo_id: str, filename: str, revision: str | None, cache_dir: Path, network: _Network) -> Path:
    """A file of a Hub repository, from the cache when it has it, else downloaded."""
    from huggingface_hub import errors, hf_hub_download

    where = f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "") + f" ({filename})"

    def download(local_files_only: bool) -> Path:
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

    # A moving revision (a branch, a tag) is looked up online when possible; a commit never changes.
    if revision is not None and COMMIT_HASH.match(revision):
        try:
            return download(local_files_only=True)
        except (errors.EntryNotFoundError, OSError):
            pass
    unavailable = network.unavailable()
    try:
        return download(local_files_only=unavailable is not None)
    except Exception as err:
        # HfHubHTTPError (an OSError) covers missing repositories, revisions and files, and gated access;
        # the HTTP client's own errors (a dropped connection mid-download) are not OSErrors.
        missing_locally = isinstance(err, errors.LocalEntryNotFoundError)
        raise _Unavailable(where, unavailable if unavailable and missing_locally else _first_line(err)) from err


def _pinned_download(file: HubFile, cache_dir: Path, network: _Network, verify: Verify) -> Path:
    """A registry file at its pinned commit, refused unless its size and sha256 are the registry's."""
    path = _hub_download(file.repo_id, file.filename, file.revision, cache_dir, network)
    verify_sha256(
        path,
        file.sha256,
        verify=verify,
        size=file.size,
        hint=f"it is not the file the registry pins for {file}; delete it from the cache and download again",
    )
    return path


def fetch_hub_layout(source: HubSource, *, cache_dir: Path, network: _Network, need_text: bool) -> Path:
    """Download (or find in the cache) the files of a release in our layout; return their snapshot folder."""
    config_path = _hub_download(source.repo_id, CONFIG_FILE, source.revision, cache_dir, network)
    _hub_download(source.repo_id, MODEL_FILE, source.revision, cache_dir, network)
    if need_text:
        _hub_download(source.repo_id, TEXT_FILE, source.revision, cache_dir, network)
    return config_path.parent


# -- the registry -------------------------------------------------------------------------------------


def _sources(entry: Pretrained) -> dict[str, str]:
    """What a converted copy of ``entry`` must have been made from: file and sha256, by role."""
    sources = {"weights": f"{entry.weights}", "weights_sha256": entry.weights.sha256}
    if entry.prompt_learner is not None:
        sources |= {"prompt_learner": f"{entry.prompt_learner}", "prompt_learner_sha256": entry.prompt_learner.sha256}
    return sources


def _registry_provenance(entry: Pretrained) -> dict[str, object]:
    return {"registry_name": entry.name, "upstream": OFFICIAL_URL, "license": entry.license, **_sources(entry)}


def converted_dir(entry: Pretrained) -> Path:
    """Where the converted copy of a registry entry lives: named after its hashes, so a changed pin never
    finds an old copy. It is shared by every hub cache, since its content depends on the hashes alone."""
    digest = hashlib.sha256("".join(file.sha256 for file in entry.files).encode()).hexdigest()[:16]
    try:
        return package_cache_dir(entry.weights.repo_id, "converted") / f"{entry.name}-{digest}"
    except (OSError, ValueError) as err:
        raise WeightsNotFoundError(
            f"cannot create the folder for converted weights ({err}); set HF_ASSETS_CACHE to a writable folder"
        ) from err


def convert_to_layout(
    checkpoint: Checkpoint,
    target: Path,
    provenance: dict[str, object],
    *,
    include_text: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``checkpoint`` in our layout at ``target``, recording where it came from."""
    checkpoint = replace(
        checkpoint,
        config=replace(
            checkpoint.config,
            provenance={
                **checkpoint.config.provenance,
                **provenance,
                "converted_by": f"qualiclip-metric {__version__}",
            },
        ),
    )
    return write_layout(checkpoint, target, include_text=include_text, overwrite=overwrite)


def _check_converted(entry: Pretrained, directory: Path) -> None:
    """A converted copy is used only if it records exactly the registry's sources."""
    provenance = QualiCLIPConfig.read(directory / CONFIG_FILE).provenance
    recorded = {key: provenance.get(key) for key in _sources(entry)}
    if recorded != _sources(entry):
        raise CheckpointError(
            f"{directory}: this converted copy was not made from the files the registry pins for {entry.name!r}; "
            "delete the folder and it is converted again"
        )


def _resolve_pretrained(entry: Pretrained, cache_dir: Path, network: _Network, need_text: bool, verify: Verify) -> Path:
    """Local path of a registry entry: its layout (converted once) or, for custom prompts, the full ``.pth``."""
    if entry.is_release:  # the package's own layout: every file pinned, nothing to convert
        files = [entry.config, entry.weights] + ([entry.text] if need_text else [])
        if None in files:
            missing = "config.json" if entry.config is None else "text tower"
            raise CheckpointError(f"registry entry {entry.name!r} lists no {missing}")
        paths = [_pinned_download(file, cache_dir, network, verify) for file in files if file is not None]
        return paths[0].parent
    if need_text:
        if entry.prompt_learner is not None:
            raise ValueError(
                f"custom prompts replace the learned prompts of {entry.name!r}; "
                f"give them with {DEFAULT_NAME!r} (or any source that holds the text tower)"
            )
        return _pinned_download(entry.weights, cache_dir, network, verify)
    target = converted_dir(entry)
    if (target / CONFIG_FILE).is_file():
        _check_converted(entry, target)
        return target
    # The copy is trusted by every later load: its sources are checked whatever ``verify`` says.
    checked = verify or True
    checkpoint = read_checkpoint(
        _pinned_download(entry.weights, cache_dir, network, checked), need_text=entry.prompt_learner is not None
    )
    if entry.prompt_learner is not None:
        from qualiclip_metric.prompt_learner import read_prompt_learner, with_learned_prompts

        learner = _pinned_download(entry.prompt_learner, cache_dir, network, checked)
        checkpoint = with_learned_prompts(checkpoint, read_prompt_learner(learner), str(entry.prompt_learner))
    try:
        return convert_to_layout(checkpoint, target, _registry_provenance(entry))
    except FileExistsError:  # another process converted the same files meanwhile
        _check_converted(entry, target)
        return target


@dataclass(frozen=True)
class PretrainedStatus:
    """What this machine holds of a registry entry, found without hashing or network."""

    name: str
    #: The converted copy (or, for a release, the snapshot folder), when it is on disk.
    path: Path | None
    #: Whether every file on disk was verified against its sha256 and has not changed since.
    verified: bool


def pretrained_status(name: str, cache_dir: str | os.PathLike | None = None) -> PretrainedStatus:
    """Whether ``name`` can be loaded offline here, and whether its files were verified (nothing is hashed).

    Raises:
        CheckpointError: a converted copy that was not made from the registry's pinned files.
    """
    from huggingface_hub import try_to_load_from_cache

    entry = get_pretrained(name)
    if not entry.is_release:
        target = converted_dir(entry)
        if (target / CONFIG_FILE).is_file():
            _check_converted(entry, target)
            files = QualiCLIPConfig.read(target / CONFIG_FILE).files
            verified = bool(files) and all(is_verified(target / file, sha) for file, sha in files.items())
            return PretrainedStatus(entry.name, target, verified)
    files = [entry.config, entry.weights] if entry.is_release else list(entry.files)
    cache = hub_cache_dir(cache_dir)
    found = [
        try_to_load_from_cache(f.repo_id, f.filename, cache_dir=cache, revision=f.revision)
        for f in files
        if f is not None
    ]
    if not found or not all(isinstance(path, str) for path in found):
        return PretrainedStatus(entry.name, None, False)
    pinned = [f for f in files if f is not None]
    verified = all(is_verified(path, f.sha256) for path, f in zip(found, pinned, strict=True))
    return PretrainedStatus(entry.name, Path(str(found[0])).parent, verified)


def _not_found(attempt: _Unavailable) -> WeightsNotFoundError:
    lines = ["QualiCLIP weights could not be found. Sources tried:", f"  - {attempt.where}: {attempt.reason}"]
    lines += [
        "To fix this:",
        "  - allow downloads (unset HF_HUB_OFFLINE, drop local_files_only or --offline) on a machine with network, or",
        "  - run `qualiclip download NAME --to DIR` where there is network and copy DIR here "
        "(then pass DIR/NAME as the source), or",
        "  - point HF_HUB_CACHE (or cache_dir=) to a cache that holds the weights, or",
        f"  - pass a local file or folder as the source (e.g. the official qualiclip.pth from {OFFICIAL_URL}).",
    ]
    return WeightsNotFoundError("\n".join(lines))


def resolve(
    source: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    need_text: bool = False,
    verify: Verify = True,
) -> Path:
    """Local path (file or layout folder) holding the weights for ``source``, downloading if needed.

    ``None`` is the registry's default, ``"qualiclip"``. Registry names are pinned: ``revision`` only
    applies to ``hf-hub:`` sources.

    Raises:
        WeightsNotFoundError: the source cannot be had from here; the message lists what was tried.
        CheckpointError: a file differs from the registry's pin, or a converted copy is corrupt.
    """
    verify = validate_verify(verify)
    source = DEFAULT_NAME if source is None else source
    if is_pretrained_name(source):
        if revision is not None:
            raise ValueError(f"{source!r} is pinned by the registry; `revision` applies to 'hf-hub:' sources only")
        entry = get_pretrained(str(source))
    elif isinstance(source, str) and source.startswith(HUB_PREFIX):
        entry = None
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(
                f"{path}: no such file or directory (use a registry name such as {DEFAULT_NAME!r}, "
                "or 'hf-hub:ORG/REPO' for Hub sources)"
            )
        return path
    cache = hub_cache_dir(cache_dir)
    network = _Network(allowed=not (local_files_only or is_offline()))
    try:
        if entry is not None:
            return _resolve_pretrained(entry, cache, network, need_text, verify)
        hub = parse_hub_source(str(source), revision)
        return fetch_hub_layout(hub, cache_dir=cache, network=network, need_text=need_text)
    except _Unavailable as err:
        raise _not_found(err) from None


def load_checkpoint(
    source: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    need_text: bool = False,
    verify: Verify = True,
    prompt_learner: str | os.PathLike | None = None,
) -> Checkpoint:
    """Resolve ``source`` (see :func:`resolve`) and read its tensors.

    ``prompt_learner`` is a QualiCLIP+ prompt learner file in pyiqa's layout: its learned prompts are
    encoded with the text tower of ``source``, which must hold one.
    """
    if prompt_learner is not None:
        if need_text:
            raise ValueError("custom prompts replace the learned prompts of a prompt learner: give one or the other")
        learner = Path(prompt_learner).expanduser()
        if not learner.is_file():
            raise WeightsNotFoundError(f"{learner}: no such prompt learner file")
        if is_pretrained_name(source) and get_pretrained(str(source)).prompt_learner is not None:
            source = DEFAULT_NAME  # a QualiCLIP+ name's base is QualiCLIP; the given learner replaces its own
    path = resolve(
        source,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        need_text=need_text or prompt_learner is not None,
        verify=verify,
    )
    checkpoint = read_checkpoint(path, need_text=need_text or prompt_learner is not None, verify=verify)
    source = DEFAULT_NAME if source is None else source
    if is_pretrained_name(source):  # read from its .pth (custom prompts), the registry still vouches for it
        entry = get_pretrained(str(source))
        if not entry.is_release:
            provenance = {**_registry_provenance(entry), "converted_by": f"qualiclip-metric {__version__}"}
            checkpoint.config = replace(checkpoint.config, provenance={**provenance, **checkpoint.config.provenance})
    if is_pretrained_name(source) or str(source).startswith(HUB_PREFIX):
        checkpoint.origin = f"{source} ({path})"
    if prompt_learner is not None:
        from qualiclip_metric.prompt_learner import read_prompt_learner, with_learned_prompts

        checkpoint = with_learned_prompts(
            checkpoint,
            read_prompt_learner(learner),
            str(learner),
            provenance={"prompt_learner_sha256": sha256_file(learner)},
        )
    return checkpoint
