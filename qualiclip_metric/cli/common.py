"""What the ``qualiclip`` commands share: exit codes, argument types and options, loading the model.

A command that cannot go on raises :class:`CommandError` with its exit code; :func:`qualiclip_metric.cli.main`
prints the message and returns the code.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from qualiclip_metric.inputs import MIN_IMAGE_SIDE as MIN_SIDE
from qualiclip_metric.runtimes import BACKENDS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_WEIGHTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CommandError(Exception):
    """Stops a command: ``message`` goes to stderr after ``qualiclip:``, ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = integer_at_least(1)


def positive_float(text: str) -> float:
    """An argparse type for positive finite numbers (a temperature of 0 is refused, not defaulted)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type for numbers in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Where weights come from: Hub revision, cache, offline."""
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to pin")
    parser.add_argument("--cache-dir", help="Hugging Face hub cache to use instead of HF_HUB_CACHE")
    parser.add_argument("--offline", action="store_true", help="use only cached files (like HF_HUB_OFFLINE=1)")


def scoring_arguments(parser: argparse.ArgumentParser, batching: bool = True) -> None:
    """Weights, device, precision and decoding options shared by ``score``, ``evaluate`` and ``map``.

    ``batching=False`` leaves out ``--batch-size`` and ``--workers`` (options of :func:`score_paths`).
    """
    if batching:
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            help="images per forward pass (default: 1 on the CPU, where batching is slower, 16 on GPUs)",
        )
        parser.add_argument(
            "--workers",
            type=integer_at_least(0),
            default=2,
            help="decoding processes; 0 decodes in the main process (default 2)",
        )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16", "fp16"),
        help="compute precision (default fp32, strict IEEE; with --fast, what the machine runs best)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="who computes the scores: torch (default, the reference), openvino or onnxruntime (CPU only)",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads for scoring (default: torch's, usually the core count)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="the fastest configuration this machine has within 3e-3 of fp32 (`qualiclip info` says which and why)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="like --fast, compiled with torch.compile (tens of seconds per image size; for same-size datasets)",
    )
    parser.add_argument(
        "--max-size",
        type=integer_at_least(MIN_SIDE),
        help=f"downscale images whose longer side exceeds this (at least {MIN_SIDE})",
    )
    parser.add_argument(
        "--max-pixels", type=integer_at_least(MIN_SIDE**2), help="refuse larger images (default about 89.5 megapixels)"
    )
    parser.add_argument(
        "--weights",
        metavar="SOURCE",
        help="a registry name (qualiclip, qualiclip+-spaq...; see `qualiclip info`), hf-hub:ORG/REPO[@REV], "
        "a layout folder, .safetensors or .pth (default: qualiclip)",
    )
    parser.add_argument(
        "--prompt-learner", metavar="FILE", help="a QualiCLIP+ prompt learner (pyiqa's .pth) for the --weights"
    )
    parser.add_argument(
        "--temperature", type=positive_float, help="softmax temperature (1 = official; 2 = pyiqa's numbers)"
    )
    weights_arguments(parser)


def pick_device(name: str, local_rank: int = 0) -> Any:
    """The device named, or the best available; "cuda" means this process's GPU under torchrun."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    if name != "auto":
        return torch.device(name)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_weights(args: argparse.Namespace, **options: Any) -> Any:
    """``from_pretrained`` with the weights arguments.

    Raises:
        CommandError: the weights cannot be loaded (exit 3), or an option cannot apply (exit 2).
    """
    from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
    from qualiclip_metric.model import QualiCLIP

    try:
        return QualiCLIP.from_pretrained(
            args.weights,
            prompt_learner=args.prompt_learner,
            revision=args.revision,
            cache_dir=args.cache_dir,
            local_files_only=args.offline,
            temperature=args.temperature,
            **options,
        )
    except (WeightsNotFoundError, CheckpointError, OSError) as err:  # OSError: a cache that cannot be written
        raise CommandError(f"cannot load weights:\n{err}", EXIT_WEIGHTS) from err
    except (ValueError, RuntimeError) as err:
        raise CommandError(str(err)) from err


def load_model(args: argparse.Namespace, prompts: list[list[str]] | None = None, local_rank: int = 0) -> Any:
    """The model the scoring arguments ask for, on its device.

    Raises:
        CommandError: as :func:`load_weights`, and for a device or options that cannot apply (exit 2).
    """
    try:
        device = pick_device(args.device, local_rank)
        options = inference_options(args, device)
    except (ValueError, RuntimeError) as err:  # RuntimeError: a device name torch does not know
        raise CommandError(str(err)) from err
    if options["backend"] != "torch" and not args.quiet:
        report_conversions()
    return load_weights(args, prompts=prompts, device=device, **options)


def report_conversions() -> None:
    """Say on stderr when a backend converts the model (seconds, once per model and version)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qualiclip: %(message)s (once; later runs use the cache)"))
    logger = logging.getLogger("qualiclip_metric.export")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def inference_options(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """``backend``, ``precision``, ``fast``, ``compiled`` and ``threads`` for ``from_pretrained``."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.compile and args.backend not in (None, "torch"):
        raise ValueError("--compile applies to the torch backend only")
    if args.fast and not args.compile:
        from qualiclip_metric.runtimes import fastest_configuration

        options = fastest_configuration(device, backend=args.backend, precision=args.precision).options()
    else:
        backend = "torch" if args.backend is None else args.backend
        precision = "fp32" if args.precision is None else args.precision
        options = {"backend": backend, "precision": precision, "fast": False}
    return {**options, "compiled": args.compile, "threads": args.threads}


def score_paths(args: argparse.Namespace, model: Any, paths: list[Any], per_pair: bool = False) -> Any:
    """Results for ``paths`` in order, as the batch scorer yields them, with the CLI's options."""
    from qualiclip_metric.batch import score_files
    from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS

    batch_size = args.batch_size
    if batch_size is None:
        batch_size = 1 if model.device.type == "cpu" else 16
    return score_files(
        paths,
        model,
        batch_size=batch_size,
        workers=args.workers,
        max_size=args.max_size,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        per_pair=per_pair,
    )
