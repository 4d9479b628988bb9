"""``qualiclip report``: the HTML page built from a folder or a score file, opened in a real headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import Chromium, find_chromium
from images import rgb_array
from PIL import Image
from scipy import stats

from qualiclip_metric import load_image
from qualiclip_metric.batch import FileScore
from qualiclip_metric.report import script_json
from qualiclip_metric.score_writer import read_scores, write_scores

PAIRS = ["Good photo./Bad photo.", "Sharp image./Blurry image."]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_the_score_reader_reads_back_what_the_writer_wrote(tmp_path, suffix):
    results = [
        FileScore(0, "=cmd.png", 0.25, 64, 48, {PAIRS[0]: 0.5, PAIRS[1]: 0.0}),
        FileScore(1, "-dash é.png", 0.75, 10, 20, {PAIRS[0]: 1.0, PAIRS[1]: 0.5}),
        FileScore(2, "broken.jpg", error="broken.jpg: truncated file"),
    ]
    path = tmp_path / f"scores{suffix}"
    write_scores(results, path, pair_names=PAIRS)
    table = read_scores(path)
    assert table.pair_names == PAIRS
    assert table.rows == [
        {"path": "=cmd.png", "score": 0.25, "width": 64, "height": 48, PAIRS[0]: 0.5, PAIRS[1]: 0.0, "error": None},
        {"path": "-dash é.png", "score": 0.75, "width": 10, "height": 20, PAIRS[0]: 1.0, PAIRS[1]: 0.5, "error": None},
        {
            "path": "broken.jpg",
            "score": None,
            "width": None,
            "height": None,
            PAIRS[0]: None,
            PAIRS[1]: None,
            "error": "broken.jpg: truncated file",
        },
    ]


def test_the_score_reader_refuses_files_that_are_no_score_files(tmp_path):
    (tmp_path / "other.csv").write_text("file,value\na,1\n")
    (tmp_path / "bad.jsonl").write_text('{"path": "a", "score": 1}\nnot json\n')
    (tmp_path / "nan.csv").write_text("path,score\na.png,abc\n")
    with pytest.raises(ValueError, match="needs the columns path and score"):
        read_scores(tmp_path / "other.csv")
    with pytest.raises(ValueError, match="not a readable score file"):
        read_scores(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="ends in"):
        read_scores(tmp_path / "scores.txt")
    assert math.isnan(read_scores(tmp_path / "nan.csv").rows[0]["score"])


def test_evaluate_reads_predictions_from_json_lines(tmp_path):
    """read_predictions goes through read_scores: a JSON lines file joins the dataset as a CSV does."""
    from qualiclip_metric.datasets import IQADataset
    from qualiclip_metric.evaluation import read_predictions

    dataset = IQADataset("set", [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"], np.array([1.0, 2, 3]))
    rows = [
        FileScore(0, "/elsewhere/b.png", 0.5, 8, 8),  # matched by file name
        FileScore(1, str(tmp_path / "a.png"), 0.25, 8, 8),
        FileScore(2, str(tmp_path / "c.png"), error="c.png: truncated file"),
    ]
    write_scores(rows, tmp_path / "scores.jsonl")
    predictions, errors = read_predictions(tmp_path / "scores.jsonl", dataset)
    assert predictions[:2].tolist() == [0.25, 0.5] and math.isnan(predictions[2])
    assert errors == {2: "c.png: truncated file"}


# -- the page ------------------------------------------------------------------------------------------------

TRICKY_FOLDER = "<"  # with the file below, the path holds "</script>", quotes, an ampersand and accents
TRICKY_FILE = 'script><b>&"it\'s" ünï.png'


def qualiclip(*args, cwd=None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("qualiclip")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def write_images(folder: Path) -> dict[str, Path]:
    """Six photographs of several sizes (one with 2 x 2 map windows), one in a folder named "<", and a corrupt JPEG."""
    folder.mkdir(parents=True)
    (folder / TRICKY_FOLDER).mkdir()
    sizes = {"a.png": (48, 64), "b.jpg": (96, 72), "c.png": (40, 40), "d.jpg": (64, 80), "e.png": (256, 320)}
    files = {}
    for seed, (name, (height, width)) in enumerate(sizes.items()):
        files[name] = folder / name
        Image.fromarray(rgb_array(height, width, seed=seed)).save(files[name])
    files[TRICKY_FILE] = folder / TRICKY_FOLDER / TRICKY_FILE
    Image.fromarray(rgb_array(56, 56, seed=9)).save(files[TRICKY_FILE], format="PNG")
    files["broken.jpg"] = folder / "broken.jpg"
    files["broken.jpg"].write_bytes(files["b.jpg"].read_bytes()[:500])
    return files


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's)")
    with Chromium() as chromium:
        page = chromium.page()
        yield page
        page.close()


def open_report(page, path: Path, query: str = "") -> None:
    page.open(path.resolve().as_uri() + query)
    assert page.evaluate("document.documentElement.dataset.rendered") == "true"
    assert page.errors == [], page.errors


def table(page) -> list[dict]:
    """The rows the table shows: full path (the link's title), score, size, error, pair bars, thumbnail width."""
    # Thumbnails load lazily, when scrolled to: load them all before reading their sizes.
    page.evaluate(
        "Promise.all([...document.querySelectorAll('#rows img')].map(image => {"
        " image.loading = 'eager'; return image.decode().catch(() => null); }))"
    )
    return page.evaluate(
        """[...document.querySelectorAll('#rows tr')].map(tr => ({
            path: tr.querySelector('td.name > *').title,
            score: tr.dataset.score === undefined ? null : Number(tr.dataset.score),
            text: tr.querySelector('td.score').textContent,
            size: tr.querySelector('td.size').textContent,
            error: tr.querySelector('td.error').textContent,
            bars: tr.querySelectorAll('.pairs span').length,
            thumb: tr.querySelector('.thumb img') ? tr.querySelector('.thumb img').naturalWidth : 0,
        }))"""
    )


@pytest.fixture(scope="module")
def folder_report(module_tmp_path, official_pth):
    files = write_images(module_tmp_path / "images")
    output = module_tmp_path / "out" / "report.html"
    output.parent.mkdir()
    arguments = ["-r", "--maps", "--weights", official_pth, "--output", output, "--workers", "0"]
    result = qualiclip("report", module_tmp_path / "images", *arguments)
    return files, output, result


def test_report_of_a_folder_in_chromium(folder_report, browser, model, tmp_path):
    files, output, result = folder_report
    assert result.returncode == 1, result.stderr  # the corrupt file failed, the rest finished
    assert "broken.jpg" in result.stderr and "6 scored, 1 failed" in result.stderr
    html = output.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # nothing is fetched: no CDN, no network
    assert html.count("</script>") == 2  # the data block and the script; the file name did not end either

    open_report(browser, output, "?size=all")
    shown = table(browser)
    assert sorted(row["path"] for row in shown) == sorted(str(path) for path in files.values())
    by_name = {Path(row["path"]).name: row for row in shown}
    assert "cannot decode image" in by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["score"] is None
    assert by_name["a.png"]["size"] == "64 × 48" and by_name["d.jpg"]["size"] == "80 × 64"
    # Thumbnails are at most 128 pixels on the longer side and never enlarged: e.png (320 x 256) is 128 wide.
    thumb_widths = {"a.png": 64, "b.jpg": 72, "c.png": 40, "d.jpg": 80, "e.png": 128, TRICKY_FILE: 56}
    for name in files.keys() - {"broken.jpg"}:
        row = by_name[name]
        assert 0 < row["score"] < 1 and row["error"] == "" and row["bars"] == 7, row
        assert row["thumb"] == thumb_widths[name], row
    with torch.no_grad():
        expected = model(load_image(files[TRICKY_FILE])[None]).item()
    assert by_name[TRICKY_FILE]["score"] == pytest.approx(expected, abs=1e-5)
    assert by_name[TRICKY_FILE]["text"].startswith(f"{expected:.4f}"[:5])
    failed = browser.evaluate("[...document.querySelectorAll('#failed li')].map(li => li.textContent)")
    assert len(failed) == 1 and "broken.jpg" in failed[0] and "cannot decode image" in failed[0]

    # A real click on the score header sorts the data array; a second one reverses it; failed rows stay last.
    browser.click('button[data-sort="score"]')
    ascending = [row["score"] for row in table(browser)]
    assert ascending[:-1] == sorted(ascending[:-1]) and ascending[-1] is None
    browser.click('button[data-sort="score"]')
    descending = [row["score"] for row in table(browser)]
    assert descending[:-1] == sorted(descending[:-1], reverse=True) and descending[-1] is None
    assert "sort=score" in browser.evaluate("location.hash") and "dir=desc" in browser.evaluate("location.hash")
    worst = browser.evaluate("[...document.querySelectorAll('#worst .tile')].map(t => t.title)")
    scored = [path for name, path in files.items() if name != "broken.jpg"]
    assert worst[0] == str(min(scored, key=lambda path: by_name[path.name]["score"]))
    assert browser.evaluate("document.getElementById('worst-title').textContent") == "Worst 6"

    # Filtering works on the data too: the query keeps the matching rows only.
    browser.evaluate(
        "(() => { const f = document.getElementById('filter'); f.value = 'ünï';"
        " f.dispatchEvent(new Event('input')); })()"
    )
    browser.evaluate("new Promise(done => setTimeout(done, 400))")
    assert [Path(row["path"]).name for row in table(browser)] == [TRICKY_FILE]
    assert browser.errors == []

    # The quality map of e.png (2 x 2 windows of 224 pixels): the library's cells, drawn over the thumbnail.
    with torch.no_grad():
        cells = model.quality_map(load_image(files["e.png"])[None])[0]
    assert cells.shape == (2, 2)
    browser.evaluate(
        "(() => { const f = document.getElementById('filter'); f.value = 'e.png';"
        " f.dispatchEvent(new Event('input')); })()"
    )
    browser.evaluate("new Promise(done => setTimeout(done, 400))")
    source = browser.evaluate("document.querySelector('#rows .thumb img.map').src")
    with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as drawn:
        assert drawn.size == (128, 102)  # the thumbnail's size: e.png is 320 x 256
        corners = np.asarray(drawn.convert("L"))[[0, -1], [0, -1]]
    # Pixels at the corners lie in one window each; viridis grows lighter with the value.
    assert (corners[0] < corners[1]) == bool(cells[0, 0] < cells[-1, -1]) and corners[0] != corners[1]
    ramp = browser.evaluate("getComputedStyle(document.querySelector('#map-legend .ramp')).backgroundImage")
    assert ramp.startswith("linear-gradient(90deg, rgb(68, 1, 84)") and ramp.endswith("rgb(253, 231, 37))")  # viridis
    opacity = "getComputedStyle(document.querySelector('#rows .thumb img.map')).opacity"
    assert browser.evaluate(opacity) == "0"
    browser.hover("#rows .thumb")
    browser.evaluate("new Promise(done => setTimeout(done, 400))")
    assert float(browser.evaluate(opacity)) > 0.5  # shown while the pointer is over the thumbnail
    assert browser.errors == []

    shot = browser.screenshot(tmp_path / "report.png")
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1280, 900)
        assert np.unique(np.asarray(image.convert("L"))).size > 20  # drawn, not blank


