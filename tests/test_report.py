"""``qualiclip report``: the HTML page built from a folder or a score file, opened in a real headless Chromium."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qualiclip_metric.batch import FileScore
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
