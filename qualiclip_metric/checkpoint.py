"""Checkpoint files on disk: our Hub layout, bare safetensors and the official/pyiqa ``.pth``.

Reading and writing only; where files come from is :mod:`qualiclip_metric.weights`' business.

Our layout is a directory holding ``model.safetensors`` (``visual.*``, ``prompts_features``,
``logit_scale``), optionally ``text.safetensors`` (the CLIP text tower, for custom prompts) and
``config.json`` (:class:`~qualiclip_metric.config.QualiCLIPConfig`, including the sha256 of every
tensor file). The official layout is one ``torch.save`` state dict with ``prompts_features`` and
``clip_model.<key>`` for every key of CLIP RN50.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qualiclip_metric.config import QualiCLIPConfig, validate_prompt_pairs
from qualiclip_metric.errors import CheckpointError
from qualiclip_metric.integrity import Verify, sha256_file, verify_sha256

MODEL_FILE = "model.safetensors"
TEXT_FILE = "text.safetensors"
CONFIG_FILE = "config.json"
OFFICIAL_PREFIX = "clip_model."
IMAGE_KEYS = ("prompts_features", "logit_scale")
TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.", "positional_embedding", "text_projection")
#: Entries of CLIP state dicts that carry no weights: OpenAI's non-tensor settings, and the text tower's
#: constant causal mask, which TorchScript archives and some exports save as a buffer.
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
#: Keys under which checkpoints wrap a state dict: Lightning's and MoCo's ``state_dict``, this project's
#: training states and many repositories' ``model``, pyiqa's ``params``.
STATE_WRAPPERS = ("state_dict", "model", "params")
DATA_PARALLEL_PREFIX = "module."
OFFICIAL_URL = "https://github.com/miccunifi/QualiCLIP/releases/download/weights/qualiclip.pth"

StateDict = dict[str, Tensor]


@dataclass
class Checkpoint:
    """Tensors and description of a QualiCLIP checkpoint, independent of the file format."""

    image_state: StateDict
    text_state: StateDict | None
    config: QualiCLIPConfig
    #: Where the tensors were read from, for error messages and ``qualiclip info``.
    origin: str


def split_state(state: Mapping[str, object], origin: str) -> tuple[StateDict, StateDict | None]:
    """Sort a flat CLIP/QualiCLIP state dict of any known layout into image and text parts."""
    state = unwrap_state(state, origin)
    image: StateDict = {}
    text: StateDict = {}
    unknown: list[str] = []
    for raw_key, value in state.items():
        key = raw_key.removeprefix(OFFICIAL_PREFIX)
        if key in IGNORED_KEYS:
            continue
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{origin}: entry {raw_key!r} is a {type(value).__name__}, not a tensor")
        if key.startswith("visual.") or key in IMAGE_KEYS:
            image[key] = value
        elif key.startswith(TEXT_PREFIXES):
            text[key] = value
        else:
            unknown.append(raw_key)
    if not image:
        hint = (
            " (QualiCLIP+ prompt-learner files hold no image tower)"
            if any("prompt_learner" in k for k in state)
            else ""
        )
        raise CheckpointError(f"{origin}: no image-tower tensors (visual.*) found{hint}")
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise CheckpointError(f"{origin}: {len(unknown)} unexpected keys that belong to no CLIP RN50 part ({shown})")
    return image, (text or None)


def read_torch_file(path: Path) -> dict[str, object]:
    """Load a ``.pth`` safely: tensors and plain containers only, never arbitrary objects."""
    try:  # memory-mapped where the format allows it: the zip format of torch >= 1.6, not the legacy one
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            reason = f"it holds Python objects other than tensors, which are never unpickled ({reason})"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(state).__name__}")
    return state


def unwrap_state(state: Mapping[str, object], origin: str) -> dict[str, object]:
    """The flat state dict inside the usual wrappers, without (Distributed)DataParallel's ``module.`` prefix.

    A mapping without tensors of its own that holds one of :data:`STATE_WRAPPERS` is unpacked (again, for
    nested wrappers), so that ``{"state_dict": ..., "epoch": 200}`` and the training engine's states read
    like the bare state dict.

    Raises:
        CheckpointError: two entries have the same name once ``module.`` is removed.
    """
    while not any(isinstance(value, Tensor) for value in state.values()):
        wrapper = next((name for name in STATE_WRAPPERS if isinstance(state.get(name), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]  # type: ignore[assignment]
    flat: dict[str, object] = {}
    for raw_key, value in state.items():
        key = str(raw_key).removeprefix(DATA_PARALLEL_PREFIX)
        if key in flat:
            raise CheckpointError(f"{origin}: entry {key!r} appears with and without the prefix {DATA_PARALLEL_PREFIX}")
        flat[key] = value
    return flat


def read_state_dict(path: str | os.PathLike, *, ignore: Collection[str] = ()) -> StateDict:
    """The tensors of one weights file: safetensors, or a PyTorch file read with ``weights_only=True``.

    The one reader of state dicts for every model of the project: wrappers and the ``module.`` prefix are
    removed (:func:`unwrap_state`), and callers map the names to their own networks. Nothing in the file
    can run code.

    Args:
        path: a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin``/``.tar`` file of ``torch.save``.
        ignore: names (after unwrapping) dropped whatever they hold, such as settings stored beside tensors.

    Raises:
        CheckpointError: the file is missing, unreadable, holds Python objects, or entries that are not tensors.

    Examples:
        >>> state = read_state_dict("moco_v2_800ep_pretrain.pth.tar")  # doctest: +SKIP
        >>> query = {k[10:]: v for k, v in state.items() if k.startswith("encoder_q.")}  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        state: Mapping[str, object] = read_safetensors(path)[0]
    else:
        state = read_torch_file(path)
    tensors: StateDict = {}
    for key, value in unwrap_state(state, str(path)).items():
        if key in ignore:
            continue
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value
    return tensors


