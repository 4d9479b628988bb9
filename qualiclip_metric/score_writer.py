"""Writing per-image results as CSV, JSON lines or one JSON document, without ever losing a file.

Output goes to a temporary file beside the target and replaces it only when the run is complete, so an
existing result survives a failed or interrupted run. Every value written is valid in its format: JSON
never holds NaN, and CSV text cells that a spreadsheet would run as a formula are quoted.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qualiclip_metric.checkpoint import umask_mode

FORMATS = (".csv", ".json", ".jsonl")
#: First characters that make a spreadsheet treat a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class OutputError(OSError):
    """The output file cannot be written: a missing folder, a directory in its place, no permission, a full disk."""


def check_output(path: Path) -> None:
    """Refuse, before any work, an output that cannot be written; creates nothing that stays."""
    if path.suffix.lower() not in FORMATS:
        raise OutputError(f"--output must end in {', '.join(FORMATS)}, got {path}")
    check_writable(path)


def check_writable(path: Path) -> None:
    """Refuse a path whose folder is missing or read-only, or that names a directory (any file type)."""
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: the folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise OutputError(f"{path}: cannot write in {folder}: {err.strerror or err}") from err


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that would start a formula in a spreadsheet, prefixed with ``'`` (shown, not run)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity: such numbers become null, inside lists and mappings too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_json_atomically(path: Path, document: Any) -> None:
    """One JSON document written beside ``path`` and renamed over it; non-finite numbers become null."""
    write_text_atomically(path, json.dumps(finite_or_none(document), indent=2, allow_nan=False) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """``text`` (UTF-8) written beside ``path`` and renamed over it: readers see the old file or the new one.

    Raises:
        OutputError: the folder cannot be written or the disk is full; nothing is left behind.
    """
    staged = _Staged(path)
    try:
        staged.stream.write(text)
    except OSError as err:
        staged.discard()
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from err
    staged.commit()


class _Staged:
    """A temporary file beside ``path``: ``commit`` renames it into place, ``discard`` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        folder = path.parent if str(path.parent) else Path(".")
        try:
            handle, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
        except OSError as err:
            raise OutputError(f"{path}: cannot write in {folder}: {err.strerror or err}") from err
        self.temporary = Path(name)
        self.stream: IO[str] = os.fdopen(handle, "w", encoding="utf-8", newline="")

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def commit(self, target: Path | None = None) -> Path:
        target = target or self.path
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            self.temporary.chmod(umask_mode())  # mkstemp makes 0600 files; results are for sharing
            os.replace(self.temporary, target)
        except OSError as err:
            self.discard()
            raise OutputError(f"{target}: cannot write: {err.strerror or err}") from err
        return target

    def discard(self) -> None:
        if not self.stream.closed:
            self.stream.close()
        self.temporary.unlink(missing_ok=True)


