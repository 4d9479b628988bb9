"""Remake the pictures of the documentation from committed data, so that none of them is a one-off.

Each picture reads what the repository holds (evaluation reports and training metrics in docs/results,
benchmark results in benchmarks/results) and writes one PNG into docs/images. The quality map is the
exception: it scores a Kodak photograph from ../shared/data/pristine with the weights given by
``--weights`` (its default window, 112 pixels every 56, is the CPU run's crop size; ``--patch 224 --stride
112`` suits the published weights). The report screenshot is made by ``benchmarks/bench_report.py``.

Usage (from the repository root, with the ``plot`` extra and, for the quality map, the ``train`` extra)::

    python docs/pictures.py --output docs/images                 # every picture (the map only with --weights)
    python docs/pictures.py scatter training --output docs/images
    python docs/pictures.py quality-map --weights runs/qualiclip-cpu/export/qualiclip-rn50
    python docs/pictures.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qualiclip_metric.plotting import _pyplot  # pyplot on the Agg backend, imported when a picture is made

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BENCHMARKS = ROOT / "benchmarks" / "results"
PRISTINE = ROOT.parent / "shared" / "data" / "pristine"

#: Resolution of every picture: about 900 pixels across at the figure sizes below.
DPI = 110
#: No "Software" chunk: the same data and matplotlib give the same bytes whatever the version string.
PNG_METADATA = {"Software": None}
FP32_COLOUR, REDUCED_COLOUR, REFERENCE_COLOUR = "tab:blue", "tab:orange", "tab:gray"

#: Pictures in docs/images that another script makes, with that script.
MADE_ELSEWHERE = {"report.png": "benchmarks/bench_report.py"}


@dataclass(frozen=True)
class Picture:
    """One picture: the file it writes, what it is made from, and the function that makes it."""

    filename: str
    sources: tuple[str, ...]
    make: Callable[[Path, argparse.Namespace], str]
    #: Made only when named or given ``--weights``: it runs a model instead of reading results.
    needs_weights: bool = False


def _save(figure: Any, path: Path) -> None:
    plt = _pyplot()
    figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(figure)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _machine_label(machine: dict[str, Any]) -> str:
    """The CPU as the benchmark recorded it: model name, threads, speed-relevant flags, torch version."""
    flags = " ".join(machine.get("cpu_features", []))
    torch_version = str(machine.get("torch", "")).split("+")[0]
    return f"{machine['processor']}, {machine['threads']} threads ({flags}), torch {torch_version}"


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- evaluation -------------------------------------------------------------------------------------------


def make_scatter(path: Path, args: argparse.Namespace) -> str:
    """QualiCLIP+ of the CPU run on CLIVE's held-out test part (split 0), through the project's own plot.

    The report holds every image's score in dataset order, and split 0 of the evaluation protocol is the
    run's test part (docs/training.md), so the 125 points are images the prompts never saw. The SRCC of
    those points is checked against the report's split 0 before anything is drawn.
    """
    import numpy as np

    from qualiclip_metric.datasets import IQADataset
    from qualiclip_metric.evaluation import Protocol, correlations, dataset_splits
    from qualiclip_metric.plotting import scatter_with_logistic

    source = RESULTS / "qualiclip_plus_cpu_export_clive.json"
    report = _read_json(source)
    rows = report["scores"]
    dataset = IQADataset("CLIVE", [Path(row["path"]) for row in rows], np.array([row["mos"] for row in rows]))
    recorded = report["splits"]
    protocol = Protocol(splits=recorded["splits"], test_fraction=recorded["test_fraction"], seed=recorded["seed"])
    test = dataset_splits(dataset, protocol)[0].test
    predicted = np.array([rows[i]["score"] for i in test])
    target = dataset.scores[test]
    measured = correlations(predicted, target)
    expected = report["splits"]["per_split"][0]
    if abs(measured["srcc"] - expected["srcc"]) > 1e-9:
        raise RuntimeError(f"{source}: split 0 gives SRCC {measured['srcc']:.6f}, the report {expected['srcc']:.6f}")
    scatter_with_logistic(
        predicted,
        target,
        path,
        title=f"QualiCLIP+ CPU run, CLIVE test part ({test.size} images)\n"
        f"SRCC {measured['srcc']:.3f}, PLCC {measured['plcc']:.3f}, after the fit {measured['plcc_logistic']:.3f}",
    )
    return f"{test.size} held-out CLIVE images of {_relative(source)}"


# --- training ---------------------------------------------------------------------------------------------


def make_training(path: Path, args: argparse.Namespace) -> str:
    """The QualiCLIP CPU run: its three losses, and the two validation checks against the step."""
    plt = _pyplot()
    metrics = _read_jsonl(RESULTS / "qualiclip_cpu_metrics.jsonl")
    start = _read_json(RESULTS / "qualiclip_cpu_init_validation.json")
    train = [row for row in metrics if row["split"] == "train"]
    validation = [{"step": 0, **start}] + [row for row in metrics if row["split"] == "val"]
    figure, (losses, checks) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    steps = [row["step"] for row in train]
    for key, label in (("loss", "loss (sum)"), ("pos", "L_pos"), ("neg", "L_neg"), ("cons", "L_cons")):
        losses.plot(steps, [row[key] for row in train], marker=".", label=label)
    losses.set_xlabel("step (4 images, 40 crops each)")
    losses.set_ylabel("training loss (mean of 10 steps)")
    losses.set_ylim(bottom=0)
    losses.legend(loc="upper right", fontsize="small")
    losses.set_title("Losses")
    val_steps = [row["step"] for row in validation]
    checks.plot(val_steps, [row["synthetic_srcc"] for row in validation], marker="o", label="synthetic ranking")
    checks.plot(val_steps, [row["iqa_srcc"] for row in validation], marker="s", label="CLIVE (150 images, 256 px)")
    checks.axhline(0, color=REFERENCE_COLOUR, linewidth=0.8)
    checks.set_xlabel("step")
    checks.set_ylabel("SRCC")
    checks.set_ylim(-0.3, 1.0)
    checks.legend(loc="center right", fontsize="small")
    checks.set_title("Validation: 8 held-out images x 22 distortions, and CLIVE", fontsize="medium")
    figure.suptitle("QualiCLIP from random weights, 250 steps on 84 pristine images (CPU)", fontsize="medium")
    figure.tight_layout()
    _save(figure, path)
    return "docs/results/qualiclip_cpu_metrics.jsonl and qualiclip_cpu_init_validation.json (step 0)"


def make_training_plus(path: Path, args: argparse.Namespace) -> str:
    """The QualiCLIP+ CPU run: per-step losses with their running mean, and the held-out test part."""
    import numpy as np

    plt = _pyplot()
    metrics = _read_jsonl(RESULTS / "qualiclip_plus_cpu_metrics.jsonl")
    train = [row for row in metrics if row["split"] == "train"]
    validation = [row for row in metrics if row["split"] == "val"]
    figure, (losses, checks) = plt.subplots(1, 2, figsize=(9.5, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    steps = np.array([row["step"] for row in train])
    window = 10
    for key, label in (("loss", "loss"), ("plcc", "PLCC loss (1 - r) / 2"), ("mse", "MSE")):
        values = np.array([row[key] for row in train])
        line = losses.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        losses.plot(steps[window - 1 :], smooth, color=line.get_color(), label=f"{label}, mean of {window} steps")
    losses.set_xlabel("step (16 CLIVE images)")
    losses.set_ylabel("training loss")
    losses.set_ylim(bottom=0)
    losses.legend(loc="upper right", fontsize="small")
    losses.set_title("Losses")
    names = (("test_srcc", "SRCC"), ("test_plcc", "PLCC"), ("test_plcc_logistic", "PLCC after\nthe fit"))
    width = 0.38
    for offset, row, colour in (
        (-width / 2, validation[0], REFERENCE_COLOUR),
        (width / 2, validation[-1], FP32_COLOUR),
    ):
        values = [row[key] for key, _ in names]
        positions = [i + offset for i in range(len(names))]
        checks.bar(
            positions, values, width, color=colour, edgecolor="black", linewidth=0.5, label=f"step {row['step']}"
        )
        for position, value in zip(positions, values, strict=True):
            checks.text(position, value + 0.01, f"{value:.2f}", ha="center", fontsize="small")
    checks.set_xticks(range(len(names)), [label for _, label in names])
    checks.set_ylim(0, 0.6)
    checks.legend(loc="upper left", fontsize="small")
    checks.set_title("Held-out test part (125 images)", fontsize="medium")
    figure.suptitle("QualiCLIP+ prompts learned on CLIVE over a random network, 186 steps (CPU)", fontsize="medium")
    figure.tight_layout()
    _save(figure, path)
    return "docs/results/qualiclip_plus_cpu_metrics.jsonl"


# --- benchmarks -------------------------------------------------------------------------------------------


def _bars(
    axis: Any, labels: list[str], values: list[float], colours: list[str], valid: list[bool], notes: list[str]
) -> None:
    """Horizontal bars, top to bottom in the given order; rows outside their tolerance are hatched."""
    positions = list(range(len(labels)))[::-1]
    bars = axis.barh(positions, values, color=colours, edgecolor="black", linewidth=0.5)
    for bar, ok in zip(bars, valid, strict=True):
        if not ok:
            bar.set_hatch("///")
            bar.set_alpha(0.6)
    axis.set_yticks(positions, labels)
    right = max(values) * 1.35
    axis.set_xlim(0, right)
    for position, value, note in zip(positions, values, notes, strict=True):
        axis.text(value + right * 0.01, position, note, va="center", fontsize="small")


def make_inference(path: Path, args: argparse.Namespace) -> str:
    """Images per second of every mode, backend and precision at two sizes (batches of one)."""
    plt = _pyplot()
    source = BENCHMARKS / "inference_cpu_amd-epyc.json"
    result = _read_json(source)
    sizes = list(dict.fromkeys(row["size"] for row in result["rows"]))
    figure, axes = plt.subplots(1, len(sizes), figsize=(10, 4.2), sharey=True)
    for axis, size in zip(axes, sizes, strict=True):
        rows = [row for row in result["rows"] if row["size"] == size and row["batch_size"] == 1]
        _bars(
            axis,
            [f"{row['implementation']} {row['precision']}" for row in rows],
            [row["images_per_s"] for row in rows],
            [FP32_COLOUR if row["precision"] == "fp32" else REDUCED_COLOUR for row in rows],
            [row["valid"] for row in rows],
            [f"{row['images_per_s']:.2f} ({row['vs_official_loop']:.2f}x)" for row in rows],
        )
        axis.set_title(f"{size.replace('x', ' x ')}, batch 1", fontsize="medium")
        axis.set_xlabel("images/s (vs the official loop)")
    figure.suptitle(
        f"Inference: {_machine_label(result['machine'])}\n"
        "hatched: scores beyond the 2e-3 tolerance of the official loop (random weights)",
        fontsize="medium",
    )
    figure.tight_layout()
    _save(figure, path)
    return _relative(source)


#: Implementation names short enough to sit under a group of bars.
SHORT_NAMES = {"official loop": "official", "pyiqa built-in": "pyiqa"}


def make_inference_batches(path: Path, args: argparse.Namespace) -> str:
    """Images per second against the batch size, three image sizes, trained weights (the earlier machine)."""
    import numpy as np

    plt = _pyplot()
    source = BENCHMARKS / "inference_cpu.json"
    result = _read_json(source)
    sizes = list(dict.fromkeys(row["size"] for row in result["rows"]))
    batches = sorted({row["batch_size"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(sizes), figsize=(12, 4.0))
    shades = plt.get_cmap("Blues")(np.linspace(0.45, 0.9, len(batches)))
    for axis, size in zip(axes, sizes, strict=True):
        rows = [row for row in result["rows"] if row["size"] == size]
        configurations = list(dict.fromkeys((row["implementation"], row["precision"]) for row in rows))
        width = 0.8 / len(batches)
        labelled: set[int] = set()
        for b, batch in enumerate(batches):
            for c, configuration in enumerate(configurations):
                match = [
                    r
                    for r in rows
                    if (r["implementation"], r["precision"]) == configuration and r["batch_size"] == batch
                ]
                if not match:
                    continue
                row = match[0]
                first = batch not in labelled
                labelled.add(batch)
                bar = axis.bar(
                    c + (b - (len(batches) - 1) / 2) * width,
                    row["images_per_s"],
                    width,
                    color=shades[b],
                    edgecolor="black",
                    linewidth=0.5,
                    label=f"batch {batch}" if first else None,
                )[0]
                if not row["valid"]:
                    bar.set_hatch("///")
        names = [SHORT_NAMES.get(implementation, implementation) for implementation, _ in configurations]
        axis.set_xticks(
            range(len(configurations)),
            [f"{n}\n{p}" for n, (_, p) in zip(names, configurations, strict=True)],
            fontsize="x-small",
        )
        axis.set_title(size.replace("x", " x "), fontsize="medium")
        axis.set_ylabel("images/s")
    axes[0].legend(fontsize="small")
    figure.suptitle(
        f"Inference by batch size: {_machine_label(result['machine'])}\n"
        "trained weights of the CPU run; hatched: scores beyond the 2e-3 tolerance",
        fontsize="medium",
    )
    figure.tight_layout()
    _save(figure, path)
    return _relative(source)


def make_fast_mode(path: Path, args: argparse.Namespace) -> str:
    """All of CLIVE at its own resolution: speed of each implementation, and its agreement with fp32."""
    plt = _pyplot()
    source = BENCHMARKS / "fast_mode_cpu_amd-epyc.json"
    result = _read_json(source)
    rows = result["rows"]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    _bars(
        axis,
        [row["implementation"] for row in rows],
        [row["images_per_s"] for row in rows],
        [
            FP32_COLOUR if "fp32" in row["implementation"] or row["vs_official_loop"] == 1.0 else REDUCED_COLOUR
            for row in rows
        ],
        [result["within_targets"][row["implementation"]] for row in rows],
        [
            f"{row['images_per_s']:.2f} ({row['vs_official_loop']:.2f}x), SRCC vs fp32 {row['srcc_vs_fp32']:.5f}"
            for row in rows
        ],
    )
    axis.set_xlabel("images/s over the 627 CLIVE images (vs the official loop)")
    targets = result["targets"]
    figure.suptitle(
        f"Fast mode on CLIVE: {_machine_label(result['machine'])}\nhatched: beyond the targets "
        f"(max |diff| {targets['max_abs_diff_vs_fp32']:g}, SRCC {targets['min_srcc_vs_fp32']:g}; random weights)",
        fontsize="medium",
    )
    figure.tight_layout()
    _save(figure, path)
    return _relative(source)


def _cold_start_entries(result: dict[str, Any]) -> list[tuple[str, float, list[float], str]]:
    """(label, median seconds, every repeat, colour) of one cold-start run, pyiqa first, torch's import last."""
    entries = [("pyiqa create_metric + score", result["pyiqa_seconds"], result["all_pyiqa_seconds"], REFERENCE_COLOUR)]
    for name, record in result.get("by_backend", {"torch": None}).items():
        if record is None:
            entries.append(("qualiclip-metric", result["ours_seconds"], result["all_ours_seconds"], FP32_COLOUR))
            continue
        if name != "torch":
            entries.append(
                (
                    f"{name}: first process (converts)",
                    record["first_process_seconds"],
                    record["all_first"],
                    "tab:purple",
                )
            )
        label = "qualiclip-metric" if name == "torch" else f"{name}: converted model cached"
        entries.append((label, record["later_process_seconds"], record["all_later"], FP32_COLOUR))
    entries.append(("a process that only imports torch", result["torch_import_seconds"], [], "lightgray"))
    return entries


