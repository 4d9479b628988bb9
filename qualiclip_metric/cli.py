"""The ``qualiclip`` command.

Exit codes: 0 every input was scored; 1 some inputs could not be scored (they are in the output
with their error); 2 invalid arguments, no input images, or an output that cannot be written;
3 the weights could not be loaded; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qualiclip_metric.export import FORMATS
from qualiclip_metric.inputs import MIN_IMAGE_SIDE as MIN_SIDE
from qualiclip_metric.runtimes import BACKENDS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_WEIGHTS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _integer_at_least(1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to pin")
    parser.add_argument("--cache-dir", help="Hugging Face hub cache to use instead of HF_HUB_CACHE")
    parser.add_argument("--offline", action="store_true", help="use only cached files (like HF_HUB_OFFLINE=1)")


def _scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Weights, device, precision and decoding options shared by ``score`` and ``evaluate``."""
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per forward pass (default: 1 on the CPU, where batching is slower, 16 on GPUs)",
    )
    parser.add_argument(
        "--workers",
        type=_integer_at_least(0),
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
        "--threads", type=_positive_int, help="CPU threads for scoring (default: torch's, usually the core count)"
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
        type=_integer_at_least(MIN_SIDE),
        help=f"downscale images whose longer side exceeds this (at least {MIN_SIDE})",
    )
    parser.add_argument(
        "--max-pixels", type=_integer_at_least(MIN_SIDE**2), help="refuse larger images (default about 89.5 megapixels)"
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
        "--temperature", type=_positive_float, help="softmax temperature (1 = official; 2 = pyiqa's numbers)"
    )
    _weights_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    from qualiclip_metric import __version__

    parser = argparse.ArgumentParser(
        prog="qualiclip", description="QualiCLIP no-reference image quality (higher is better)."
    )
    parser.add_argument("--version", action="version", version=f"qualiclip-metric {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = commands.add_parser(
        "score", help="score image files and folders", description="Score images; results keep the input order."
    )
    score.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    _scoring_arguments(score)
    score.add_argument(
        "--prompt-pair",
        nargs=2,
        action="append",
        metavar=("POSITIVE", "NEGATIVE"),
        help="custom antonym pair (repeatable)",
    )
    score.add_argument("--per-pair", action="store_true", help="also report the probability of every antonym pair")
    score.add_argument(
        "--output", "-o", type=Path, help="write results to FILE.csv, .json or .jsonl (default: CSV on stdout)"
    )
    score.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")

    evaluate = commands.add_parser(
        "evaluate",
        help="correlation with subjective scores on a dataset",
        description="Score a dataset and report SRCC, KRCC, PLCC (raw and after a logistic fit) and RMSE.",
    )
    evaluate.add_argument("--images", type=Path, required=True, help="folder the CSV's image paths are relative to")
    evaluate.add_argument(
        "--scores", type=Path, required=True, help="image,mos CSV or a pyiqa meta_info_*.csv (NR or FR layout)"
    )
    evaluate.add_argument("--name", help="dataset name (default: from the CSV file name)")
    evaluate.add_argument("--splits", type=_positive_int, default=10, help="random splits of the protocol (default 10)")
    evaluate.add_argument("--test-fraction", type=_fraction, default=0.2, help="test part of each split (default 0.2)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the splits and the bootstrap (default 0)")
    evaluate.add_argument(
        "--bootstrap", type=_integer_at_least(0), default=1000, help="bootstrap resamples; 0 disables (default 1000)"
    )
    evaluate.add_argument(
        "--split-files",
        type=Path,
        help="folder with ARNIQA's train.npy and test.npy: use its splits instead of random ones",
    )
    evaluate.add_argument("--plot", type=Path, help="save a scatter plot with the fitted logistic (needs matplotlib)")
    evaluate.add_argument("--output", "-o", type=Path, help="write the full report as JSON")
    evaluate.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--predictions",
        type=Path,
        help="evaluate the scores in this CSV (path,score[,error], as `qualiclip score` writes) instead of QualiCLIP's",
    )
    _scoring_arguments(evaluate)

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
    _weights_arguments(download)

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
    export.add_argument("--temperature", type=_positive_float, help="softmax temperature frozen into the file")
    _weights_arguments(export)

    info = commands.add_parser("info", help="version, the registry's weights and their state, cache and devices")
    info.add_argument("--weights", metavar="SOURCE", help="weights source to look up in the cache")
    _weights_arguments(info)
    return parser


