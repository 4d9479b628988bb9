"""Writing per-image results as CSV, JSON lines or one JSON document without ever losing a file, and reading
them back to continue a run.

CSV and JSON lines go row by row to a journal beside the target, flushed after every row, so a run stopped at any
moment (even by ``kill -9``) leaves whole rows there: ``.NAME.journal.partial``, or ``NAME.partial`` for a run that
replaces an existing ``NAME``. The journal becomes the target only when the run is complete, so an existing result
survives a failed or interrupted run, and a resumed run never takes rows from a file that was being replaced.
A JSON document is staged in a temporary file and written at the end. :func:`plan_resume` reads what an output
and its leftovers hold (a last line cut short is dropped) and :func:`write_scores` with ``resume=`` continues it.
Every value written is valid in its format: JSON never holds NaN, and CSV text cells that a spreadsheet would
run as a formula are quoted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qualiclip_metric.checkpoint import umask_mode

FORMATS = (".csv", ".json", ".jsonl")
#: The formats written row by row, which a run can continue (a JSON document is written once, at the end).
RESUMABLE_FORMATS = (".csv", ".jsonl")
#: First characters that make a spreadsheet treat a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The journal is synced to the disk at least this often (seconds); every row is flushed to the OS at once.
SYNC_INTERVAL = 2.0


class OutputError(OSError):
    """The output file cannot be written: a missing folder, a directory in its place, no permission, a full disk."""


class ScoreFileError(ValueError):
    """An existing output cannot be continued: it is no score file, has other columns, or holds a damaged row."""


def partial_path(path: Path) -> Path:
    """The journal of a run that replaces an existing ``path`` (CSV, JSON lines), and where an interrupted JSON
    run keeps its document when ``path`` existed: ``path.partial``. Its presence says that ``path`` is being
    replaced, so a resumed run does not keep ``path``'s rows."""
    return path.with_name(path.name + ".partial")


def journal_path(path: Path) -> Path:
    """The file a run appends its rows to while it runs when ``path`` did not exist (or the run continues it):
    ``.NAME.journal.partial`` beside ``path``."""
    return path.with_name(f".{path.name}.journal.partial")


def check_output(path: Path, *, resume: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written; creates nothing that stays.

    Without ``resume``, the rows an interrupted run left for ``path`` (``path.partial`` or the journal) are
    refused too, so that no run replaces them; with ``resume``, a JSON document is refused.
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"--output must end in {', '.join(FORMATS)}, got {path}")
    if resume and suffix not in RESUMABLE_FORMATS:
        raise OutputError(
            f"--resume needs a .csv or .jsonl output, got {path}: a .json document is written once, at the end, "
            "and cannot be continued"
        )
    check_writable(path)
    if suffix not in RESUMABLE_FORMATS:
        return
    journal = journal_path(path)
    for leftover in (partial_path(path), journal):
        if _is_locked(leftover):
            raise OutputError(f"{path}: another run is writing it now ({leftover} is locked)")
    if not resume:
        for leftover in (partial_path(path), journal):
            if leftover.exists():
                raise OutputError(
                    f"{leftover} holds the rows of an interrupted run: continue it with --resume, "
                    "or delete that file to start over"
                )


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


def written_path(path: str | os.PathLike, format: str) -> str:
    """The path cell a run writes for ``path`` (``str(path)``, quoted as :func:`spreadsheet_safe` in CSV).

    Rows are matched to inputs by this text, so a resumed run must name its files as the first run did.
    """
    return spreadsheet_safe(str(path)) if format == ".csv" else str(path)


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
        _close(self.stream)
        self.temporary.unlink(missing_ok=True)


def _close(stream: IO[str]) -> None:
    """Close ``stream`` after a failure too: on a full disk closing flushes the buffer again and fails again."""
    if not stream.closed:
        with contextlib.suppress(OSError):
            stream.close()


def _lock(handle: int, path: Path | None = None) -> bool:
    """Take the journal's lock (``flock``, held until the file is closed); False when another process holds it.

    Where ``fcntl`` is missing (Windows) nothing is locked and two runs on one output are not detected; where
    the file system refuses locks (``ENOLCK`` on an NFS mount without a lock daemon, ``EOPNOTSUPP``) the run
    goes on unlocked, and with ``path`` one line on stderr says so.
    """
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if path is not None:
            print(
                f"qualiclip: warning: cannot lock {path} ({err.strerror or err}): "
                "a second run on this output would not be refused",
                file=sys.stderr,
            )
    return True


