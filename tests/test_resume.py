"""``qualiclip score --resume``: runs stopped at any moment (kill -9, SIGTERM, Ctrl-C) are continued, not redone.

The real command runs as a subprocess on small generated images, one thread and batches of one, so that a
run is slow enough to be stopped midway and its scores are those of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_images
from PIL import Image
from test_cli import qualiclip_command

from qualiclip_metric.score_writer import (
    OutputError,
    ScoreFileError,
    ScoreWriter,
    ScoringInterrupted,
    check_output,
    plan_resume,
    write_scores,
)

COUNT = 40
MISSING_WEIGHTS = "/nonexistent/weights.pth"  # exit code 3 if anything tried to load them
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def work(module_tmp_path) -> Path:
    """A folder holding ``images/`` (COUNT small PNGs); commands run inside it and name files relative to it."""
    from conftest import make_images

    folder = module_tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(make_images(COUNT, 64, 64, seed=77)):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(array).save(folder / f"im_{index:03d}.png")
    return module_tmp_path


def command(work: Path, official_pth: Path, *args: str) -> list[str]:
    return [*qualiclip_command(), "score", *args, "--weights", str(official_pth), "--workers", "0", "--batch-size", "1"]


def run(work: Path, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=work, env=ENV, capture_output=True, text=True, input=stdin)


def start(work: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(journal: Path, rows: int, process: subprocess.Popen, header: bool) -> None:
    """Poll the journal until it holds ``rows`` whole rows (the command flushes each row as it is scored)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= rows + header:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before writing {rows} rows: {process.communicate()[1]}")
        time.sleep(0.02)
    pytest.fail("no rows appeared")


def read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines()]


def score_of(row: dict) -> float | None:
    value = row["score"]
    return None if value in (None, "") else float(value)


@pytest.fixture(scope="module")
def reference(work: Path, official_pth: Path) -> dict[str, float]:
    """Scores of one uninterrupted run, by path, in input order."""
    result = run(work, command(work, official_pth, "images", "--output", "reference.jsonl", "--quiet"))
    assert result.returncode == 0, result.stderr
    rows = read_rows(work / "reference.jsonl")
    assert [row["path"] for row in rows] == [f"images/im_{index:03d}.png" for index in range(COUNT)]
    return {row["path"]: row["score"] for row in rows}


