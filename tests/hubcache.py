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


def pin_to(entry, files: dict[str, tuple[Path, str, int]]):
    """A registry ``entry`` with the sha256 and size of each of its files taken from ``files`` (by file name).

    Tests stand generated files in for the registry's real ones: repository, file names and commit stay.
    """
    from dataclasses import fields, replace

    from qualiclip_metric.pretrained import HubFile

    changes = {}
    for field in fields(entry):
        file = getattr(entry, field.name)
        if isinstance(file, HubFile) and file.filename in files:
            _, sha256, size = files[file.filename]
            changes[field.name] = replace(file, sha256=sha256, size=size)
    return replace(entry, **changes)


#: Runs the real CLI in a fresh process with the registry pinned to the files in ``QUALICLIP_TEST_PINS``
#: (JSON: file name -> [path, sha256, size]), as the ``pinned_registry`` fixture pins it in-process.
PINNED_CLI = """
import json, os, sys
sys.path.insert(0, os.environ["QUALICLIP_TEST_DIR"])
from hubcache import pin_to
from qualiclip_metric import pretrained
pins = json.loads(os.environ["QUALICLIP_TEST_PINS"])
pretrained.REGISTRY = {name: pin_to(entry, pins) for name, entry in pretrained.REGISTRY.items()}
from qualiclip_metric.cli import main
sys.exit(main(sys.argv[1:]))
"""
