"""Build a real Hugging Face hub cache on disk, as ``hf_hub_download`` leaves it after a download."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def prefill(cache: Path, repo_id: str, files: dict[str, Path], commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """``models--ORG--REPO/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/<ref>}``; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / name
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot
