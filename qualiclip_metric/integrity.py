"""sha256 checks of weight files, with a stamp so that a file verified once is not hashed on every load.

A stamp records the real path, size, modification time and sha256 of a file that matched its expected
hash. A later check of the same unchanged file (same path, size and mtime) against the same hash
trusts the stamp; any change to the file, or ``verify="always"``, hashes it again. Stamps live in the
package's cache (:func:`package_cache_dir`) and are written on a best-effort basis: a read-only cache
only means hashing every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from qualiclip_metric.errors import CheckpointError

#: ``True``: hash unless a stamp vouches for the file; ``"always"``: hash every time; ``False``: never hash.
Verify = bool | Literal["always"]
LIBRARY_NAME = "qualiclip-metric"


def validate_verify(verify: object) -> Verify:
    if verify is True or verify is False or verify == "always":
        return verify  # type: ignore[return-value]
    raise ValueError(f"Argument `verify` must be True, False or 'always', got {verify!r}")


def package_cache_dir(namespace: str, subfolder: str) -> Path:
    """``<HF assets cache>/qualiclip-metric/<namespace>/<subfolder>``, created: where Hugging Face tooling
    expects derived files.

    The assets cache is ``HF_ASSETS_CACHE`` (read when called), else huggingface_hub's default
    (``~/.cache/huggingface/assets``); it is never the hub cache, which ``scan_cache_dir`` checks.
    """
    from huggingface_hub import cached_assets_path, constants

    assets = os.environ.get("HF_ASSETS_CACHE") or constants.HF_ASSETS_CACHE
    return cached_assets_path(LIBRARY_NAME, namespace=namespace, subfolder=subfolder, assets_dir=assets)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(real: Path) -> Path:
    return package_cache_dir("verified", "stamps") / (hashlib.sha256(str(real).encode()).hexdigest()[:32] + ".json")


def _fingerprint(real: Path, sha256: str) -> dict[str, object]:
    status = real.stat()
    return {"path": str(real), "size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": sha256}


def _stamped(real: Path, expected: str) -> bool:
    try:
        return json.loads(_stamp_path(real).read_text(encoding="utf-8")) == _fingerprint(real, expected)
    except (OSError, ValueError):
        return False


def is_verified(path: str | os.PathLike, expected: str) -> bool:
    """Whether a stamp vouches that ``path``, unchanged since, has the expected sha256 (nothing is hashed)."""
    real = Path(path).resolve()
    return real.is_file() and _stamped(real, expected)


def _write_stamp(real: Path, sha256: str) -> None:
    try:
        stamp = _stamp_path(real)
        temporary = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(_fingerprint(real, sha256)), encoding="utf-8")
        os.replace(temporary, stamp)
    except (OSError, ValueError):  # a read-only or missing cache: verification still happened
        pass


def verify_sha256(
    path: str | os.PathLike, expected: str, *, verify: Verify = True, size: int | None = None, hint: str = ""
) -> None:
    """Refuse ``path`` unless its sha256 (and ``size``, when known) is the expected one.

    Raises:
        CheckpointError: the file differs; the message names the file, the expected and the actual value.
    """
    if verify is False:
        return
    real = Path(path).resolve()
    fix = hint or "the file is truncated, corrupt or was modified; delete it and download again"
    if size is not None and real.stat().st_size != size:
        raise CheckpointError(f"{path}: size mismatch (expected {size} bytes, got {real.stat().st_size}); {fix}")
    if verify != "always" and _stamped(real, expected):
        return
    actual = sha256_file(real)
    if actual != expected:
        raise CheckpointError(f"{path}: sha256 mismatch (expected {expected}, got {actual}); {fix}")
    _write_stamp(real, actual)


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 of named tensors' names, dtypes, shapes and bytes, whatever file (if any) they came from.

    Identifies the weights a derived file was made from, also for a model changed in memory.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
