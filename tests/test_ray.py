"""Ray Data: the predictor and score_files_with_ray on a real local Ray cluster (two CPUs, no network).

Every result is compared with :func:`qualiclip_metric.batch.score_files` on the same files, the scorer of
``qualiclip score``. Tests that only call the predictor run it in this process; those that need Ray's own
readers, actors or ordering share one cluster, started once for the module by a process of its own and
joined by one driver process (``ray_processes.py``), so that no Ray driver ever lives in the test process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from images import rgb_array, write_odd_images
from PIL import Image
from ray_processes import SAME_PIXELS, ordered_names

from qualiclip_metric.batch import score_files

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from qualiclip_metric.ray import QualiCLIPPredictor, score_files_with_ray  # noqa: E402

#: Ray Data's own configuration reads its deprecated settings when a dataset first runs.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
TOLERANCE = 1e-6
#: The head and the driver of the cluster tests: processes of their own (see that file for why).
PROCESSES = Path(__file__).with_name("ray_processes.py")
#: For the head, the driver and the command: no usage report to Ray's servers, and the token authentication
#: that ray.init turns on for the cluster it starts (the token is in ~/.ray/auth_token).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs and a 200 MB object store, held by a process of its own; its address."""
    head = subprocess.Popen(
        [sys.executable, str(PROCESSES), "head"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **RAY_ENV},
    )
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        head.wait(timeout=120)


@pytest.fixture(scope="module")
def driven(cluster: str, folder: Path, official_pth: Path) -> dict:
    """The cluster cases of ray_processes.py, run by a driver process that joins the cluster."""
    command = [sys.executable, str(PROCESSES), "drive", cluster, str(folder), str(official_pth)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **RAY_ENV}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def folder(module_tmp_path: Path) -> Path:
    """Files of every mode (one of another size, one EXIF-rotated), a truncated JPEG and a text file."""
    path = module_tmp_path / "images"
    write_odd_images(path)
    Image.fromarray(rgb_array(40, 56, seed=3)).save(path / "small.png")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Scoring in this process on one thread, as each actor does: on a busy machine, two threads that wait for
    each other cost seconds a call. Restored for the modules that follow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(folder: Path, model, one_thread) -> dict[str, object]:
    """``score_files``' result for every file of the folder and a missing one, by file name."""
    paths = [*sorted(folder.iterdir()), folder / "missing.png"]
    return {Path(r.path).name: r for r in score_files(paths, model, batch_size=1, per_pair=True)}


@pytest.fixture(scope="module")
def predictor(official_pth: Path, one_thread) -> QualiCLIPPredictor:
    """One predictor, called in this process as a Ray actor calls it."""
    return QualiCLIPPredictor(str(official_pth), device="cpu", per_pair=True)


def objects(items: list) -> np.ndarray:
    """A one-dimensional object array, as Ray gives a column of arrays of different shapes."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


def check_rows(rows: list[dict], reference: dict, names: list[str], pair_names=()) -> None:
    """Rows (in ``names`` order) carry score_files' scores, sizes, pair probabilities and errors."""
    assert len(rows) == len(names)
    for row, name in zip(rows, names, strict=True):
        expected = reference[name]
        assert row["error"] == expected.error, name
        if expected.error is None:
            assert abs(row["score"] - expected.score) < TOLERANCE, name
            assert (row["width"], row["height"]) == (expected.width, expected.height), name
            for pair in pair_names:
                assert abs(row[pair] - expected.pairs[pair]) < TOLERANCE, (name, pair)
        else:
            assert row["score"] is None and all(row[pair] is None for pair in pair_names), name


# -- the predictor, as an actor calls it ----------------------------------------------------------


