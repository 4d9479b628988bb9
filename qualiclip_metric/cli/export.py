"""``qualiclip export``: the whole score as an ONNX or OpenVINO model that runs without this package."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import EXIT_OK, CommandError, load_weights, positive_float, weights_arguments
from qualiclip_metric.export import FORMATS


def add_parser(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write the whole score as an ONNX or OpenVINO model that runs without this package",
        description="Write DIR with the model file (model.onnx, or model.xml and model.bin) and qualiclip.json, "
        "which describes its input (float RGB in [0, 1], N x 3 x H x W), its outputs (the N scores, and with "
        "--per-pair the N x P pair probabilities), the prompts, the temperature and the weights' provenance.",
    )
    export.add_argument("--format", choices=FORMATS, required=True, help="onnx or openvino")
    export.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="folder to create (new)")
    export.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32 (default); fp16; bf16 (openvino only: its inference precision hint)",
    )
    export.add_argument("--per-pair", action="store_true", help="also output the probability of every antonym pair")
    export.add_argument(
        "--weights", metavar="SOURCE", help="a registry name, hf-hub:ORG/REPO[@REV], a folder or a file"
    )
    export.add_argument("--prompt-learner", metavar="FILE", help="a QualiCLIP+ prompt learner for the --weights")
    export.add_argument("--temperature", type=positive_float, help="softmax temperature frozen into the file")
    weights_arguments(export)
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qualiclip_metric.export import export_scorer, validate_export

    try:
        validate_export(args.format, args.precision, 2 if args.per_pair else 1)
        if args.output.exists():
            raise ValueError(f"--output {args.output} exists; give a new folder (nothing was replaced)")
    except ValueError as err:
        raise CommandError(str(err)) from err
    model = load_weights(args, device="cpu")
    try:
        directory = export_scorer(model, args.output, args.format, precision=args.precision, per_pair=args.per_pair)
    except (FileExistsError, OSError) as err:
        raise CommandError(f"cannot export to {args.output}: {err}") from err
    outputs = "scores and pair probabilities" if args.per_pair else "scores"
    print(f"{directory}: {args.format} {args.precision}, {outputs}, from {model.source}")
    return EXIT_OK