def _pick_device(name: str, local_rank: int = 0) -> Any:
    """The device named, or the best available; "cuda" means this process's GPU under torchrun."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    if name != "auto":
        return torch.device(name)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _load_weights(args: argparse.Namespace, **options: Any) -> Any:
    """``from_pretrained`` with the weights arguments, or the exit code after printing why it failed."""
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
        print(f"qualiclip: cannot load weights:\n{err}", file=sys.stderr)
        return EXIT_WEIGHTS
    except (ValueError, RuntimeError) as err:
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE


def _load_model(args: argparse.Namespace, prompts: list[list[str]] | None = None, local_rank: int = 0) -> Any:
    """The model the scoring arguments ask for, or the exit code after printing why it cannot be loaded."""
    try:
        device = _pick_device(args.device, local_rank)
        options = _inference_options(args, device)
    except (ValueError, RuntimeError) as err:  # RuntimeError: a device name torch does not know
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE
    if options["backend"] != "torch" and not args.quiet:
        _report_conversions()
    return _load_weights(args, prompts=prompts, device=device, **options)


def _report_conversions() -> None:
    """Say on stderr when a backend converts the model (seconds, once per model and version)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("qualiclip: %(message)s (once; later runs use the cache)"))
    logger = logging.getLogger("qualiclip_metric.export")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _inference_options(args: argparse.Namespace, device: Any) -> dict[str, Any]:
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
        options = {"backend": args.backend or "torch", "precision": args.precision or "fp32", "fast": False}
    return {**options, "compiled": args.compile, "threads": args.threads}


def _score_paths(args: argparse.Namespace, model: Any, paths: list[Any], per_pair: bool = False) -> Any:
    """Results for ``paths`` in order, as the batch scorer yields them, with the CLI's options."""
    from qualiclip_metric.batch import score_files
    from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS

    return score_files(
        paths,
        model,
        batch_size=args.batch_size or (1 if model.device.type == "cpu" else 16),
        workers=args.workers,
        max_size=args.max_size,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        per_pair=per_pair,
    )


