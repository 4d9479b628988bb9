"""Convert an official or pyiqa ``.pth`` (or any readable checkpoint) into our Hub layout, then check scores.

    python -m hub.convert qualiclip.pth out/qualiclip-rn50 [--no-text] [--overwrite] [--images DIR]

The text tower is kept when the source has one (a bare ``model.safetensors`` has none).

The converted layout must give bit-identical scores to the source on the probe images (a folder, or
generated images); otherwise the output is removed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from hub.compare import probe_images, score_all
from qualiclip_metric import CheckpointError, QualiCLIP
from qualiclip_metric.checkpoint import has_text_tower, read_checkpoint
from qualiclip_metric.integrity import sha256_file
from qualiclip_metric.weights import convert_to_layout


def convert(source: Path, output: Path, *, include_text: bool, overwrite: bool, images: Path | None) -> float:
    """Write the layout and return the largest score difference against the source (0.0 when exact)."""
    provenance: dict[str, object] = {"source": str(source.name)}
    if source.is_file():
        provenance["source_sha256"] = sha256_file(source)
    checkpoint = read_checkpoint(source, need_text=include_text)
    convert_to_layout(checkpoint, output, provenance, include_text=include_text, overwrite=overwrite)
    probes = probe_images(images)
    before = score_all(QualiCLIP.from_pretrained(source), probes)
    after = score_all(QualiCLIP.from_pretrained(output), probes)
    return float((before - after).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="official/pyiqa .pth, a .safetensors file or a layout folder")
    parser.add_argument("output", type=Path, help="folder to create")
    parser.add_argument("--no-text", action="store_true", help="leave out the text tower (no custom prompts)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--images", type=Path, help="images for the score check (default: generated ones)")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        print(f"hub.convert: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if not args.source.exists():
        print(f"hub.convert: {args.source} does not exist", file=sys.stderr)
        return 2
    include_text = not args.no_text
    try:
        if include_text and not has_text_tower(args.source):
            print(f"hub.convert: {args.source} holds no text tower; the layout will have none", file=sys.stderr)
            include_text = False
        with torch.inference_mode():
            difference = convert(
                args.source, args.output, include_text=include_text, overwrite=args.overwrite, images=args.images
            )
    except (CheckpointError, ValueError) as err:
        print(f"hub.convert: {err}", file=sys.stderr)
        return 2
    if difference != 0.0:
        shutil.rmtree(args.output, ignore_errors=True)
        print(f"hub.convert: scores changed by up to {difference:.3g}; output removed", file=sys.stderr)
        return 1
    print(f"{args.output}: converted from {args.source}; scores identical on the probe images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