def assert_complete(rows: list[dict], reference: dict[str, float], unchanged: dict[str, float] = {}) -> None:  # noqa: B006
    """One row per input, in input order, with the uninterrupted run's scores (``unchanged``: the scores given)."""
    assert [row["path"] for row in rows] == list(reference)
    for row in rows:
        assert row["error"] in (None, ""), row
        expected = unchanged.get(row["path"], reference[row["path"]])
        assert abs(score_of(row) - expected) <= 1e-6, (row, expected)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_run_killed_with_sigkill_is_continued_by_resume(suffix, work, official_pth, reference):
    output = work / f"killed{suffix}"
    journal = work / f".killed{suffix}.journal.partial"
    header = suffix == ".csv"
    process = start(work, command(work, official_pth, "images", "--output", output.name))
    wait_for_rows(journal, 4, process, header)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not output.exists()  # the run did not finish: its rows are in the journal only

    # Cut the last whole row in the middle, as a kill during its write would; fail one row, as a transient
    # error would (it is scored again); give another a score no run computes (it is kept as it is).
    data = journal.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    lines = whole.decode().splitlines(keepends=True)
    rows_before = lines[header:]
    assert 4 <= len(rows_before) < COUNT
    torn, complete = rows_before[-1], rows_before[:-1]
    if header:
        first, second = (line.split(",") for line in complete[:2])
        complete[0] = ",".join([first[0], "", first[2], first[3], "a transient failure\n"])
        complete[1] = ",".join([second[0], "0.125", *second[2:]])
    else:
        first, second = json.loads(complete[0]), json.loads(complete[1])
        complete[0] = json.dumps({**first, "score": None, "error": "a transient failure"}) + "\n"
        complete[1] = json.dumps({**second, "score": 0.125}) + "\n"
    journal.write_text("".join(lines[:header] + complete) + torn[: len(torn) // 2], encoding="utf-8")
    kept = len(complete) - 1

    result = run(work, command(work, official_pth, "images", "--output", output.name, "--resume"))
    assert result.returncode == 0, result.stderr
    todo = COUNT - kept
    assert f"kept {kept} of {COUNT} images, {todo} to score (1 that failed before)" in result.stderr
    assert f"scored {todo} of {todo} images" in result.stderr
    rows = read_rows(output)
    assert_complete(rows, reference, unchanged={f"images/im_{1:03d}.png": 0.125})
    text = output.read_text(encoding="utf-8")
    assert all(line in text for line in complete[1:])  # the kept rows, byte for byte
    assert not journal.exists() and not (work / f"killed{suffix}.partial").exists()


def test_sigterm_and_sigint_stop_with_one_line_and_resume_continues(work, official_pth, reference):
    output, journal = work / "stopped.csv", work / ".stopped.csv.journal.partial"
    plain = command(work, official_pth, "images", "--output", output.name)

    # SIGTERM (kill, timeout, schedulers) stops a run as Ctrl-C does; no file was there, so the rows go to it.
    process = start(work, [*plain, "--quiet"])
    wait_for_rows(journal, 3, process, header=True)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    first = read_rows(output)
    assert f"interrupted after {len(first)} of {COUNT} images" in stderr
    assert f"the results so far are in {output.name} (--resume continues)" in stderr
    assert 3 <= len(first) < COUNT and [row["path"] for row in first] == list(reference)[: len(first)]
    assert not journal.exists()
    first_text = output.read_text(encoding="utf-8")

    # Ctrl-C during a resumed run: the file then holds the earlier rows and the new ones, in input order.
    process = start(work, [*plain, "--resume"])
    wait_for_rows(journal, 3, process, header=True)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and f"resuming {output.name}: kept {len(first)} of {COUNT}" in stderr
    second = read_rows(output)
    assert len(first) + 3 <= len(second) < COUNT and [row["path"] for row in second] == list(reference)[: len(second)]
    assert output.read_text(encoding="utf-8").startswith(first_text)
    assert f"interrupted after {len(second) - len(first)} of {COUNT - len(first)} images" in stderr

    result = run(work, [*plain, "--resume"])
    assert result.returncode == 0, result.stderr
    assert f"kept {len(second)} from {output.name}" in result.stderr
    assert_complete(read_rows(output), reference)


def test_files_from_a_list_and_glob_patterns(work, official_pth, reference):
    (work / "list.txt").write_text("# chosen by hand\n\nimages/im_005.png\nimages/im_002.png\n", encoding="utf-8")
    args = ["images/**/im_01*.png", "--files-from", "list.txt", "--output", "listed.jsonl"]
    result = run(work, command(work, official_pth, *args))
    assert result.returncode == 0, result.stderr
    rows = read_rows(work / "listed.jsonl")
    expected = [f"images/im_{index:03d}.png" for index in (*range(10, 20), 5, 2)]
    assert [row["path"] for row in rows] == expected  # the pattern's matches sorted, then the list's order
    for row in rows:
        assert abs(row["score"] - reference[row["path"]]) <= 1e-6


def test_paths_from_stdin_order_a_resumed_file_and_other_rows_stay_at_its_end(work, reference):
    """A complete output needs no model: the run only puts the rows in the order of the list it reads."""
    output = work / "complete.csv"
    lines = ["path,score,width,height,error\n"] + [f"{path},{score!r},64,64,\n" for path, score in reference.items()]
    lines.append("elsewhere/gone.png,0.5,64,64,\n")
    output.write_text("".join(lines), encoding="utf-8")
    listed = "images/im_003.png\nimages/im_001.png\n"
    args = [*qualiclip_command(), "score", "--files-from", "-", "--resume", "--output", output.name]
    result = run(work, [*args, "--weights", MISSING_WEIGHTS], stdin=listed)
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 2 images, 0 to score; 39 rows of other files stay at the end" in result.stderr
    rows = read_rows(output)
    others = [path for path in reference if path not in ("images/im_003.png", "images/im_001.png")]
    assert [row["path"] for row in rows] == ["images/im_003.png", "images/im_001.png", *others, "elsewhere/gone.png"]
    assert sorted(output.read_text(encoding="utf-8").splitlines(keepends=True)) == sorted(lines)


def test_bad_combinations_exit_2_and_change_no_file(work):
    files = {
        "scores.csv": "path,score,width,height,error\nimages/im_000.png,0.5,64,64,\n",
        "mos.csv": "image,mos\nimages/im_000.png,3.5\n",
        "left.csv": "path,score,width,height,error\n",
        ".left.csv.journal.partial": "path,score,width,height,error\nimages/im_000.png,0.5,64,64,\n",
    }
    folder = work / "bad"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "images").symlink_to(work / "images")
    cases = [
        (["images", "--resume"], "--resume continues an --output file"),
        (["images", "--resume", "--output", "scores.json"], "--resume needs a .csv or .jsonl output"),
        (["images", "--resume", "--output", "scores.csv", "--per-pair"], "has no per-pair columns"),
        (["images", "--resume", "--output", "mos.csv"], "mos.csv is not a score file"),
        (["images", "--output", "left.csv"], ".left.csv.journal.partial holds the rows of an interrupted run"),
        (["images/none_*.png"], "no file or folder matches the pattern 'images/none_*.png'"),
        (["--output", "scores.csv"], "give the images to score"),
    ]
    for args, message in cases:
        result = run(folder, [*qualiclip_command(), "score", *args, "--weights", MISSING_WEIGHTS])
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert {name: (folder / name).read_text(encoding="utf-8") for name in files} == files
    assert sorted(path.name for path in folder.iterdir()) == sorted([*files, "images"])


def test_rows_cut_short_are_dropped_and_damaged_files_refused(tmp_path):
    """What a kill can leave (a last row cut short, also inside a quoted cell) from what it cannot (damage)."""
    output = tmp_path / "scores.csv"
    header = "path,score,width,height,error\n"
    rows = "a.png,0.5,64,64,\nb.png,,64,64,a failure\n"
    output.write_text(header + rows + 'c.png,,64,64,"two lines\n', encoding="utf-8")  # the quote never closes
    inputs = ["a.png", "b.png", "c.png", "d.png", "a.png"]
    plan = plan_resume(output, inputs)
    assert (plan.todo, plan.kept, plan.retried, plan.foreign) == (["b.png", "c.png", "d.png"], 1, 1, 0)
    output.write_text(header + rows + "c.png,0.4,6", encoding="utf-8")  # no newline: the row was cut short
    assert plan_resume(output, inputs).todo == ["b.png", "c.png", "d.png"]
    output.write_text(header + "c.png,0.4,6\n" + rows, encoding="utf-8")  # a short row with rows after it
    with pytest.raises(ScoreFileError, match="line 2: 3 cells for 5 columns"):
        plan_resume(output, inputs)
    jsonl = tmp_path / "scores.jsonl"
    good = json.dumps({"path": "a.png", "score": 0.5, "width": 64, "height": 64, "error": None})
    jsonl.write_text(good + '\n{"path": "b.png", "sco\n' + good + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match="line 2: not a JSON object"):
        plan_resume(jsonl, inputs)
    jsonl.write_text(good + '\n{"path": "b.png", "score": NaN', encoding="utf-8")
    assert plan_resume(jsonl, inputs).kept == 1
    pairs = tmp_path / "pairs.jsonl"
    row = {"path": "a.png", "score": 0.5, "width": 64, "height": 64, "Sharp./Blurry.": 0.5, "error": None}
    pairs.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ScoreFileError, match=r"has per-pair columns \(Sharp./Blurry.\): continue it with --per-pair"):
        plan_resume(pairs, inputs)
    assert plan_resume(pairs, inputs, per_pair=True).kept == 1