def run_score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qualiclip_metric.distributed import gather_in_order, init_process_group, ranks_from_environment, shard
    from qualiclip_metric.inputs import collect_image_files
    from qualiclip_metric.score_writer import OutputError, ScoringInterrupted, check_output, write_scores

    ranks = ranks_from_environment()
    try:
        if args.output is not None and ranks.is_main:
            check_output(args.output)
        if args.prompt_pair:
            from qualiclip_metric.config import validate_prompt_pairs

            validate_prompt_pairs(args.prompt_pair)
    except (OutputError, ValueError) as err:
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        print("qualiclip: no image files found in " + ", ".join(args.paths), file=sys.stderr)
        return EXIT_USAGE
    model = _load_model(args, prompts=args.prompt_pair, local_rank=ranks.local_rank)
    if isinstance(model, int):
        return model

    start = time.perf_counter()
    if ranks.enabled:  # under torchrun: each rank scores a shard, rank 0 writes everything in input order
        init_process_group(ranks, model.device)
        shard_results = _score_paths(args, model, shard(files, ranks), per_pair=args.per_pair)
        results = gather_in_order(shard_results, ranks, len(files))
        if not ranks.is_main:
            return EXIT_OK
    else:
        results = _score_paths(args, model, files, per_pair=args.per_pair)
    pair_names = model.pair_names if args.per_pair else []
    progress = tqdm(total=len(files), unit="img", file=sys.stderr, disable=True if args.quiet else None)
    try:
        summary = write_scores(results, args.output, pair_names=pair_names, progress=progress.update)
    except OutputError as err:
        progress.close()
        print(f"qualiclip: {err}; nothing was replaced", file=sys.stderr)
        return EXIT_USAGE
    except ScoringInterrupted as stop:
        progress.close()
        where = f"; the {stop.count} results so far are in {stop.kept}" if stop.kept else ""
        print(f"qualiclip: interrupted after {stop.count} of {len(files)} images{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress.close()
    elapsed = time.perf_counter() - start
    failed = summary.failed
    if not args.quiet:
        for row in failed:
            print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
        mean = f", mean score {summary.mean:.4f}" if summary.scored else ""
        print(
            f"qualiclip: scored {summary.scored} of {len(files)} images in {elapsed:.1f} s "
            f"({summary.scored / max(elapsed, 1e-9):.2f} images/s){mean}; {len(failed)} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from qualiclip_metric.datasets import read_csv_dataset
    from qualiclip_metric.evaluation import (
        Protocol,
        check_scores,
        dataset_splits,
        evaluate_predictions,
        read_predictions,
        report_table,
    )
    from qualiclip_metric.score_writer import check_writable, write_json_atomically

    try:
        for path in (args.output, args.plot):
            if path is not None:
                check_writable(path)
        if args.plot is not None:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                raise ValueError('--plot needs matplotlib: pip install "qualiclip-metric[plot]"')
        dataset = read_csv_dataset(args.images, args.scores, name=args.name)
        check_scores(dataset.scores, f"{args.scores}: the subjective scores")
        protocol = Protocol(
            splits=args.splits,
            test_fraction=args.test_fraction,
            seed=args.seed,
            bootstrap=args.bootstrap,
            split_files=args.split_files,
        )
        dataset_splits(dataset, protocol)  # split files that do not fit are refused before anything is scored
        if args.predictions is not None:
            predictions, errors = read_predictions(args.predictions, dataset)
            source = f"predictions {args.predictions}"
    except (OSError, ValueError) as err:
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.predictions is None:
        model = _load_model(args)
        if isinstance(model, int):
            return model
        predictions, errors = _score_dataset(args, model, dataset)
        source = model.source
    scored = int(np.isfinite(predictions).sum())
    if scored < 3:
        print(f"qualiclip: only {scored} images could be scored; need at least 3", file=sys.stderr)
        return EXIT_SOME_FAILED
    try:
        report = {"weights": source, **evaluate_predictions(dataset, predictions, protocol, errors=errors)}
    except (OSError, ValueError) as err:  # e.g. a split whose test part has fewer than 3 images
        print(f"qualiclip: cannot evaluate: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(report_table(report))
    try:
        if args.output:
            write_json_atomically(args.output, report)
        if args.plot:
            from qualiclip_metric.plotting import scatter_with_logistic

            scatter_with_logistic(
                np.array([row["score"] for row in report["scores"]]),
                np.array([row["mos"] for row in report["scores"]]),
                args.plot,
                title=f"{dataset.name}: SRCC {report['all_images']['srcc']:.3f}",
                target_higher_is_better=dataset.higher_is_better,
            )
    except OSError as err:
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE
    for row in report["failed"]:
        print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if report["failed"] else EXIT_OK


def _score_dataset(args: argparse.Namespace, model: Any, dataset: Any) -> tuple[Any, dict[int, str]]:
    """The model's score of each image of ``dataset`` (NaN where it failed) and the errors by row."""
    import numpy as np
    from tqdm import tqdm

    progress = tqdm(total=len(dataset), unit="img", file=sys.stderr, disable=True if args.quiet else None)
    predictions, errors = np.full(len(dataset), np.nan), {}
    for row, result in enumerate(_score_paths(args, model, dataset.paths)):
        progress.update()
        if result.ok:
            predictions[row] = result.score
        else:
            errors[row] = result.error
    progress.close()
    return predictions, errors


def _folder_name(source: str) -> str:
    """A folder name for ``source`` under ``download --to``: the registry name, ``ORG-REPO[-REV]`` of a Hub
    source, or a local source's own name."""
    name = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else Path(source).name
    return re.sub(r"[^A-Za-z0-9+._-]+", "-", name).strip("-.") or "weights"


def _same_tensors(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    import torch

    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _download_one(args: argparse.Namespace, name: str) -> str:
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
    target = args.to / _folder_name(name)
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


def run_download(args: argparse.Namespace) -> int:
    from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
    from qualiclip_metric.pretrained import DEFAULT_NAME

    if args.to is not None and args.to.exists() and not args.to.is_dir():
        print(f"qualiclip: --to {args.to}: not a folder", file=sys.stderr)
        return EXIT_USAGE
    code = EXIT_OK
    for name in args.names or [DEFAULT_NAME]:
        try:
            print(f"{name}: {_download_one(args, name)}", flush=True)
        except (WeightsNotFoundError, CheckpointError, FileExistsError, OSError) as err:
            print(f"qualiclip: {name}: {err}", file=sys.stderr)
            code = max(code, EXIT_WEIGHTS)
        except ValueError as err:  # a malformed source (hf-hub:a/b/c), or options that cannot apply
            print(f"qualiclip: {name}: {err}", file=sys.stderr)
            code = EXIT_USAGE if code == EXIT_OK else code
    return code


def run_export(args: argparse.Namespace) -> int:
    from qualiclip_metric.export import export_scorer, validate_export

    try:
        validate_export(args.format, args.precision, 2 if args.per_pair else 1)
        if args.output.exists():
            raise ValueError(f"--output {args.output} exists; give a new folder (nothing was replaced)")
    except ValueError as err:
        print(f"qualiclip: {err}", file=sys.stderr)
        return EXIT_USAGE
    model = _load_weights(args, device="cpu")
    if isinstance(model, int):
        return model
    try:
        directory = export_scorer(model, args.output, args.format, precision=args.precision, per_pair=args.per_pair)
    except (FileExistsError, OSError) as err:
        print(f"qualiclip: cannot export to {args.output}: {err}", file=sys.stderr)
        return EXIT_USAGE
    outputs = "scores and pair probabilities" if args.per_pair else "scores"
    print(f"{directory}: {args.format} {args.precision}, {outputs}, from {model.source}")
    return EXIT_OK


def run_info(args: argparse.Namespace) -> int:
    import torch

    from qualiclip_metric import __version__
    from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
    from qualiclip_metric.machine import cpu_features, cpu_model
    from qualiclip_metric.pretrained import ALIASES, DEFAULT_NAME, REGISTRY
    from qualiclip_metric.runtimes import fastest_configuration
    from qualiclip_metric.weights import hub_cache_dir, is_offline, pretrained_status, resolve

    devices = ["cpu"]
    devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    lines = {
        "qualiclip-metric": __version__,
        "torch": torch.__version__,
        "default weights": DEFAULT_NAME,
        "hub cache": str(hub_cache_dir(args.cache_dir)),
        "offline": str(is_offline() or args.offline),
        "devices": ", ".join(devices),
        "cpu": cpu_model(),
        "cpu flags": " ".join(cpu_features()) or "none listed",
        "backends": ", ".join(_backend_versions()),
    }
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        choice = fastest_configuration(device)
        lines[f"--fast on {device}"] = f"{choice}: {choice.reason}"
    if args.weights is not None:
        try:  # look in the cache only: `info` never downloads
            lines["weights"] = str(
                resolve(args.weights, revision=args.revision, cache_dir=args.cache_dir, local_files_only=True)
            )
        except WeightsNotFoundError:
            lines["weights"] = "not in the cache (`qualiclip download` fetches it)"
        except (CheckpointError, ValueError) as err:
            lines["weights"] = f"unusable: {err}"
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    print("\npretrained weights (pinned commit and sha256; `qualiclip download NAME` fetches them):")
    names = list(REGISTRY)
    width = max(map(len, names))
    print(f"  {'name':<{width}}  {'cached':<6}  {'verified':<8}  description")
    for name in names:
        try:
            status = pretrained_status(name, args.cache_dir)
            cached, verified = ("yes" if status.path else "no"), ("yes" if status.verified else "no")
        except (CheckpointError, WeightsNotFoundError) as err:
            cached, verified = "broken", str(err)
        print(f"  {name:<{width}}  {cached:<6}  {verified:<8}  {REGISTRY[name].description}")
    print("  aliases: " + ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items()))
    return EXIT_OK


def _backend_versions() -> list[str]:
    import torch

    from qualiclip_metric.runtimes import REQUIREMENTS, is_installed, runtime_versions

    found = [f"torch {torch.__version__}"]
    for backend, (modules, extra) in REQUIREMENTS.items():
        if is_installed(backend):
            found.append(f"{backend} {runtime_versions(backend)[modules[0]]}")
        else:
            found.append(f"{backend} not installed ([{extra}] extra)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "score": run_score,
        "evaluate": run_evaluate,
        "download": run_download,
        "export": run_export,
        "info": run_info,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # while loading or scoring; `score` keeps what it has written (see run_score)
        print("qualiclip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