def test_the_data_block_survives_any_file_name():
    names = ["</script><script>alert(1)</script>", "<!-- x", "a\u2028b\u2029c", "é ü 中", "bad\udcff.png", "&amp;"]
    text = script_json({"rows": names, "score": float("nan")})
    assert not {"<", ">", "&"} & set(text) and text.isascii()
    assert json.loads(text) == {"rows": names, "score": None}


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_report_of_a_score_file_with_mos_and_thumbnail_files(tmp_path, browser):
    """No weights: scores from a score file, MOS from a CSV, thumbnails beside the page; a path gone is an error."""
    images = tmp_path / "images"
    images.mkdir()
    names = [f"{index}.png" for index in range(6)]
    for seed, name in enumerate(names):
        Image.fromarray(rgb_array(40 + 4 * seed, 48, seed=seed)).save(images / name)
    scores = [0.61, 0.32, 0.45, 0.70, 0.52, 0.28]
    mos = [60.0, 35.0, 40.0, 80.0, 41.0, 20.0]
    pairs = ["Good photo./Bad photo.", "Sharp image./Blurry image."]
    gone = str(tmp_path / "moved" / "</script>'.png")
    rows = [[images / n, s, 48, 40 + 4 * i, s, 1 - s, ""] for i, (n, s) in enumerate(zip(names, scores, strict=True))]
    rows += [[images / "7.png", "", "", "", "", "", "7.png: not a recognised image file"], [gone, 0.9, 8, 8, 1, 1, ""]]
    score_file = write_csv(tmp_path / "scores.csv", ["path", "score", "width", "height", *pairs, "error"], rows)
    mos_file = write_csv(tmp_path / "mos.csv", ["image", "mos"], [[n, m] for n, m in zip(names, mos, strict=True)])
    output = tmp_path / "report.html"
    result = qualiclip(
        "report",
        score_file,
        "--scores",
        mos_file,
        "--images",
        images,
        "--output",
        output,
        "--thumbnails",
        "files",
        "--weights",
        tmp_path / "no-weights.pth",
    )
    assert result.returncode == 1, result.stderr  # 7.png failed; no weights were needed
    assert "no thumbnail: " + gone + ": no such file" in result.stderr
    assert sorted(path.name for path in (tmp_path / "report_files").iterdir()) == [f"t{i:06d}.jpg" for i in range(6)]

    open_report(browser, output, "?sort=score&dir=desc")  # the page reads its view from the URL
    shown = table(browser)
    assert [row["score"] for row in shown] == [0.9, *sorted(scores, reverse=True), None]
    by_path = {row["path"]: row for row in shown}
    # The image gone since it was scored keeps its score and has no error; its preview is a placeholder.
    assert by_path[gone]["score"] == 0.9 and by_path[gone]["error"] == "" and by_path[gone]["thumb"] == 0
    placeholder = browser.evaluate(
        "[...document.querySelectorAll('#rows tr')].filter(tr => tr.dataset.score === '0.9')"
        ".map(tr => [tr.querySelector('.thumb').textContent, tr.querySelector('.thumb').title])[0]"
    )
    assert placeholder == ["no preview", gone + ": no such file"]
    assert by_path[str(images / "7.png")]["error"] == "7.png: not a recognised image file"
    assert all(by_path[str(images / name)]["thumb"] == 48 for name in names)  # read from report_files/
    shown_mos = browser.evaluate("[...document.querySelectorAll('#rows td.mos')].map(td => td.textContent)")
    assert shown_mos[1:7] == [f"{m:.2f}" for _, m in sorted(zip(scores, mos, strict=True), reverse=True)]
    metrics = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#metrics td')]"
        ".map(td => [td.dataset.metric, td.textContent]))"
    )
    assert metrics["srcc"] == f"{stats.spearmanr(scores, mos).statistic:.4f}"
    assert metrics["plcc"] == f"{stats.pearsonr(scores, mos).statistic:.4f}"
    assert browser.evaluate("document.querySelectorAll('#scatter circle.point').length") == 6
    assert browser.evaluate("document.querySelectorAll('#scatter polyline.fit').length") == 1
    # The histogram's bars count the scored images (the one gone since included), binned as numpy bins them.
    titles = browser.evaluate("[...document.querySelectorAll('#histogram rect.bar title')].map(t => t.textContent)")
    counts = [int(title.rsplit(": ", 1)[1].split()[0]) for title in titles]
    known = [*scores, 0.9]
    assert sum(counts) == len(known) == 7
    assert counts == np.histogram(known, bins=len(counts), range=(min(known), max(known)))[0].tolist()
    assert titles[0].startswith(f"{min(known):.4f} to ") and titles[-1].endswith(f" to {max(known):.4f}: 1 images")

    # The page is never replaced silently: refused (exit 2, before anything is read), then replaced with --force.
    before = output.read_bytes()
    refused = qualiclip("report", score_file, "--output", output)
    assert refused.returncode == 2 and "already exists" in refused.stderr and output.read_bytes() == before
    replaced = qualiclip("report", score_file, "--output", output, "--force", "--title", "Second")
    assert replaced.returncode == 1, replaced.stderr
    assert "<title>Second</title>" in output.read_text(encoding="utf-8")
    assert not (tmp_path / "report_files").exists()  # embedded this time: the old folder went with the old page