class ScoreWriter:
    """Rows of one run to a file (``path``) or to standard output, in the format of the file's suffix.

    CSV and JSON lines are written and flushed row by row; a JSON document is written at the end.
    :meth:`close` puts the complete file in place; :meth:`interrupt` keeps the rows written so far
    without replacing a file that existed before the run.
    """

    def __init__(self, path: Path | None, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self.format = path.suffix.lower() if path is not None else ".csv"
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._staged = _Staged(path) if path is not None else None
        self.stream: IO[str] = self._staged.stream if self._staged else sys.stdout
        if self.format == ".csv":
            self.csv = csv.DictWriter(self.stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            self._guard(self.csv.writeheader)

    def _guard(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
            self.stream.flush()
        except OSError as err:  # a full disk, say
            if self._staged is not None:
                self._staged.discard()
            raise OutputError(f"{self.path or 'standard output'}: cannot write: {err.strerror or err}") from err

    def write(self, row: dict[str, Any]) -> None:
        self.count += 1
        if self.format == ".csv":
            self._guard(self.csv.writerow, {k: ("" if v is None else spreadsheet_safe(v)) for k, v in row.items()})
        elif self.format == ".jsonl":
            self._guard(self.stream.write, json.dumps(finite_or_none(row), allow_nan=False) + "\n")
        else:
            self.rows.append(row)

    def _finish_document(self) -> None:
        if self.format == ".json":
            self._guard(self.stream.write, json.dumps(finite_or_none(self.rows), indent=2, allow_nan=False) + "\n")

    def close(self) -> None:
        """Complete the output and put it in place (replacing an older file of that name)."""
        self._finish_document()
        if self._staged is not None:
            self._staged.commit()

    def interrupt(self) -> Path | None:
        """Keep the rows written so far: at ``path`` if nothing was there, else beside it as ``path.partial``."""
        if self._staged is None:
            return None
        self._finish_document()
        target = self.path if not self.path.exists() else self.path.with_name(self.path.name + ".partial")
        return self._staged.commit(target)

    def discard(self) -> None:
        if self._staged is not None:
            self._staged.discard()


#: The columns of every score file, whichever scorer wrote it; per-pair columns go before ``error``.
SCORE_COLUMNS = ("path", "score", "width", "height")


class ScoringInterrupted(Exception):
    """Ctrl-C during :func:`write_scores`: ``kept`` holds the ``count`` results written so far (or is None)."""

    def __init__(self, count: int, kept: Path | None) -> None:
        super().__init__(f"interrupted after {count} results")
        self.count, self.kept = count, kept


@dataclass
class ScoreSummary:
    """What :func:`write_scores` wrote: the scored count, the failed rows and the sum of the scores."""

    scored: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    total: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.scored if self.scored else None


def score_row(result: Any, pair_names: Sequence[str] = ()) -> dict[str, Any]:
    """The row of one result (anything with ``path``, ``score``, ``width``, ``height``, ``error``, ``pairs``)."""
    row = {name: getattr(result, name) for name in SCORE_COLUMNS}
    pairs = getattr(result, "pairs", None) or {}
    row.update({name: pairs.get(name) for name in pair_names})
    row["error"] = result.error
    return row


def write_scores(
    results: Iterable[Any],
    output: Path | None,
    *,
    pair_names: Sequence[str] = (),
    progress: Callable[[], Any] | None = None,
) -> ScoreSummary:
    """Write per-file results as a score file (format by suffix; CSV on standard output without ``output``).

    The one writer of score files: ``qualiclip score`` and the baselines' scoring commands call it, so
    their files have the same columns and ``qualiclip evaluate --predictions`` reads any of them.

    Raises:
        OutputError: the file cannot be written; a file that existed before is left as it was.
        ScoringInterrupted: Ctrl-C; the rows so far are kept (beside an existing file, as ``.partial``).
    """
    writer = ScoreWriter(output, [*SCORE_COLUMNS, *pair_names, "error"])
    summary = ScoreSummary()
    try:
        for result in results:
            row = score_row(result, pair_names)
            writer.write(row)
            if progress is not None:
                progress()
            if row["error"] is None:
                summary.scored += 1
                summary.total += row["score"]
            else:
                summary.failed.append(row)
        writer.close()
    except KeyboardInterrupt:
        raise ScoringInterrupted(writer.count, writer.interrupt()) from None
    except BaseException:
        writer.discard()
        raise
    return summary


@dataclass
class ScoreFile:
    """The rows of a score file, typed: ``score`` and the pair columns float or None, sizes int or None."""

    path: Path
    rows: list[dict[str, Any]]
    #: The per-pair columns, in file order (empty for a file written without ``--per-pair``).
    pair_names: list[str]


def _unquote(value: str) -> str:
    """Undo :func:`spreadsheet_safe`: a ``'`` that protects a formula start is not part of the value."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def _number(value: Any, kind: type) -> Any:
    """A cell as ``kind`` (float or int), None when empty; a float cell that is no number becomes NaN."""
    if value is None or value == "":
        return None
    try:
        return kind(value) if kind is float else int(float(value))
    except (TypeError, ValueError, OverflowError):
        return math.nan if kind is float else None


def read_scores(path: str | os.PathLike) -> ScoreFile:
    """Read a score file (CSV, JSON lines or JSON, by suffix) as :func:`write_scores` writes it.

    The one reader of score files: ``qualiclip evaluate --predictions`` and ``qualiclip report`` read
    through it. Columns other than ``path``, ``score``, ``width``, ``height`` and ``error`` are pair
    probabilities. CSV cells lose the ``'`` that protected them from spreadsheets; a score that is not
    a number is read as NaN, so that the caller can say which row it was.

    Raises:
        ValueError: an unknown suffix, a file that does not parse, or rows without ``path`` and ``score``.
        OSError: the file cannot be read.

    Example:
        >>> table = read_scores("scores.csv")  # doctest: +SKIP
        >>> table.rows[0]["score"], table.pair_names[:1]  # doctest: +SKIP
        (0.6123, ['Good photo./Bad photo.'])
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: a score file ends in {', '.join(FORMATS)}")
    with open(path, newline="", encoding="utf-8") as handle:
        try:
            if suffix == ".csv":
                reader = csv.DictReader(handle)
                columns = list(reader.fieldnames or [])
                raw = [{key: _unquote(value or "") for key, value in entry.items()} for entry in reader]
            elif suffix == ".jsonl":
                raw = [json.loads(line) for line in handle if line.strip()]
            else:
                raw = json.load(handle)
        except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable score file ({err})") from err
    if suffix != ".csv":
        if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
            raise ValueError(f"{path}: a JSON score file holds one object per image")
        columns = list(dict.fromkeys(key for entry in raw for key in entry))
    if not {"path", "score"} <= set(columns) or any("path" not in entry for entry in raw):
        raise ValueError(f"{path}: needs the columns path and score (as `qualiclip score` writes them)")
    known = {*SCORE_COLUMNS, "error"}
    pair_names = [column for column in columns if column not in known]
    rows = []
    for entry in raw:
        row = {"path": str(entry["path"]), "score": _number(entry.get("score"), float)}
        row.update(width=_number(entry.get("width"), int), height=_number(entry.get("height"), int))
        row.update({name: _number(entry.get(name), float) for name in pair_names})
        row["error"] = entry.get("error") or None
        rows.append(row)
    return ScoreFile(path, rows, pair_names)