def read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with errors that name the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
    return tensors, metadata


def _config_from_metadata(metadata: dict[str, str], origin: str) -> QualiCLIPConfig:
    """A bare ``model.safetensors`` carries its config in the header; other files get the defaults."""
    if "qualiclip_config" not in metadata:
        return QualiCLIPConfig()
    try:
        return QualiCLIPConfig.from_dict(json.loads(metadata["qualiclip_config"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{origin}: invalid config in safetensors metadata: {err}") from err


def verify_files(
    directory: Path,
    config: QualiCLIPConfig | Mapping[str, str],
    names: Sequence[str],
    verify: Verify = True,
    *,
    config_file: str = CONFIG_FILE,
) -> None:
    """Compare each file's sha256 with the value recorded in the layout's config (see :mod:`~.integrity`).

    ``config`` is a :class:`QualiCLIPConfig` or the ``files`` record (sha256 by file name) of any layout.
    """
    recorded = config.files if isinstance(config, QualiCLIPConfig) else config
    for name in names:
        expected = recorded.get(name)
        if expected is None:
            raise CheckpointError(f"{directory / config_file}: records no sha256 for {name}")
        verify_sha256(directory / name, expected, verify=verify)


def read_tensor_layout(
    directory: str | os.PathLike, names: Sequence[str], *, config_file: str = CONFIG_FILE, verify: Verify = True
) -> tuple[dict[str, StateDict], dict[str, Any]]:
    """The tensors of the named files of a layout folder, each checked against its recorded sha256, and its config.

    The layout is what :func:`write_tensor_layout` writes, QualiCLIP's and the baselines' alike.

    Raises:
        CheckpointError: the config is missing or invalid, a file is missing, damaged or has no recorded hash.
    """
    directory = Path(directory).expanduser()
    config_path = directory / config_file
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no {config_file}; not a folder written by this project's exports")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_path}: not a readable JSON config: {err}") from err
    files = config.get("files") if isinstance(config, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f'{config_path}: records no sha256 of its files ("files"); export it again')
    for name in names:
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: {name} is missing")
    verify_files(directory, files, names, verify, config_file=config_file)
    return {name: read_safetensors(directory / name)[0] for name in names}, config


def read_layout(directory: Path, *, need_text: bool = False, verify: Verify = True) -> Checkpoint:
    """Read a directory in our Hub layout."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; not a qualiclip-metric checkpoint directory")
    config = QualiCLIPConfig.read(config_path)
    names = [MODEL_FILE] + ([TEXT_FILE] if need_text else [])
    for name in names:
        if not (directory / name).is_file():
            what = "custom prompts need the text tower, and " if name == TEXT_FILE else ""
            raise CheckpointError(f"{directory}: {what}{name} is missing")
    verify_files(directory, config, names, verify)
    image, _ = read_safetensors(directory / MODEL_FILE)
    image_state, stray_text = split_state(image, str(directory / MODEL_FILE))
    text_state = None
    if need_text:
        text, _ = read_safetensors(directory / TEXT_FILE)
        text_state = {**(stray_text or {}), **text}
    return Checkpoint(image_state, text_state, config, origin=str(directory))


def read_checkpoint(path: str | os.PathLike, *, need_text: bool = False, verify: Verify = True) -> Checkpoint:
    """Read any supported local checkpoint: our layout directory, ``.safetensors`` or ``.pth``.

    ``verify`` applies to layout folders, whose ``config.json`` records the hash of every tensor file.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return read_layout(path, need_text=need_text, verify=verify)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        config = _config_from_metadata(metadata, str(path))
        image_state, text_state = split_state(tensors, str(path))
    else:
        ignored = IGNORED_KEYS | {OFFICIAL_PREFIX + key for key in IGNORED_KEYS}
        image_state, text_state = split_state(read_state_dict(path, ignore=ignored), str(path))
        config = QualiCLIPConfig()
    if need_text and text_state is None:
        raise CheckpointError(f"{path}: custom prompts need the text tower, which this file lacks")
    return Checkpoint(image_state, text_state, config, origin=str(path))


def has_text_tower(path: str | os.PathLike) -> bool:
    """Whether a local checkpoint holds the CLIP text tower (needed for custom prompts), without loading it."""
    path = Path(path)
    if path.is_dir():
        return (path / TEXT_FILE).is_file()
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
    else:
        keys = list(unwrap_state(read_torch_file(path), str(path)))
    return any(key.removeprefix(OFFICIAL_PREFIX).startswith(TEXT_PREFIXES) for key in keys)


def umask_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` give a new file or folder under the process umask.

    ``mkdtemp``, ``mkstemp`` and safetensors create 0700/0600 instead, which other users of a shared
    cache or results folder cannot read.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _share_like_new_files(directory: Path) -> None:
    """Give a staged folder and its files the modes of newly created ones."""
    directory.chmod(umask_mode(directory=True))
    for file in directory.iterdir():
        file.chmod(umask_mode())


def _save_safetensors(tensors: StateDict, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


@contextlib.contextmanager
def staged_folder(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``directory`` to fill; on success it is renamed into place.

    Readers never see a half-written folder, and a failure leaves nothing behind. An existing
    ``directory`` raises :class:`FileExistsError` unless ``overwrite`` is set (checked again after
    filling, since another process may have written it meanwhile).
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        _share_like_new_files(staging)
        if directory.exists():
            if not overwrite:
                raise FileExistsError(f"{directory} was written meanwhile by another process")
            shutil.rmtree(directory)
        try:
            os.replace(staging, directory)
        except OSError as err:  # another writer's folder landed in between
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise FileExistsError(f"{directory} was written meanwhile by another process") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_tensor_layout(
    directory: str | os.PathLike,
    tensor_files: Mapping[str, Mapping[str, Tensor]],
    config: Mapping[str, Any],
    *,
    config_file: str = CONFIG_FILE,
    metadata: Mapping[str, Mapping[str, str]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a layout folder: safetensors files and a JSON config recording the sha256 of each under ``files``.

    The one export layout of the project (QualiCLIP's, RankIQA's and Re-IQA's); ``config`` carries what
    rebuilds the model and its ``provenance``. The folder is filled as a temporary sibling and renamed into
    place (:func:`staged_folder`), so readers never see a half-written export.

    Args:
        directory: the folder to write.
        tensor_files: tensors by file name (``model.safetensors``: ``{"fc.weight": ...}``).
        config: JSON-ready description; its ``files`` entry is replaced by the hashes of ``tensor_files``.
        config_file: name of the JSON file.
        metadata: safetensors header metadata by file name.
        overwrite: replace an existing ``directory``.

    Raises:
        FileExistsError: ``directory`` exists and ``overwrite`` is not set.

    Examples:
        >>> write_tensor_layout("export", {"model.safetensors": net.state_dict()}, {"arch": "vgg16"})  # doctest: +SKIP
    """
    metadata = metadata or {}
    with staged_folder(directory, overwrite=overwrite) as staging:
        files = {}
        for name, tensors in tensor_files.items():
            _save_safetensors(dict(tensors), staging / name, dict(metadata.get(name, {"format": "pt"})))
            files[name] = sha256_file(staging / name)
        record = {**config, "files": files}
        (staging / config_file).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(directory)


def write_layout(
    checkpoint: Checkpoint, directory: str | os.PathLike, *, include_text: bool = True, overwrite: bool = False
) -> Path:
    """Write our Hub layout (into a temporary sibling, then renamed into place) and return it.

    An existing ``directory`` raises :class:`FileExistsError` unless ``overwrite`` is set.
    """
    base_config = replace(checkpoint.config, files={})
    tensor_files = {MODEL_FILE: checkpoint.image_state}
    metadata = {
        MODEL_FILE: {"format": base_config.format, "qualiclip_config": base_config.to_json()},
        TEXT_FILE: {"format": base_config.format},
    }
    if include_text and checkpoint.text_state:
        tensor_files[TEXT_FILE] = checkpoint.text_state
    return write_tensor_layout(directory, tensor_files, base_config.to_dict(), metadata=metadata, overwrite=overwrite)


def write_official(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write the official ``.pth`` layout (needs the text tower: the official file holds all of CLIP)."""
    if checkpoint.text_state is None:
        raise CheckpointError(f"{checkpoint.origin}: the official layout holds the text tower, which is missing")
    validate_prompt_pairs(checkpoint.config.prompt_pairs)
    state: dict[str, Tensor] = {"prompts_features": checkpoint.image_state["prompts_features"]}
    for key, value in {**checkpoint.image_state, **checkpoint.text_state}.items():
        if key != "prompts_features":
            state[OFFICIAL_PREFIX + key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path
