"""The score CSV of the baselines, in ``qualiclip score``'s layout, so ``qualiclip evaluate --predictions`` reads it."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.inputs import load_image

COLUMNS = ("path", "score", "width", "height", "error")


@dataclass(frozen=True)
class ScoreRow:
    path: str
    score: float | None
    width: int | None
    height: int | None
    error: str | None = None


def score_paths(paths: Iterable[str | os.PathLike], score_image: Callable[[Tensor], float]) -> Iterator[ScoreRow]:
    """One row per path, in order; a file that cannot be read gets its error and the rest are still scored."""
    for path in paths:
        try:
            image = load_image(path)
        except ImageLoadError as err:
            yield ScoreRow(str(path), None, None, None, str(err))
            continue
        yield ScoreRow(str(path), float(score_image(image)), image.shape[-1], image.shape[-2])


def write_scores(rows: Iterable[ScoreRow], output: Path | None, prog: str) -> int:
    """Write the rows as CSV (standard output without ``output``); exit code 1 when any image failed."""
    stream = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    scored = failed = 0
    try:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(
                ["" if value is None else value for value in (row.path, row.score, row.width, row.height)]
                + [row.error or ""]
            )
            if row.error is None:
                scored += 1
            else:
                failed += 1
                print(f"{prog}: failed: {row.error}", file=sys.stderr)
    finally:
        if output:
            stream.close()
    print(f"{prog}: scored {scored} of {scored + failed} images; {failed} failed", file=sys.stderr)
    return 1 if failed else 0