def _result(path: str, score: float) -> SimpleNamespace:
    return SimpleNamespace(path=path, score=score, width=64, height=64, error=None, pairs=None)


def _stopped_after(count: int, results):
    """The results, then Ctrl-C after ``count`` of them."""
    for index, result in enumerate(results):
        if index == count:
            raise KeyboardInterrupt
        yield result


@pytest.mark.parametrize("stop", ["kill", "ctrl-c"])
def test_resume_after_a_stopped_run_that_replaced_a_file_does_not_keep_the_old_rows(tmp_path, stop):
    """A run without --resume over an existing file replaces it; stopped after 2 rows (by kill -9 or Ctrl-C),
    --resume must score the 11 others again rather than keep the old file's rows, which the user replaced."""
    output = tmp_path / "out.csv"
    inputs = [f"im_{index:02d}.png" for index in range(13)]
    old = "path,score,width,height,error\n" + "".join(f"{path},9.0,64,64,\n" for path in inputs)
    output.write_text(old, encoding="utf-8")
    if stop == "kill":
        script = (
            "import os, signal, sys\nfrom pathlib import Path\n"
            "from qualiclip_metric.score_writer import ScoreWriter\n"
            "writer = ScoreWriter(Path(sys.argv[1]), ['path', 'score', 'width', 'height', 'error'])\n"
            "for path in sys.argv[2:4]:\n"
            "    writer.write({'path': path, 'score': 0.5, 'width': 64, 'height': 64, 'error': None})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        process = subprocess.run([sys.executable, "-c", script, str(output), *inputs], env=ENV, capture_output=True)
        assert process.returncode == -signal.SIGKILL, process.stderr
    else:
        with pytest.raises(ScoringInterrupted) as stopped:
            write_scores(_stopped_after(2, (_result(path, 0.5) for path in inputs)), output)
        assert stopped.value.count == 2
    assert output.read_text(encoding="utf-8") == old  # the old file stays until the replacing run is complete

    plan = plan_resume(output, inputs)
    assert (plan.kept, plan.todo) == (2, inputs[2:])
    # A resumed run stopped again keeps the old file too; its rows join the replacing run's.
    with pytest.raises(ScoringInterrupted):
        write_scores(_stopped_after(3, (_result(path, 0.25) for path in plan.todo)), output, resume=inputs)
    assert output.read_text(encoding="utf-8") == old
    plan = plan_resume(output, inputs)
    assert (plan.kept, plan.todo) == (5, inputs[5:])
    write_scores((_result(path, 0.125) for path in plan.todo), output, resume=inputs)
    rows = read_rows(output)
    assert [row["path"] for row in rows] == inputs
    assert [float(row["score"]) for row in rows] == [0.5] * 2 + [0.25] * 3 + [0.125] * 8
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.csv"]


def _small_files_only() -> None:
    """In the child: files may not grow past 300 bytes, and writing more fails (EFBIG) instead of killing it."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))


def test_a_full_disk_stops_with_one_line_and_resume_continues(work, official_pth, reference):
    output, journal = work / "full.csv", work / ".full.csv.journal.partial"
    args = command(work, official_pth, "images/im_00*.png", "--output", output.name, "--quiet")
    process = subprocess.run(args, cwd=work, env=ENV, capture_output=True, text=True, preexec_fn=_small_files_only)
    assert process.returncode == 2, process.stderr
    assert process.stderr.count("\n") == 1 and "Traceback" not in process.stderr, process.stderr
    assert "cannot write: File too large; the " in process.stderr
    assert f"rows written stay in {journal.name} (--resume continues)" in process.stderr
    assert not output.exists() and journal.exists()
    result = run(work, [*args, "--resume"])
    assert result.returncode == 0, result.stderr
    rows = read_rows(output)
    expected = [f"images/im_{index:03d}.png" for index in range(10)]
    assert [row["path"] for row in rows] == expected
    assert all(abs(score_of(row) - reference[row["path"]]) <= 1e-6 for row in rows)
    assert not journal.exists()


def test_a_file_system_without_locks_gives_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """flock fails with ENOLCK on an NFS mount without a lock daemon: the rows are still written."""
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    output = tmp_path / "out.jsonl"
    check_output(output)
    write_scores([_result("a.png", 0.5)], output)
    assert [row["path"] for row in read_rows(output)] == ["a.png"]
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "qualiclip: warning: cannot lock" in warning and "No locks available" in warning


def test_a_journal_created_by_a_running_run_is_not_called_interrupted(tmp_path):
    """Another run may create the journal between the check and the writer: deleting it would lose its work."""
    import fcntl

    output = tmp_path / "out.csv"
    journal = tmp_path / ".out.csv.journal.partial"
    with open(journal, "w") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the other run holds while it writes
        with pytest.raises(OutputError, match="another run is writing it now") as refused:
            ScoreWriter(output, ["path", "score", "width", "height", "error"])
    assert "delete" not in str(refused.value)
    with pytest.raises(OutputError, match="holds the rows of an interrupted run"):  # once that run is gone
        ScoreWriter(output, ["path", "score", "width", "height", "error"])


def test_rows_appended_to_a_csv_journal_follow_its_header_order(tmp_path):
    """A killed run wrote its header with the pairs in another order: this run's rows must follow that header."""
    output = tmp_path / "out.csv"
    journal = tmp_path / ".out.csv.journal.partial"
    journal.write_text("path,score,width,height,B,A,error\na.png,0.5,64,64,0.75,0.25,\n", encoding="utf-8")
    inputs = ["a.png", "b.png"]
    plan = plan_resume(output, inputs, per_pair=True)
    assert plan.todo == ["b.png"]
    second = SimpleNamespace(path="b.png", score=0.5, width=64, height=64, error=None, pairs={"A": 0.125, "B": 0.875})
    write_scores([second], output, pair_names=["A", "B"], resume=inputs)
    rows = {row["path"]: row for row in read_rows(output)}
    assert (rows["a.png"]["A"], rows["a.png"]["B"]) == ("0.25", "0.75")
    assert (rows["b.png"]["A"], rows["b.png"]["B"]) == ("0.125", "0.875")


def test_a_baselines_scoring_command_counts_kept_files_once_and_stops_with_one_line(tmp_path, capsys):
    """training/score_files.py: an input named twice is kept once; an output damaged during the run is exit 2."""
    from training.score_files import run_score_command, score_parser

    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(make_images(2, 40, 40, seed=5)):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(images / f"{index}.png")
    a, b = str(images / "0.png"), str(images / "1.png")
    output = tmp_path / "out.csv"
    parser = score_parser("baseline", "a test scorer")

    def mean(args):
        return lambda image: float(image.mean())

    assert run_score_command("baseline", parser, mean, [a, "--output", str(output)]) == 0
    assert run_score_command("baseline", parser, mean, [a, b, a, "--output", str(output), "--resume"]) == 0
    assert "resuming " + str(output) + ": 1 kept, 1 to score" in capsys.readouterr().err

    def damaging(args):  # another program writes over the output while the run scores
        def score(image):
            output.write_text("path,score\nc.png\n", encoding="utf-8")
            return float(image.mean())

        return score

    (images / "2.png").write_bytes((images / "0.png").read_bytes())
    argv = [a, str(images / "2.png"), "--output", str(output), "--resume"]
    code = run_score_command("baseline", parser, damaging, argv)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2 and "nothing was replaced" in err[-1], err