def test_report_refuses_bad_arguments_before_loading_weights(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array()).save(images / "a.png")
    (tmp_path / "empty").mkdir()
    scores = write_csv(tmp_path / "scores.csv", ["path", "score"], [[images / "a.png", 0.5]])
    missing = tmp_path / "missing.pth"  # loading it would end with exit 3
    cases = [
        (["report", images, "--output", tmp_path / "report.txt"], "must end in .html"),
        (["report", images, scores, "--output", tmp_path / "r.html"], "one score file"),
        (["report", images, "--scores", tmp_path / "nope.csv", "--output", tmp_path / "r.html"], "nope.csv"),
        (["report", tmp_path / "empty", "--output", tmp_path / "r.html"], "no image files"),
        (["report", images, "--output", tmp_path / "no" / "r.html"], "does not exist"),
    ]
    for arguments, message in cases:
        result = qualiclip(*arguments, "--weights", missing)
        assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "images", "scores.csv"]


def small_score_file(tmp_path: Path, count: int = 2) -> Path:
    """A score file of ``count`` small images (scores 0.2, 0.4, ...), written without any weights."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    rows = []
    for index in range(count):
        path = images / f"{index}.png"
        Image.fromarray(rgb_array(40, 48, seed=index)).save(path)
        rows.append([path, round(0.2 * (index + 1), 4), 48, 40, ""])
    return write_csv(tmp_path / "scores.csv", ["path", "score", "width", "height", "error"], rows)


def test_force_never_deletes_a_folder_the_report_did_not_write(tmp_path):
    score_file = small_score_file(tmp_path)
    output = tmp_path / "holiday.html"
    output.write_text("an older page")
    folder = tmp_path / "holiday_files"
    folder.mkdir()
    (folder / "t000000.jpg").write_bytes(b"old thumbnail")
    (folder / "precious.txt").write_text("my notes")
    for mode in ("embed", "files"):
        result = qualiclip("report", score_file, "--output", output, "--force", "--thumbnails", mode)
        assert result.returncode == 2, result.stderr
        assert "precious.txt" in result.stderr and "Traceback" not in result.stderr
        assert (folder / "precious.txt").read_text() == "my notes" and output.read_text() == "an older page"
    # A folder holding only what a report writes is replaced.
    (folder / "precious.txt").unlink()
    result = qualiclip("report", score_file, "--output", output, "--force", "--thumbnails", "files")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["t000000.jpg", "t000001.jpg"]


def test_a_csv_row_with_more_cells_than_the_header_is_refused_with_its_line(tmp_path):
    score_file = small_score_file(tmp_path)
    with open(score_file, "a", encoding="utf-8") as handle:
        handle.write("c.png,0.5,48,40,,surplus\n")  # line 4
    with pytest.raises(ValueError, match=r"scores\.csv: line 4 has 6 cells, but the header has 5"):
        read_scores(score_file)
    result = qualiclip("report", score_file, "--output", tmp_path / "report.html")
    assert result.returncode == 2 and "line 4 has 6 cells" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "report.html").exists()
    mos = write_csv(tmp_path / "mos.csv", ["image", "mos"], [["0.png", 1.0], ["1.png", 2.0]])
    result = qualiclip("evaluate", "--predictions", score_file, "--scores", mos, "--images", tmp_path / "images")
    assert result.returncode == 2 and "line 4 has 6 cells" in result.stderr, result.stderr


def page_data(path: Path) -> dict:
    """The JSON data block of a report page."""
    text = path.read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">'
    )
    return json.loads(text[start : text.index("</script>", start)])


def test_a_row_without_a_preview_keeps_its_score_and_relative_paths_are_read_from_the_score_file(tmp_path):
    """Relative paths found beside the score file; a panorama gets a thumbnail; a file gone keeps its score."""
    folder = tmp_path / "shoot"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(rgb_array(31, 400, seed=1)).save(folder / "images" / "wide.png")  # below the model's minimum
    Image.fromarray(rgb_array(40, 48, seed=2)).save(folder / "images" / "small.png")
    rows = [["images/wide.png", 0.25, 400, 31, ""], ["images/small.png", 0.75, 48, 40, ""], ["gone.png", 0.5, 8, 8, ""]]
    score_file = write_csv(folder / "scores.csv", ["path", "score", "width", "height", "error"], rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = qualiclip("report", score_file, "--output", "report.html", cwd=elsewhere)
    assert result.returncode == 0, result.stderr  # every row has a score; only a preview is missing
    assert "3 images, 3 scored, 0 failed" in result.stderr and "no thumbnail: gone.png: no such file" in result.stderr
    data = page_data(elsewhere / "report.html")
    by_name = {Path(row["p"]).name: row for row in data["rows"]}
    assert by_name["wide.png"]["p"] == str(folder / "images" / "wide.png")
    assert by_name["wide.png"]["ts"] == [128, 10] and by_name["small.png"]["ts"] == [48, 40]  # never enlarged
    with Image.open(io.BytesIO(base64.b64decode(by_name["wide.png"]["t"].split(",", 1)[1]))) as preview:
        assert preview.size == (128, 10)
    assert by_name["gone.png"]["s"] == 0.5 and by_name["gone.png"]["e"] is None and by_name["gone.png"]["t"] is None
    assert by_name["gone.png"]["te"] == "gone.png: no such file"
    html = (elsewhere / "report.html").read_text(encoding="utf-8")
    assert "3 scored" in html and "mean score 0.5000" in html  # the summary counts the row without a preview


def test_a_lower_max_pixels_refuses_the_image_for_scoring_thumbnails_and_maps_alike(tmp_path, official_pth):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb_array(40, 48, seed=1)).save(images / "small.png")  # 1,920 pixels
    Image.fromarray(rgb_array(32, 32, seed=2)).save(images / "tiny.png")  # 1,024 pixels
    limit = ["--max-pixels", 1500, "--weights", official_pth, "--workers", 0]
    scored = qualiclip("report", images, "--output", tmp_path / "scored.html", *limit)
    assert scored.returncode == 1 and "1 scored, 1 failed" in scored.stderr, scored.stderr
    assert "small.png" in scored.stderr and "1500" in scored.stderr.replace(",", "")
    score_file = write_csv(
        tmp_path / "scores.csv",
        ["path", "score", "width", "height", "error"],
        [[images / "small.png", 0.25, 48, 40, ""], [images / "tiny.png", 0.5, 32, 32, ""]],
    )
    read = qualiclip(
        "report", score_file, "--maps", "--patch", 32, "--stride", 16, "--output", tmp_path / "read.html", *limit
    )
    assert read.returncode == 1, read.stderr  # the map of small.png could not be computed
    refusal = [line for line in scored.stderr.splitlines() if "small.png" in line][0].split("small.png", 1)[1]
    assert "no thumbnail: " + str(images / "small.png") + refusal in read.stderr
    assert "no quality map: " + str(images / "small.png") + refusal in read.stderr
    by_name = {Path(row["p"]).name: row for row in page_data(tmp_path / "read.html")["rows"]}
    assert by_name["small.png"]["t"] is None and by_name["small.png"]["k"] is None
    assert by_name["tiny.png"]["t"] is not None and by_name["tiny.png"]["k"] is not None


def test_empty_score_files_are_refused_alike_and_a_non_text_error_is_read_as_text(tmp_path):
    (tmp_path / "empty.csv").write_text("path,score,width,height,error\n")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("empty.csv", "empty.json", "empty.jsonl"):
        assert read_scores(tmp_path / name).rows == []
        result = qualiclip("report", tmp_path / name, "--output", tmp_path / "report.html")
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr == f"qualiclip: {tmp_path / name}: the score file holds no images\n"
    assert not (tmp_path / "report.html").exists()
    (tmp_path / "numbers.json").write_text('[{"path": "a.png", "score": null, "error": 5}]')
    assert read_scores(tmp_path / "numbers.json").rows[0]["error"] == "5"