def _is_locked(path: Path) -> bool:
    try:  # for writing: NFS emulates flock with byte-range locks, which need a descriptor open for writing
        handle = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        return not _lock(handle)
    finally:
        os.close(handle)  # releases the lock taken to test


class _Rows:
    """Rows encoded as ``format`` on ``stream``: a CSV header and rows, JSON lines, or a JSON array at the end."""

    def __init__(self, stream: IO[str], format: str, columns: Sequence[str]) -> None:
        self.stream, self.format, self.columns = stream, format, list(columns)
        self.document: list[dict[str, Any]] = []
        if format == ".csv":
            self.csv = csv.DictWriter(stream, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")

    def header(self) -> None:
        if self.format == ".csv":
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.format == ".csv":  # already quoted cells (rows read back) pass unchanged: the quoting is idempotent
            self.csv.writerow({key: ("" if value is None else spreadsheet_safe(value)) for key, value in row.items()})
        elif self.format == ".jsonl":
            self.stream.write(json.dumps(finite_or_none(row), allow_nan=False) + "\n")
        else:
            self.document.append(row)

    def finish(self) -> None:
        if self.format == ".json":
            self.stream.write(json.dumps(finite_or_none(self.document), indent=2, allow_nan=False) + "\n")


class _Journal:
    """Rows appended, flushed one by one and synced every few seconds; locked while written.

    ``NAME.partial`` when it ``replaces`` an existing output (a fresh run over an existing file, or a resumed run
    that continues such a run), else ``.NAME.journal.partial``. A fresh run creates it and refuses one that
    exists; a resumed run appends after its last whole row (a row cut short by a kill is removed first).
    """

    def __init__(self, output: Path, format: str, resume: bool) -> None:
        partial = partial_path(output)
        self.replaces = partial.exists() if resume else output.exists()
        self.output, self.path = output, partial if self.replaces else journal_path(output)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | (0 if resume else os.O_EXCL)
        try:
            handle = os.open(self.path, flags, 0o666)
        except FileExistsError:
            if _is_locked(self.path):  # created since check_output by a run that is still writing it
                raise OutputError(f"{output}: another run is writing it now ({self.path} is locked)") from None
            raise OutputError(
                f"{self.path} holds the rows of an interrupted run: continue it with --resume, "
                "or delete that file to start over"
            ) from None
        except OSError as err:
            raise OutputError(f"{output}: cannot write {self.path}: {err.strerror or err}") from err
        try:
            if not _lock(handle, self.path):
                raise OutputError(f"{output}: another run is writing it now ({self.path} is locked)")
            self.columns: list[str] | None = None  #: the header already there (CSV), which appended rows follow
            if resume:  # read under the lock: no other run appends now
                data = self.path.read_bytes()
                columns, _, end = _read_rows(data, self.path, format)
                if end < len(data):
                    os.ftruncate(handle, end)
                self.columns = columns if format == ".csv" and end else None
        except BaseException:
            os.close(handle)
            raise
        self.empty = os.fstat(handle).st_size == 0
        self.stream: IO[str] = os.fdopen(handle, "a", encoding="utf-8", newline="")
        self.synced = time.monotonic()

    def flush(self) -> None:
        self.stream.flush()
        if time.monotonic() - self.synced > SYNC_INTERVAL:
            os.fsync(self.stream.fileno())
            self.synced = time.monotonic()

    def sync(self) -> None:
        if not self.stream.closed:
            self.stream.flush()
            os.fsync(self.stream.fileno())

    def commit(self, target: Path) -> Path:
        """Put the journal in place as ``target`` (renamed while still locked, so no other run takes it)."""
        try:
            self.sync()
            os.replace(self.path, target)
        except OSError as err:
            raise OutputError(f"{target}: cannot write: {err.strerror or err}") from err
        finally:
            self.close()
        return target

    def close(self) -> None:
        _close(self.stream)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ScoreWriter:
    """Rows of one run to a file (``path``) or to standard output, in the format of the file's suffix.

    CSV and JSON lines are appended to the journal and flushed row by row; a JSON document is written at the
    end. :meth:`close` puts the complete file in place; :meth:`interrupt` keeps the rows written so far without
    replacing a file that existed before the run. With ``resume`` (the run's inputs, in order) the rows go to the
    journal after those of earlier runs, and :meth:`close` and :meth:`interrupt` rewrite ``path`` with everything
    ``path``, ``path.partial`` and the journal hold: one row per path, the inputs' first in their order.
    """

    def __init__(
        self, path: Path | None, columns: list[str], *, resume: Sequence[str | os.PathLike] | None = None
    ) -> None:
        self.path, self.columns = path, columns
        self.format = path.suffix.lower() if path is not None else ".csv"
        if resume is not None and (path is None or self.format not in RESUMABLE_FORMATS):
            raise ValueError("Argument `resume` needs a .csv or .jsonl output file")
        self.resume = list(resume) if resume is not None else None
        self.count = 0
        self.written = 0  #: rows written whole (``count`` also counts one whose write failed)
        self._done: Path | None = None  # where the complete output went
        self._staged: _Staged | None = None
        self._journal: _Journal | None = None
        if path is None:
            self.stream: IO[str] = sys.stdout
        elif self.format in RESUMABLE_FORMATS:
            self._journal = _Journal(path, self.format, resume=self.resume is not None)
            self.stream = self._journal.stream
            found = self._journal.columns
            if found is not None:  # rows appended under an earlier run's header go in its column order
                if sorted(found) != sorted(columns):
                    self._journal.close()
                    raise ScoreFileError(
                        f"{self._journal.path} has other columns ({', '.join(found)}) than this run "
                        f"({', '.join(columns)})"
                    )
                columns = found
        else:
            self._staged = _Staged(path)
            self.stream = self._staged.stream
        self._rows = _Rows(self.stream, self.format, columns)
        if self._journal is None or self._journal.empty:
            self._guard(self._rows.header)

    def _guard(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
            if self._journal is not None:
                self._journal.flush()
            else:
                self.stream.flush()
        except OSError as err:  # a full disk, say
            kept = self.discard()
            where = f"; the {self.written} rows written stay in {kept} (--resume continues)" if kept else ""
            raise OutputError(f"{self.path or 'standard output'}: cannot write: {err.strerror or err}{where}") from err

    def write(self, row: dict[str, Any]) -> None:
        self.count += 1
        self._guard(self._rows.write, row)
        self.written += 1

    def close(self) -> None:
        """Complete the output and put it in place (replacing an older file of that name)."""
        self._guard(self._rows.finish)
        if self.resume is not None:
            self._done = self._rewrite()
        elif self._journal is not None:
            self._done = self._journal.commit(self.path)
        elif self._staged is not None:
            self._done = self._staged.commit()

    def interrupt(self) -> Path | None:
        """Keep the rows written so far: at ``path`` if nothing was there, else beside it as ``path.partial``.

        A resumed run puts them into ``path`` with what it already held, which a later resume continues; one
        that continues the replacement of ``path`` keeps them in ``path.partial``, and ``path`` as it was.
        """
        if self.path is None or self._done is not None:  # Ctrl-C after the output was complete
            return self._done
        if self._journal is not None and self._journal.replaces:
            self._journal.close()  # flushed row by row: the rows stay where they are
            return self._journal.path
        if self.resume is not None:
            return self._rewrite()
        self._guard(self._rows.finish)
        target = self.path if not self.path.exists() else partial_path(self.path)
        if self._journal is not None:
            return self._journal.commit(target)
        return self._staged.commit(target)

    def discard(self) -> Path | None:
        """Stop after a write error: remove the staged file, and a journal this run created without rows in it.

        A journal that holds rows stays, as after a kill, so that ``--resume`` continues once the disk has room
        (a resumed run's journal always stays); returns it then.
        """
        if self._staged is not None:
            self._staged.discard()
        if self._journal is None:
            return None
        if self.resume is None and self.written == 0:
            self._journal.discard()
            return None
        self._journal.close()
        return self._journal.path

    def abandon(self) -> None:
        """Stop writing after an unexpected error; the journal stays, as after a kill, for a resumed run."""
        if self._journal is not None:
            self._journal.close()
        elif self._staged is not None:
            self._staged.discard()

    def _rewrite(self) -> Path:
        """``path`` rewritten in input order from itself and its leftovers, which are then removed."""
        assert self.path is not None and self._journal is not None and self.resume is not None
        try:
            self._journal.sync()
            stored = read_stored_scores(self.path)
            columns = self.columns if stored.columns is None else _in_order(self.columns, stored.columns)
            with _Staged(self.path) as staged:
                rows = _Rows(staged.stream, self.format, columns)
                rows.header()
                for row in stored.ordered(self.resume):
                    rows.write(row)
            partial_path(self.path).unlink(missing_ok=True)
            journal_path(self.path).unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write: {err.strerror or err}") from err
        finally:
            self._journal.close()
        return self.path


def _in_order(columns: Sequence[str], found: Sequence[str]) -> list[str]:
    """The columns a file holds, in this run's order where they are this run's (a resume checks they are)."""
    return [name for name in columns if name in found] + [name for name in found if name not in columns]


#: The columns of every score file, whichever scorer wrote it; per-pair columns go before ``error``.
SCORE_COLUMNS = ("path", "score", "width", "height")


# -- continuing an output ------------------------------------------------------------------------------------
# A resumed run reads the files it continues here rather than through read_scores: cells stay as written, so
# that rewriting them keeps them byte for byte, a row cut short by a kill is told apart from a damaged file,
# and columns are checked against the run's.


def _decode(data: bytes, source: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        reason = f"not UTF-8 text: {err.reason} at byte {err.start}"
        raise ScoreFileError(f"{source} is not a score file ({reason})") from None


def _lines(text: str) -> list[str]:
    """Lines ending in ``\\n`` (only that character ends a line: a ``\\r`` inside a quoted cell does not)."""
    return [line + "\n" for line in text.split("\n")[:-1]]


def _read_csv(data: bytes, source: Path) -> tuple[list[str] | None, list[dict[str, Any]], int]:
    """Header, rows and the byte length of the whole rows; a row cut short at the end is left out."""
    lines = _lines(_decode(data[: data.rfind(b"\n") + 1], source))  # a last line without its newline was cut short
    consumed = 0

    def feed() -> Iterator[str]:
        nonlocal consumed
        for line in lines:
            consumed += 1
            yield line

    reader = csv.reader(feed(), strict=True)
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    whole = 0  # lines holding whole records
    try:
        for record in reader:
            if header is None:
                header = record if record else None
            elif record and len(record) != len(header):
                raise ScoreFileError(
                    f"{source}, line {reader.line_num}: {len(record)} cells for {len(header)} columns; "
                    "not a score file, or damaged"
                )
            elif record:
                rows.append(dict(zip(header, record, strict=True)))
            whole = reader.line_num
    except csv.Error as err:
        if consumed < len(lines):  # an error before the end is damage; at the end, a quoted cell cut short
            raise ScoreFileError(f"{source}, line {reader.line_num}: not CSV ({err})") from None
    return header, rows, len("".join(lines[:whole]).encode("utf-8"))


def _read_jsonl(data: bytes, source: Path) -> tuple[list[str] | None, list[dict[str, Any]], int]:
    end = data.rfind(b"\n") + 1  # a last line without its newline was cut short
    columns: list[str] | None = None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(_lines(_decode(data[:end], source)), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ScoreFileError(f"{source}, line {number}: not a JSON object; not a score file, or damaged")
        if columns is None:
            columns = list(row)
        elif set(row) != set(columns):
            raise ScoreFileError(f"{source}, line {number}: other keys than line 1 ({', '.join(row)})")
        rows.append(row)
    return columns, rows, end


def _read_rows(data: bytes, source: Path, format: str) -> tuple[list[str] | None, list[dict[str, Any]], int]:
    return _read_csv(data, source) if format == ".csv" else _read_jsonl(data, source)


def is_scored(row: dict[str, Any]) -> bool:
    """A row with a finite score and no error (as read from CSV, where every cell is text, or from JSON)."""
    score, error = row.get("score"), row.get("error")
    if error not in (None, ""):
        return False
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            return False
    return isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)


@dataclass
class StoredScores:
    """What an output holds with its leftovers: one row per path cell, in the order the paths first appear.

    Read from ``FILE`` (unless ``FILE.partial`` is there: a run was replacing it), then ``FILE.partial``, then
    the journal; for a path in several rows, the last scored row wins, and a failed row replaces only another
    failed one.
    """

    format: str
    columns: list[str] | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    @property
    def pair_names(self) -> list[str]:
        """The per-pair columns (those between ``height`` and ``error``)."""
        fixed = {*SCORE_COLUMNS, "error"}
        return [name for name in self.columns or [] if name not in fixed]

    def add(self, row: dict[str, Any]) -> None:
        earlier = self.rows.get(row["path"])
        if earlier is None or is_scored(row) or not is_scored(earlier):
            self.rows[row["path"]] = row

    def check_columns(self, *, per_pair: bool, pair_names: Sequence[str] | None = None) -> None:
        """Refuse a file that a run with (``per_pair``) or without per-pair columns cannot continue.

        ``pair_names``, when known, must be the file's per-pair columns exactly.

        Raises:
            ScoreFileError: not a score file, or other per-pair columns.
        """
        if self.columns is None:
            return
        source = self.sources[0]
        if len(set(self.columns)) != len(self.columns) or not {*SCORE_COLUMNS, "error"} <= set(self.columns):
            raise ScoreFileError(
                f"{source} is not a score file (its columns are {', '.join(self.columns)}); "
                f"a score file has {', '.join(SCORE_COLUMNS)}, [per-pair columns,] error"
            )
        found = self.pair_names
        if per_pair and not found:
            raise ScoreFileError(f"{source} has no per-pair columns: continue it without --per-pair")
        if not per_pair and found:
            raise ScoreFileError(f"{source} has per-pair columns ({', '.join(found)}): continue it with --per-pair")
        if per_pair and pair_names is not None and set(found) != set(pair_names):
            raise ScoreFileError(
                f"{source} has the pair columns {', '.join(found)}, this model's pairs are {', '.join(pair_names)}: "
                "continue it with the weights and prompts that wrote it"
            )

    def ordered(self, inputs: Sequence[str | os.PathLike]) -> Iterator[dict[str, Any]]:
        """Each row once: those of ``inputs`` in their order, then those of other paths in the order read."""
        done = set()
        for path in inputs:
            key = written_path(path, self.format)
            if key in self.rows and key not in done:
                done.add(key)
                yield self.rows[key]
        for key, row in self.rows.items():
            if key not in done:
                yield row


def read_stored_scores(path: Path) -> StoredScores:
    """The rows ``path``, ``path.partial`` and the journal hold (those that exist); reads, never writes.

    ``path`` is not read when ``path.partial`` exists: a run that replaces ``path`` left it, and the rows it did
    not get to must be scored again, not taken from the file it replaces.

    Raises:
        ScoreFileError: a file is no score file, the files have different columns, or a row is damaged.
        OutputError: a file exists but cannot be read.
    """
    stored = StoredScores(path.suffix.lower())
    replaced = partial_path(path).exists()
    for source in (path, partial_path(path), journal_path(path))[replaced:]:
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise OutputError(f"{source}: cannot read: {err.strerror or err}") from err
        columns, rows, _ = _read_rows(data, source, stored.format)
        if columns is None:
            continue
        if stored.columns is None:
            stored.columns = columns
        elif set(columns) != set(stored.columns):
            raise ScoreFileError(
                f"{source} has other columns ({', '.join(columns)}) than {stored.sources[0]} "
                f"({', '.join(stored.columns)})"
            )
        stored.sources.append(source)
        for row in rows:
            if "path" not in row or not isinstance(row["path"], str) or not row["path"]:
                raise ScoreFileError(f"{source} is not a score file (a row without a path: {row})")
            stored.add(row)
    return stored


@dataclass
class ResumePlan:
    """What a resumed run keeps and scores: ``todo`` (inputs in order, each once) is what has no score yet."""

    stored: StoredScores
    todo: list[Any]
    kept: int = 0
    retried: int = 0  #: inputs whose rows all hold an error: scored again
    foreign: int = 0  #: rows of paths that are not among the inputs: kept, after the inputs' rows


def plan_resume(output: Path, inputs: Sequence[str | os.PathLike], *, per_pair: bool = False) -> ResumePlan:
    """Read ``output`` (and what interrupted runs left beside it) and split ``inputs`` into kept and to score.

    An input is kept when a row with its path cell (:func:`written_path`) has a finite score and no error;
    inputs whose rows hold only errors are scored again.

    Raises:
        ScoreFileError: as :func:`read_stored_scores`, or columns that a run with (or without) ``per_pair``
            cannot continue.

    Examples:
        >>> plan = plan_resume(Path("scores.csv"), ["a.png", "b.png"])  # doctest: +SKIP
        >>> plan.kept, plan.todo  # doctest: +SKIP
        (1, ['b.png'])
    """
    stored = read_stored_scores(output)
    stored.check_columns(per_pair=per_pair)
    plan = ResumePlan(stored, [])
    seen = set()
    for path in inputs:
        key = written_path(path, stored.format)
        if key in seen:
            continue
        seen.add(key)
        row = stored.rows.get(key)
        if row is not None and is_scored(row):
            plan.kept += 1
        else:
            plan.todo.append(path)
            plan.retried += row is not None
    plan.foreign = sum(key not in seen for key in stored.rows)
    return plan


# -- the one writer of score files ----------------------------------------------------------------------------


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
    resume: Sequence[str | os.PathLike] | None = None,
) -> ScoreSummary:
    """Write per-file results as a score file (format by suffix; CSV on standard output without ``output``).

    The one writer of score files: ``qualiclip score`` and the baselines' scoring commands call it, so
    their files have the same columns and ``qualiclip evaluate --predictions`` reads any of them.

    Args:
        results: the results, written in the order they come.
        output: a ``.csv``, ``.jsonl`` or ``.json`` file, or None for CSV on standard output.
        pair_names: the per-pair columns, between ``height`` and ``error``.
        progress: called after each row.
        resume: continue ``output`` (CSV or JSON lines) instead of replacing it: every input of the run, in
            order. The results are those of the inputs :func:`plan_resume` left to score; at the end ``output``
            holds one row per path, the inputs' in this order, then the rows of other paths it already held.

    Raises:
        OutputError: the file cannot be written; a file that existed before is left as it was.
        ScoringInterrupted: Ctrl-C; the rows so far are kept (beside an existing file, as ``.partial``; with
            ``resume``, in ``output`` with the rows it held).
    """
    writer = ScoreWriter(output, [*SCORE_COLUMNS, *pair_names, "error"], resume=resume)
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
    except OutputError:
        writer.discard()
        raise
    except BaseException:
        writer.abandon()
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
    a number is read as NaN, so that the caller can say which row it was; an ``error`` that is not text
    (a number in a JSON file) is read as its text. A file of no images (a CSV header, ``[]``) gives no rows.

    Raises:
        ValueError: an unknown suffix, a file that does not parse, rows without ``path`` and ``score``, or a
            CSV row with more cells than the header.
        OSError: the file cannot be read.

    Example:
        >>> table = read_scores("scores.csv")  # doctest: +SKIP
        >>> first = table.rows.pop(0)  # doctest: +SKIP
        >>> first.get("score"), len(table.pair_names)  # doctest: +SKIP
        (0.6123, 7)
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
                raw = []
                for entry in reader:
                    if None in entry:  # DictReader keeps the cells beyond the header under the key None
                        raise ValueError(
                            f"{path}: line {reader.line_num} has {len(columns) + len(entry[None])} cells, "
                            f"but the header has {len(columns)}"
                        )
                    raw.append({key: _unquote(value or "") for key, value in entry.items()})
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
    checked = raw or suffix == ".csv"  # an empty JSON file has no keys to check; an empty CSV still has its header
    if checked and (not {"path", "score"} <= set(columns) or any("path" not in entry for entry in raw)):
        raise ValueError(f"{path}: needs the columns path and score (as `qualiclip score` writes them)")
    known = {*SCORE_COLUMNS, "error"}
    pair_names = [column for column in columns if column not in known]
    rows = []
    for entry in raw:
        row = {"path": str(entry["path"]), "score": _number(entry.get("score"), float)}
        row.update(width=_number(entry.get("width"), int), height=_number(entry.get("height"), int))
        row.update({name: _number(entry.get(name), float) for name in pair_names})
        error = entry.get("error")
        row["error"] = str(error) if error else None  # a JSON file may hold a number or object there
        rows.append(row)
    return ScoreFile(path, rows, pair_names)
