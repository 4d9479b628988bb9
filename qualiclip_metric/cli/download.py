"""``qualiclip download``: fetch, verify and convert weights once, into the cache or self-contained folders."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import EXIT_OK, EXIT_USAGE, EXIT_WEIGHTS, CommandError, weights_arguments


def add_parser(commands: Any) -> None:
    download = commands.add_parser(
        "download",
        help="fetch weights into the cache, or into a self-contained folder",
        description="Fetch, verify and convert weights once. With --to DIR, each NAME is written to DIR/NAME, "
        "a folder that `from_pretrained(DIR/NAME)` loads on a machine without network.",
    )
    download.add_argument(
        "names", nargs="*", metavar="NAME", help="registry names (see `qualiclip info`) or sources (default: qualiclip)"
    )
    download.add_argument("--to", type=Path, metavar="DIR", help="write each NAME as the folder DIR/NAME")
    download.add_argument(
        "--text", action="store_true", help="keep the text tower (for custom prompts; not for QualiCLIP+)"
    )
    weights_arguments(download)
    download.set_defaults(run=run)


def folder_name(source: str) -> str:
    """A folder name for ``source`` under ``download --to``: the registry name, ``ORG-REPO[-REV]`` of a Hub
    source, or a local source's own name."""
    name = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else Path(source).name
    return re.sub(r"[^A-Za-z0-9+._-]+", "-", name).strip("-.") or "weights"


def _same_tensors(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    import torch

    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def download_one(args: argparse.Namespace, name: str) -> str:
    """Fetch (and with ``--to`` write) one source; return what to print, or raise on failure."""
    from qualiclip_metric.checkpoint import TEXT_FILE, read_layout, write_layout
    from qualiclip_metric.errors import CheckpointError
    from qualiclip_metric.pretrained import get_pretrained, is_pretrained_name
    from qualiclip_metric.weights import load_checkpoint

    learned = is_pretrained_name(name) and get_pretrained(name).prompt_learner is not None
    need_text = args.text and not learned  # QualiCLIP+'s prompts are learned: there is no text tower to keep
    checkpoint = load_checkpoint(
        name, revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.offline, need_text=need_text
    )
    if args.to is None:
        return checkpoint.origin
    target = args.to / folder_name(name)
    if not target.exists():
        write_layout(checkpoint, target, include_text=need_text)
        return str(target)
    refusal = f"{target} exists and holds other weights; nothing was replaced"
    if need_text and not (target / TEXT_FILE).is_file():
        raise FileExistsError(f"{target} exists without the text tower that --text asks for; nothing was replaced")
    try:  # the same tensors, whatever the version that wrote them: keep the folder
        existing = read_layout(target, need_text=need_text, verify="always")
    except CheckpointError as err:
        raise FileExistsError(f"{refusal} ({err})") from err
    same_text = not need_text or _same_tensors(existing.text_state, checkpoint.text_state)
    if not (_same_tensors(existing.image_state, checkpoint.image_state) and same_text):
        raise FileExistsError(refusal)
    return f"{target} (already there, verified)"


def run(args: argparse.Namespace) -> int:
    """Every NAME in turn: one that fails is reported and the others are still fetched."""
    from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
    from qualiclip_metric.pretrained import DEFAULT_NAME

    if args.to is not None and args.to.exists() and not args.to.is_dir():
        raise CommandError(f"--to {args.to}: not a folder")
    code = EXIT_OK
    for name in args.names or [DEFAULT_NAME]:
        try:
            print(f"{name}: {download_one(args, name)}", flush=True)
        except (WeightsNotFoundError, CheckpointError, FileExistsError, OSError) as err:
            print(f"qualiclip: {name}: {err}", file=sys.stderr)
            code = max(code, EXIT_WEIGHTS)
        except ValueError as err:  # a malformed source (hf-hub:a/b/c), or options that cannot apply
            print(f"qualiclip: {name}: {err}", file=sys.stderr)
            code = EXIT_USAGE if code == EXIT_OK else code
    return code