def make_cold_start(path: Path, args: argparse.Namespace) -> str:
    """Seconds from launching Python to the first score on both machines: medians as bars, repeats as dots."""
    plt = _pyplot()
    sources = [BENCHMARKS / "cold_start_cpu.json", BENCHMARKS / "cold_start_cpu_amd-epyc.json"]
    results = [_read_json(source) for source in sources]
    heights = [len(_cold_start_entries(result)) for result in results]
    figure, axes = plt.subplots(
        len(results), 1, figsize=(10, 1.2 + 0.42 * sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    longest = max(max(max(entry[2], default=entry[1]) for entry in _cold_start_entries(result)) for result in results)
    for axis, result in zip(axes, results, strict=True):
        entries = _cold_start_entries(result)
        positions = list(range(len(entries)))[::-1]
        axis.barh(
            positions,
            [entry[1] for entry in entries],
            color=[entry[3] for entry in entries],
            edgecolor="black",
            linewidth=0.5,
        )
        for position, (_, median, repeats, _) in zip(positions, entries, strict=True):
            axis.scatter(repeats, [position] * len(repeats), color="black", s=8, zorder=3)
            axis.text(
                max(repeats, default=median) + longest * 0.015,
                position,
                f"{median:.2f} s",
                va="center",
                fontsize="small",
            )
        axis.set_yticks(positions, [entry[0] for entry in entries])
        axis.set_xlim(0, longest * 1.15)
        axis.set_title(f"{_machine_label(result['machine'])}, {result['repeats']} repeats", fontsize="small")
    axes[-1].set_xlabel("seconds from launch to the first score (bars: median; dots: each repeat)")
    figure.suptitle("Cold start, one CLIVE image", fontsize="medium")
    figure.tight_layout()
    _save(figure, path)
    return " and ".join(_relative(source) for source in sources)


# --- quality map ------------------------------------------------------------------------------------------

#: Kodak 21 (released by Kodak for unrestricted use), one of the 8 images the CPU run held out of training.
MAP_PHOTO = "kodak/21.png"
#: The degraded box (top, left, height, width) and what degrades it: the CPU run ranks white noise best.
MAP_BOX = (40, 64, 240, 320)
MAP_DISTORTION = ("whitenoise", 4)


def _weights_label(weights: str) -> str:
    """The weights as a reader can check them: the source, and the sha256 its config records, if any."""
    config = Path(weights) / "config.json"
    if config.is_file():
        digests = list(json.loads(config.read_text()).get("files", {}).values())
        if digests:
            return f"{weights} (model sha256 {digests[0][:12]})"
    return weights


def make_quality_map(path: Path, args: argparse.Namespace) -> str:
    """A held-out Kodak photograph, pristine and with white noise in a box, and the quality map of each.

    Both maps come from the library (``QualiCLIP.quality_map`` and ``plotting.render_quality_map``) on
    one colour scale, so the box's colour can be read against the same region of the pristine photo.
    """
    import io

    import torch
    from PIL import Image

    from qualiclip_metric import QualiCLIP
    from qualiclip_metric.inputs import load_image
    from qualiclip_metric.plotting import render_quality_map
    from qualiclip_metric.quality_map import upsample_quality_map
    from training.degradations import degrade

    if args.weights is None:
        raise ValueError(
            "the quality map needs --weights: the CPU run's export (docs/training.md) or the official weights"
        )
    photo = PRISTINE / MAP_PHOTO
    pristine = load_image(photo)
    top, left, height, width = MAP_BOX
    name, level = MAP_DISTORTION
    degraded = pristine.clone()
    box = pristine[None, :, top : top + height, left : left + width]
    degraded[:, top : top + height, left : left + width] = degrade(box, name, level, torch.Generator().manual_seed(0))[
        0
    ]
    images = torch.stack([pristine, degraded])
    model = QualiCLIP.from_pretrained(args.weights)
    with torch.no_grad():
        scores = model(images)
        cells = model.quality_map(images, patch=args.patch, stride=args.stride)
    limits = (float(cells.min()), float(cells.max()))
    inside = torch.zeros(pristine.shape[-2:], dtype=torch.bool)
    inside[top : top + height, left : left + width] = True
    per_pixel = upsample_quality_map(cells, *pristine.shape[-2:], patch=args.patch, stride=args.stride)
    means = [(float(m[inside].mean()), float(m[~inside].mean())) for m in per_pixel]
    titles = (
        f"Kodak {photo.stem}, pristine: box {means[0][0]:.3f}, elsewhere {means[0][1]:.3f}",
        f"{name} level {level} in the box: box {means[1][0]:.3f}, elsewhere {means[1][1]:.3f}",
    )
    panels = [
        Image.open(
            io.BytesIO(
                render_quality_map(
                    images[k],
                    cells[k],
                    patch=args.patch,
                    stride=args.stride,
                    score=float(scores[k]),
                    title=titles[k],
                    limits=limits,
                )
            )
        ).convert("RGB")
        for k in range(2)
    ]
    joined = Image.new("RGB", (sum(panel.width for panel in panels), max(panel.height for panel in panels)), "white")
    offset = 0
    for panel in panels:
        joined.paste(panel, (offset, 0))
        offset += panel.width
    # A photograph in a PNG is large; a 256-colour palette keeps the picture near 150 KB and the map legible.
    joined.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return (
        f"{photo} with {name} level {level} in the box rows {top}-{top + height}, columns {left}-{left + width}; "
        f"weights {_weights_label(args.weights)}; box mean {means[1][0]:.4f} (pristine {means[0][0]:.4f}), "
        f"elsewhere {means[1][1]:.4f} (pristine {means[0][1]:.4f})"
    )


PICTURES: dict[str, Picture] = {
    "scatter": Picture("evaluation_scatter.png", ("docs/results/qualiclip_plus_cpu_export_clive.json",), make_scatter),
    "training": Picture(
        "training_qualiclip_cpu.png",
        ("docs/results/qualiclip_cpu_metrics.jsonl", "docs/results/qualiclip_cpu_init_validation.json"),
        make_training,
    ),
    "training-plus": Picture(
        "training_qualiclip_plus_cpu.png", ("docs/results/qualiclip_plus_cpu_metrics.jsonl",), make_training_plus
    ),
    "inference": Picture(
        "benchmark_inference.png", ("benchmarks/results/inference_cpu_amd-epyc.json",), make_inference
    ),
    "inference-batches": Picture(
        "benchmark_inference_batches.png", ("benchmarks/results/inference_cpu.json",), make_inference_batches
    ),
    "fast-mode": Picture(
        "benchmark_fast_mode.png", ("benchmarks/results/fast_mode_cpu_amd-epyc.json",), make_fast_mode
    ),
    "cold-start": Picture(
        "benchmark_cold_start.png",
        ("benchmarks/results/cold_start_cpu.json", "benchmarks/results/cold_start_cpu_amd-epyc.json"),
        make_cold_start,
    ),
    "quality-map": Picture("quality_map.png", ("../shared/data/pristine/" + MAP_PHOTO,), make_quality_map, True),
}


def main(argv: list[str] | None = None) -> int:
    """Make the named pictures (all by default); exit code 1 if any could not be made."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"pictures to make: {', '.join(PICTURES)} (default: all)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images", help="folder of the PNGs")
    parser.add_argument(
        "--weights", default=None, help="QualiCLIP weights for the quality map (any from_pretrained source)"
    )
    parser.add_argument("--patch", type=int, default=112, help="quality map window (default 112: the CPU run's crops)")
    parser.add_argument("--stride", type=int, default=56, help="quality map stride (default 56)")
    parser.add_argument("--list", action="store_true", help="list the pictures and what each is made from")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in PICTURES]
    if unknown:
        parser.error(f"unknown picture {', '.join(unknown)}; known: {', '.join(PICTURES)}")
    if args.list:
        for name, picture in PICTURES.items():
            print(f"{name:18} {picture.filename:34} {', '.join(picture.sources)}")
        for filename, script in MADE_ELSEWHERE.items():
            print(f"{'(elsewhere)':18} {filename:34} made by {script}")
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.names or list(PICTURES):
        picture = PICTURES[name]
        target = args.output / picture.filename
        if picture.needs_weights and args.weights is None and not args.names:
            print(f"{name}: skipped (give --weights to make it)", file=sys.stderr)
            continue
        try:
            made_from = picture.make(target, args)
        except (OSError, RuntimeError, ValueError) as err:
            print(f"{name}: not made: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{os.fspath(target)}: {target.stat().st_size / 1024:.0f} KB from {made_from}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
