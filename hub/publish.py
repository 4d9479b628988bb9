"""Publish a checkpoint folder in our layout to the Hugging Face Hub, with a model card.

    python -m hub.publish out/qualiclip-rn50 --repo ORG/NAME [--evaluation eval.json] [--private] [--dry-run]

The folder is verified (sha256 of every tensor file, every key and shape) before anything is sent. The
model card is rendered from ``hub/model_card.md``. ``--dry-run`` prints exactly what would be uploaded
and sends nothing. After an upload, the commit to pin is printed as ``hf-hub:ORG/NAME@<commit>``, with
the entry to add to :mod:`qualiclip_metric.pretrained` so that a registry name serves the release, pinned
to that commit and to the sha256 and size of every file.

``--evaluation`` takes a JSON list of ``{"dataset", "srcc", "plcc", "images", "protocol"}`` rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import string
import sys
import tempfile
from pathlib import Path
from typing import Any

from qualiclip_metric import QualiCLIP
from qualiclip_metric.checkpoint import CONFIG_FILE, MODEL_FILE, TEXT_FILE, read_layout
from qualiclip_metric.config import QualiCLIPConfig
from qualiclip_metric.integrity import sha256_file

TEMPLATE = Path(__file__).with_name("model_card.md")
CARD_FILE = "README.md"


def evaluation_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No evaluation was supplied with this release."
    lines = ["| dataset | images | protocol | SRCC | PLCC |", "|---|---:|---|---:|---:|"]
    for row in rows:
        plcc = f"{row['plcc']:.3f}" if row.get("plcc") is not None else "-"
        lines.append(
            f"| {row['dataset']} | {row.get('images', '-')} | {row.get('protocol', '-')} | {row['srcc']:.3f} | {plcc} |"
        )
    return "Measured for this release:\n\n" + "\n".join(lines)


def render_card(repo_id: str, folder: Path, config: QualiCLIPConfig, evaluation: list[dict[str, Any]]) -> str:
    files = [name for name in (CONFIG_FILE, MODEL_FILE, TEXT_FILE) if (folder / name).is_file()]
    table = "\n".join(f"| `{n}` | {(folder / n).stat().st_size} | `{sha256_file(folder / n)}` |" for n in files)
    provenance = ", ".join(f"{key}: `{value}`" for key, value in sorted(config.provenance.items())) or "not recorded"
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        repo_id=repo_id,
        pin="<commit>",
        files_table=table,
        provenance=provenance,
        evaluation=evaluation_table(evaluation),
    )


def stage(folder: Path, repo_id: str, evaluation: list[dict[str, Any]], staging: Path) -> list[Path]:
    """Verify ``folder`` and copy what will be uploaded, with the rendered card, into ``staging``."""
    has_text = (folder / TEXT_FILE).is_file()
    checkpoint = read_layout(folder, need_text=has_text, verify="always")
    QualiCLIP.from_checkpoint(checkpoint)  # every key and shape, not only the hashes
    names = [CONFIG_FILE, MODEL_FILE] + ([TEXT_FILE] if has_text else [])
    for name in names:
        shutil.copyfile(folder / name, staging / name)
    (staging / CARD_FILE).write_text(render_card(repo_id, folder, checkpoint.config, evaluation), encoding="utf-8")
    return [staging / name for name in [*names, CARD_FILE]]


def registry_entry(name: str, repo_id: str, commit: str, files: list[Path]) -> str:
    """Python source of the registry entry that pins this upload (repo, commit, sha256 and size of each file)."""
    by_name = {path.name: path for path in files}

    def hub_file(filename: str) -> str:
        path = by_name[filename]
        return f'HubFile("{repo_id}", "{filename}", "{commit}", "{sha256_file(path)}", {path.stat().st_size})'

    roles = [("weights", MODEL_FILE), ("config", CONFIG_FILE)] + ([("text", TEXT_FILE)] if TEXT_FILE in by_name else [])
    fields = "".join(f"        {role}={hub_file(filename)},\n" for role, filename in roles)
    return f'    "{name}": Pretrained(\n        "{name}",\n        "QualiCLIP release {repo_id}",\n{fields}    ),'


def publish(
    folder: Path,
    repo_id: str,
    *,
    evaluation: list[dict[str, Any]] | None = None,
    private: bool = False,
    dry_run: bool = False,
    api: Any = None,
    commit_message: str = "Upload QualiCLIP checkpoint",
) -> str | None:
    """Upload and return the commit hash (``None`` for a dry run)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(folder, repo_id, evaluation or [], Path(tmp))
        print(f"{'would upload' if dry_run else 'uploading'} to {repo_id}:")
        for path in files:
            print(f"  {path.name:<20} {path.stat().st_size:>12} bytes  sha256 {sha256_file(path)}")
        if dry_run:
            return None
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message)
        entry = registry_entry(repo_id.split("/")[-1], repo_id, commit.oid, files)
    print(f"published; pin it with: hf-hub:{repo_id}@{commit.oid}")
    print(f"registry entry for qualiclip_metric/pretrained.py (REGISTRY):\n{entry}")
    return commit.oid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="checkpoint folder in our layout (from hub.convert or training)")
    parser.add_argument("--repo", required=True, help="Hub repository, ORG/NAME")
    parser.add_argument("--evaluation", type=Path, help="JSON list of evaluation rows for the model card")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    args = parser.parse_args(argv)
    evaluation = json.loads(args.evaluation.read_text(encoding="utf-8")) if args.evaluation else []
    publish(args.folder, args.repo, evaluation=evaluation, private=args.private, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