def file_batch(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """A batch as ``ray.data.read_binary_files(include_paths=True)`` gives it: paths and file contents."""
    paths = [str(folder / name) for name in names]
    contents = [Path(path).read_bytes() for path in paths]
    return {"path": np.array(paths, dtype=object), "bytes": np.array(contents, dtype=object)}


def test_every_batch_format_gives_the_same_table(predictor, folder, reference):
    names = ["rgb.png", "not_an_image.png", "rotated.jpg", "truncated.jpg", "deep16.png", "photo.jpg"]
    batch = file_batch(folder, names)
    table = predictor(batch)
    assert isinstance(table, pa.Table)
    pair_names = list(predictor.model.pair_names)
    assert table.column_names == ["path", "score", "width", "height", *pair_names, "error"]  # no bytes
    assert str(table.schema.field("score").type) == "double" and str(table.schema.field("error").type) == "string"
    check_rows(table.to_pylist(), reference, names, pair_names)
    small = file_batch(folder, ["rgb.png", "not_an_image.png"])
    expected = predictor(small)
    assert predictor(pd.DataFrame(small)).equals(expected)
    assert predictor(pa.table({name: values.tolist() for name, values in small.items()})).equals(expected)


def test_paths_and_arrays_score_as_the_files(predictor, folder, reference):
    names = ["gray.png", "rgb.png", "small.png", "truncated.jpg"]
    paths = predictor({"path": np.array([str(folder / name) for name in names] + [str(folder / "missing.png")])})
    check_rows(paths.to_pylist(), reference, [*names, "missing.png"], predictor.model.pair_names)
    layouts = ["rgb.png", "gray.png", "rgba.png", "deep16.png"]  # (H, W, 3), (H, W), (H, W, 4), uint16 (H, W)
    arrays = [np.asarray(Image.open(folder / name)) for name in layouts]
    assert arrays[-1].dtype == np.uint16
    rows = predictor({"image": objects([*arrays, arrays[1][..., None]])}).to_pylist()
    check_rows(rows, reference, [*layouts, "gray.png"], predictor.model.pair_names)
    same_size = np.stack([np.asarray(Image.open(folder / "rgb.png")), rgb_array()])  # one (N, H, W, 3) array
    rows = predictor({"image": same_size, "path": np.array(["a", "b"])}).to_pylist()
    assert [row["path"] for row in rows] == ["a", "b"] and rows[0]["score"] == rows[1]["score"]


def test_rows_that_cannot_be_read_are_errors_and_the_others_are_scored(predictor, folder, reference):
    good = np.asarray(Image.open(folder / "rgb.png"))
    images = [good, good.astype(np.float32), good[..., :2], good[:10, :10], None, good]
    rows = predictor({"image": objects(images)}).to_pylist()
    assert [row["error"] is None for row in rows] == [True, False, False, False, False, True]
    assert rows[1]["error"].startswith("image array: image arrays must be uint8") and "float32" in rows[1]["error"]
    assert "(48, 64, 2)" in rows[2]["error"]
    assert rows[3]["error"] == "image array: 10 x 10 is smaller than the 31 x 31 minimum of the network"
    assert rows[4]["error"] == "image array: no image in this row"
    for row in (rows[0], rows[5]):
        assert abs(row["score"] - reference["rgb.png"].score) < TOLERANCE
    named = predictor({"bytes": np.array([b"", b"GIF89a..."], dtype=object), "path": np.array(["s3://b/x", None])})
    assert [row["error"] for row in named.to_pylist()] == [
        "s3://b/x: not a recognised image file",
        "image bytes: not a recognised image file",
    ]
    with pytest.raises(ValueError, match=r"must have a column 'image', 'bytes' or 'path', but has \['id'\]"):
        predictor({"id": np.arange(3)})


def test_other_columns_are_kept_and_an_empty_batch_has_the_columns(official_pth, folder, one_thread):
    predictor = QualiCLIPPredictor(official_pth, device="cpu", keep_inputs=True, max_size=48)
    batch = {**file_batch(folder, ["rgb.png"]), "id": np.array([7]), "score": np.array([-1.0])}
    table = predictor(batch)
    assert table.column_names == ["path", "bytes", "id", "score", "width", "height", "error"]
    row = table.to_pylist()[0]
    assert row["id"] == 7 and row["bytes"] == batch["bytes"][0] and row["width"] == 64 and 0 < row["score"] < 1
    empty = predictor({"path": np.array([], dtype=object)})
    assert empty.num_rows == 0 and empty.column_names == ["path", "score", "width", "height", "error"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "Argument `batch_size` must be a positive integer or None, but got 0"),
        ({"max_size": 8}, "Argument `max_size` must be None or an integer of at least 31"),
        ({"max_pixels": 10}, "Argument `max_pixels` must be None or an integer of at least 961, but got 10"),
        ({"threads": 0}, "Argument `threads` must be a positive integer or None"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(options, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        QualiCLIPPredictor(tmp_path / "no-such-weights.pth", **options)


def test_score_files_with_ray_refuses_bad_options_before_joining_a_cluster():
    with pytest.raises(ValueError, match="Argument `files_per_task` must be a positive integer, but got 0"):
        next(score_files_with_ray(["a.png"], files_per_task=0))
    with pytest.raises(ValueError, match="Argument `device` must not name a GPU.*'cuda:1'"):
        next(score_files_with_ray(["a.png"], device="cuda:1"))
    with pytest.raises(ValueError, match="Argument `actors` must be a positive integer or None"):
        next(score_files_with_ray(["a.png"], actors=0))
    assert list(score_files_with_ray([])) == []  # nothing to score: no cluster joined


def test_importing_the_integration_imports_no_ray():
    code = (
        "import sys\n"
        "import qualiclip_metric\n"
        "assert 'qualiclip_metric.ray' not in sys.modules\n"
        "from qualiclip_metric.ray import QualiCLIPPredictor, score_files_with_ray\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'ray', 'pyarrow', 'pandas'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- on the cluster -------------------------------------------------------------------------------


def test_map_batches_over_read_binary_files(driven, folder, reference):
    rows = sorted(driven["read_binary_files"], key=lambda row: row["path"])
    names = [Path(row["path"]).name for row in rows]
    assert names == sorted(path.name for path in folder.iterdir())
    pair_names = [name for name in rows[0]["columns"] if "/" in name]
    assert len(pair_names) == 7 and "bytes" not in rows[0]["columns"]
    check_rows(rows, reference, names, pair_names)


def test_map_batches_over_read_images(driven, reference):
    rows = sorted(driven["read_images"], key=lambda row: row["path"])
    assert rows[0]["columns"] == ["path", "score", "width", "height", "error"]
    check_rows(rows, reference, sorted(SAME_PIXELS))


def test_score_files_with_ray_yields_file_scores_in_input_order(driven, folder, reference):
    names = ordered_names(folder)
    assert "missing.png" in names and names.count("rgb.png") == 2
    results = driven["score_files_with_ray"]
    assert [result["index"] for result in results] == list(range(len(names)))
    assert [result["path"] for result in results] == [str(folder / name) for name in names]
    pair_names = list(reference["rgb.png"].pairs)
    for result, name in zip(results, names, strict=True):
        expected = reference[name]
        assert result["error"] == expected.error
        assert (result["width"], result["height"]) == (expected.width, expected.height)
        if expected.error is None:
            assert abs(result["score"] - expected.score) < TOLERANCE
            assert list(result["pairs"]) == pair_names
            assert max(abs(result["pairs"][p] - expected.pairs[p]) for p in pair_names) < TOLERANCE
    assert driven["still_joined"]  # the cluster it found is left running


# -- the command ----------------------------------------------------------------------------------


def qualiclip(*args, env=None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("qualiclip")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]
    environment = {**os.environ, **RAY_ENV, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=environment)


def test_the_command_on_the_cluster_writes_what_a_local_run_writes(cluster, folder, official_pth, tmp_path):
    """The same file, byte for byte: rows, order, columns, scores (one thread each), errors, exit code."""
    common = ["score", folder, "--weights", official_pth, "--per-pair", "--threads", "1"]
    local = qualiclip(*common, "--workers", "0", "--output", tmp_path / "local.csv")
    on_ray = qualiclip(*common, "--ray", cluster, "--output", tmp_path / "ray.csv")
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr  # the truncated file and the text file
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert len((tmp_path / "ray.csv").read_text().splitlines()) == 1 + len(list(folder.iterdir()))

    def failures(result):
        return [line for line in result.stderr.splitlines() if line.startswith("qualiclip: failed:")]

    assert len(failures(on_ray)) == 2 and failures(on_ray) == failures(local)
    assert "scored 10 of 12 images" in on_ray.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--ray", "auto"], {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "--ray cannot run under torchrun"),
        (["--ray", "auto", "--device", "cuda:1"], {}, "--device cuda:1 with --ray: Ray gives each actor its GPU"),
    ],
)
def test_the_command_refuses_what_ray_cannot_do(extra, env, message, folder, tmp_path):
    result = qualiclip("score", folder, *extra, "--output", tmp_path / "scores.csv", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"qualiclip: {message}") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "scores.csv").exists()


def test_an_error_of_the_cluster_ends_the_command_with_one_line():
    from ray.exceptions import RaySystemError

    from qualiclip_metric.cli.common import CommandError
    from qualiclip_metric.cli.score import _cluster_errors_stop

    def results():
        yield "first"
        raise RaySystemError("Traceback (most recent call last):\n  ...\nOSError: /data/w.pth: no such file")

    stream = _cluster_errors_stop(results(), "auto")
    assert next(stream) == "first"
    with pytest.raises(CommandError, match=r"^--ray auto: the cluster failed: OSError: /data/w.pth: no such file$"):
        next(stream)
