"""The HTML report at scale: how large the page of every CLIVE image is, and how fast Chromium opens it.

Builds ``qualiclip report`` from a score file (``qualiclip score --per-pair``) and CLIVE's MOS, then opens
it in a headless Chromium (the tests' DevTools client, ``tests/browser.py``) several times and reads the
page's own timings: the navigation entry, the first contentful paint and the mark the page sets once its
table is drawn (``qualiclip-report-rendered``). Also times a sort by score, a filter, and drawing every row
at once (``?size=all``). ``--screenshot`` saves the top of the page as the documentation's picture.

    python benchmarks/bench_report.py                          # scores CLIVE with random weights first (minutes)
    python benchmarks/bench_report.py --scores scores.csv      # a score file of `qualiclip score --per-pair`
    python benchmarks/bench_report.py --scores scores.csv --screenshot docs/images/report.png
    python benchmarks/bench_report.py --scores scores.csv --copies 16    # 10,032 rows, thumbnails beside the page

The screenshot shows CLIVE thumbnails: CLIVE's licence (its README.txt) asks that its copyright notice
travel with copies, which docs/report.md references.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CLIVE, ROOT, machine, random_official_checkpoint, write_result

sys.path.insert(0, str(ROOT.parent / "tests"))
from browser import Chromium, find_chromium  # noqa: E402

from qualiclip_metric.machine import cpu_model  # noqa: E402

MOS = CLIVE.parent / "mos.csv"
#: The picture docs/report.md shows (docs/pictures.py lists it as made here).
SCREENSHOT_NAME = "report.png"
VIEWPORT = (1280, 1180)


def cpu_slug() -> str:
    """``amd-epyc``, ``intel-xeon``...: the vendor and family of this CPU, for the results file name."""
    words = re.sub(r"\((r|tm)\)|processor|cpu|@.*", " ", cpu_model().lower()).split()
    return "-".join(words[:2]) or "cpu"


def qualiclip(*args: object) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("qualiclip")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True)


def score_clive(folder: Path, images: Path) -> tuple[Path, float]:
    """A score file of every image with a random-weight checkpoint (the page does not depend on the values)."""
    weights = random_official_checkpoint(folder)
    scores = folder / "scores.csv"
    start = time.perf_counter()
    result = qualiclip("score", images, "--weights", weights, "--per-pair", "--output", scores, "--quiet")
    if result.returncode not in (0, 1):
        raise SystemExit(f"qualiclip score failed:\n{result.stderr}")
    return scores, time.perf_counter() - start


PAGE_TIMINGS = """(() => {
    const navigation = performance.getEntriesByType('navigation')[0];
    const paint = performance.getEntriesByName('first-contentful-paint')[0];
    const rendered = performance.getEntriesByName('qualiclip-report-rendered')[0];
    return {
        response_end_ms: navigation.responseEnd,
        dom_content_loaded_ms: navigation.domContentLoadedEventEnd,
        load_ms: navigation.loadEventEnd,
        first_contentful_paint_ms: paint ? paint.startTime : null,
        rendered_ms: rendered ? rendered.startTime : null,
        rows_in_dom: document.querySelectorAll('#rows tr').length,
    };
})()"""

SORT_AND_FILTER = """(() => {
    const start = performance.now();
    document.querySelector('button[data-sort="score"]').click();
    const sorted = performance.now();
    const show = document.getElementById('show');
    show.value = 'failed';
    show.dispatchEvent(new Event('change'));
    show.value = 'all';
    show.dispatchEvent(new Event('change'));
    return {sort_ms: sorted - start, filter_twice_ms: performance.now() - sorted};
})()"""


def open_page(page, url: str) -> dict[str, float]:
    start = time.perf_counter()
    page.open(url, viewport=VIEWPORT)
    wall = time.perf_counter() - start
    # Wait for two animation frames: the first paint entry is recorded after the load event on slow machines.
    page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    timings = page.evaluate(PAGE_TIMINGS)
    return {"navigate_to_load_event_s": wall, **timings}


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each timing over the runs that have it (a paint entry can be missing)."""
    values = {key: [run[key] for run in runs if run.get(key) is not None] for key in runs[0]}
    return {key: statistics.median(found) for key, found in values.items() if found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, help="score file with per-pair columns (default: score CLIVE here)")
    parser.add_argument("--images", type=Path, default=CLIVE, help=f"images (default {CLIVE})")
    parser.add_argument("--mos", type=Path, default=MOS, help=f"subjective scores (default {MOS})")
    parser.add_argument("--name", default="CLIVE", help="the dataset's name (default CLIVE)")
    parser.add_argument("--repeats", type=int, default=5, help="page loads to time (default 5)")
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="list every image this many times (16: a 10,032-row page; thumbnails go beside it, each made once)",
    )
    parser.add_argument(
        "--title", default="scores of a random-weight checkpoint", help="what the scores are, for the page's title"
    )
    parser.add_argument(
        "--screenshot", type=Path, help=f"save the top of the page here (docs/images/{SCREENSHOT_NAME})"
    )
    parser.add_argument("--output", type=Path, help="JSON results (default: results/report_<cpu>.json)")
    args = parser.parse_args()
    if find_chromium() is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    suffix = f"_x{args.copies}" if args.copies > 1 else ""
    output = args.output or ROOT / "results" / f"report_{cpu_slug()}{suffix}.json"
    with tempfile.TemporaryDirectory(prefix="bench-report-") as temporary:
        folder = Path(temporary)
        scoring_s = None
        scores = args.scores
        if scores is None:
            print(f"scoring {args.images} with random weights (minutes) ...", flush=True)
            scores, scoring_s = score_clive(folder, args.images)
        if args.copies > 1:
            header, *body = scores.read_text(encoding="utf-8").splitlines(keepends=True)
            scores = folder / f"{scores.stem}_x{args.copies}.csv"
            scores.write_text(header + "".join(body * args.copies), encoding="utf-8")
        report = folder / "report.html"
        start = time.perf_counter()
        title = f"{args.name}: {args.title}"
        arguments = ["--scores", args.mos, "--images", args.images, "--name", args.name, "--title", title]
        built = qualiclip("report", scores, *arguments, "--output", report, "-q")
        build_s = time.perf_counter() - start
        if built.returncode not in (0, 1) or not report.is_file():
            raise SystemExit(f"qualiclip report failed:\n{built.stderr}")
        html = report.read_text(encoding="utf-8")
        data = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.S).group(1))
        thumbnails = sum(len(row["t"]) for row in data["rows"] if row["t"] and row["t"].startswith("data:"))
        beside = report.with_name(report.stem + "_files")
        files_bytes = sum(path.stat().st_size for path in beside.iterdir()) if beside.is_dir() else 0
        with Chromium() as browser:
            version = subprocess.run([browser.executable, "--version"], capture_output=True, text=True).stdout.strip()
            page = browser.page()
            url = report.as_uri()
            cold = open_page(page, url)
            runs = [open_page(page, url) for _ in range(args.repeats)]
            interaction = [page.evaluate(SORT_AND_FILTER) for _ in range(args.repeats)]
            everything = [open_page(page, url + "?size=all") for _ in range(max(1, args.repeats // 2))]
            errors = list(page.errors)
            if args.screenshot is not None:
                page.open(url, viewport=VIEWPORT)
                page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
                save_screenshot(page, args.screenshot)
            page.close()
    result = {
        "benchmark": "report",
        "machine": machine(torch.device("cpu")),
        "chromium": version,
        "viewport": list(VIEWPORT),
        "images": len(data["rows"]),
        "scores": scores.name if args.scores is not None else "random-weight checkpoint, scored here",
        "title": title,
        "html_bytes": len(html.encode("utf-8")),
        "thumbnail_bytes_base64": thumbnails,
        "files_beside_bytes": files_bytes,
        "copies": args.copies,
        "bytes_per_image": len(html.encode("utf-8")) / max(1, len(data["rows"])),
        "scoring_s": scoring_s,
        "build_s": build_s,
        "first_open": cold,
        "open_median": summarise(runs),
        "open_runs": runs,
        "interaction_median": summarise(interaction),
        "all_rows_median": summarise(everything),
        "console_errors": errors,
    }
    opened, interaction, everything = result["open_median"], result["interaction_median"], result["all_rows_median"]
    print(
        f"{result['images']} images: page {result['html_bytes'] / 2**20:.2f} MiB "
        f"({result['bytes_per_image'] / 1024:.1f} KiB per image), built in {build_s:.1f} s; "
        f"opened in {opened['navigate_to_load_event_s']:.2f} s (table drawn at {opened['rendered_ms']:.0f} ms, "
        f"first paint {opened.get('first_contentful_paint_ms', 0):.0f} ms); sort {interaction['sort_ms']:.1f} ms; "
        f"every row drawn at {everything['rendered_ms']:.0f} ms"
    )
    return write_result(output, result, valid=not errors)


def save_screenshot(page, path: Path) -> None:
    """The viewport as a 256-colour PNG (the docs keep pictures under 400 kB)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    raw = page.screenshot(path.with_suffix(".raw.png"))
    try:
        with Image.open(raw) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                path, optimize=True
            )
    finally:
        os.remove(raw)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    sys.exit(main())
