"""Evaluation metrics, protocols, dataset readers and the ``qualiclip evaluate`` command."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images
from PIL import Image
from scipy import stats
from scipy.io import savemat

from qualiclip_metric.datasets import IQADataset, read_clive_mat, read_csv_dataset
from qualiclip_metric.evaluation import (
    Protocol,
    bootstrap_intervals,
    correlations,
    dataset_splits,
    evaluate_predictions,
    evaluate_regression,
    fit_logistic,
    logistic4,
    random_splits,
)

RNG = np.random.default_rng(7)
PREDICTED = RNG.random(60)
TARGET = 40 * PREDICTED + RNG.normal(0, 8, 60)


def test_correlations_match_scipy():
    result = correlations(PREDICTED, TARGET)
    assert result["srcc"] == pytest.approx(stats.spearmanr(PREDICTED, TARGET).statistic, abs=1e-12)
    assert result["krcc"] == pytest.approx(stats.kendalltau(PREDICTED, TARGET).statistic, abs=1e-12)
    assert result["plcc"] == pytest.approx(stats.pearsonr(PREDICTED, TARGET).statistic, abs=1e-12)
    assert result["plcc_logistic"] >= result["plcc"] - 0.02  # the fit may only help a monotonic relation


def test_logistic_fit_recovers_a_known_curve():
    x = np.linspace(0, 1, 200)
    y = logistic4(x, 80.0, 10.0, 0.45, 0.08) + np.random.default_rng(0).normal(0, 0.5, x.size)
    params = fit_logistic(x, y)
    assert np.allclose(params, [80.0, 10.0, 0.45, 0.08], rtol=0.05, atol=0.5)
    result = correlations(x, y)
    assert result["plcc_logistic"] > 0.999 and result["rmse_logistic"] < 0.6


def test_dmos_targets_are_oriented():
    higher = correlations(PREDICTED, TARGET)
    lower = correlations(PREDICTED, -TARGET, target_higher_is_better=False)
    for name in ("srcc", "krcc", "plcc", "plcc_logistic"):
        assert lower[name] == pytest.approx(higher[name], abs=1e-6)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    intervals = bootstrap_intervals(PREDICTED, TARGET, samples=300, seed=3)
    point = correlations(PREDICTED, TARGET)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high and high - low < 0.5
    assert bootstrap_intervals(PREDICTED, TARGET, samples=300, seed=3) == intervals


def in_memory_dataset(scores, groups=None, higher_is_better=True) -> IQADataset:
    paths = [Path(f"/data/{i}.png") for i in range(len(scores))]
    return IQADataset("toy", paths, np.asarray(scores, dtype=np.float64), higher_is_better, groups)


def test_random_splits_and_the_median_protocol():
    splits = random_splits(60, splits=10, test_fraction=0.2, seed=1)
    assert len(splits) == 10 and all(len(index) == 12 for index in splits)
    assert all(np.array_equal(a, b) for a, b in zip(splits, random_splits(60, seed=1), strict=True))
    groups = [f"ref{i // 6}" for i in range(60)]
    for split in dataset_splits(in_memory_dataset(TARGET, groups), Protocol(seed=2)):
        assert {groups[i] for i in split.train}.isdisjoint({groups[i] for i in split.test})  # no content on both sides
        assert np.array_equal(np.sort(np.concatenate([split.train, split.test])), np.arange(60))
    report = evaluate_predictions(in_memory_dataset(TARGET), PREDICTED, Protocol(seed=1, bootstrap=0))
    per_split = report["splits"]["per_split"]
    assert report["splits"]["median"]["srcc"] == pytest.approx(np.median([s["srcc"] for s in per_split]))
    expected = [stats.spearmanr(PREDICTED[test], TARGET[test]).statistic for test in random_splits(60, seed=1)]
    assert [s["srcc"] for s in per_split] == pytest.approx(expected, abs=1e-12)
    assert report["all_images"]["srcc"] == pytest.approx(stats.spearmanr(PREDICTED, TARGET).statistic, abs=1e-12)


def test_unscored_images_leave_the_splits_of_the_others_unchanged():
    dataset = in_memory_dataset(TARGET)
    predicted = PREDICTED.copy()
    predicted[[3, 17]] = np.nan
    report = evaluate_predictions(dataset, predicted, Protocol(seed=1, bootstrap=0))
    assert report["scored"] == 58 and [row["error"] for row in report["failed"]] == ["not scored"] * 2
    for record, test in zip(report["splits"]["per_split"], random_splits(60, seed=1), strict=True):
        kept = test[~np.isin(test, [3, 17])]
        assert record["test"] == kept.size
        assert record["srcc"] == pytest.approx(stats.spearmanr(PREDICTED[kept], TARGET[kept]).statistic, abs=1e-12)


def test_dmos_datasets_are_oriented_in_the_report():
    mos = evaluate_predictions(in_memory_dataset(TARGET), PREDICTED, Protocol(bootstrap=0))
    dmos = evaluate_predictions(in_memory_dataset(-TARGET, higher_is_better=False), PREDICTED, Protocol(bootstrap=0))
    assert mos["all_images"]["srcc"] > 0.5
    assert dmos["all_images"]["srcc"] == pytest.approx(mos["all_images"]["srcc"], abs=1e-12)
    assert dmos["splits"]["median"]["srcc"] == pytest.approx(mos["splits"]["median"]["srcc"], abs=1e-12)


class NearestNeighbour:
    """The score of the closest training image: a regressor that can only recall what it has seen."""

    def __init__(self, features, target):
        self.features, self.target = features, target

    def predict(self, features):
        distances = ((features[:, None, :] - self.features[None, :, :]) ** 2).sum(-1)
        return self.target[distances.argmin(1)]


def test_content_leaks_through_splits_that_ignore_the_reference_images():
    # 40 contents x 6 distortions; the features and the scores depend on the content alone, so whatever a
    # regressor gets right on unseen contents is luck, and on seen contents it is memory.
    rng = np.random.default_rng(0)
    contents, per_content = 40, 6
    embedding, quality = rng.normal(size=(contents, 16)), rng.normal(size=contents)
    content = np.repeat(np.arange(contents), per_content)
    features = embedding[content] + 0.01 * rng.normal(size=(content.size, 16))
    scores = quality[content] + 0.01 * rng.normal(size=content.size)

    def fit(x, y, groups):
        return NearestNeighbour(x, y)

    leaky = evaluate_regression(in_memory_dataset(scores), features, fit, Protocol(bootstrap=0))
    groups = [f"ref{c}" for c in content]
    grouped = evaluate_regression(in_memory_dataset(scores, groups), features, fit, Protocol(bootstrap=0))
    assert leaky["splits"]["median"]["srcc"] > 0.95 and not leaky["protocol"]["by_content"]
    assert abs(grouped["splits"]["median"]["srcc"]) < 0.3 and grouped["protocol"]["by_content"]


def test_arniqa_split_files(tmp_path):
    train = np.array([[0, 1, 2, 3, 4, 5, -1], [6, 7, 8, 9, 0, 1, 2]])
    test = np.array([[6, 7, 8, 9], [3, 4, 5, -1]])
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "test.npy", test)
    dataset = in_memory_dataset(TARGET[:10])
    splits = dataset_splits(dataset, Protocol(split_files=tmp_path))
    assert [s.train.tolist() for s in splits] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 6, 7, 8, 9]]
    assert [s.test.tolist() for s in splits] == [[6, 7, 8, 9], [3, 4, 5]]
    report = evaluate_predictions(dataset, PREDICTED[:10], Protocol(split_files=tmp_path, bootstrap=0))
    assert report["protocol"]["source"] == "split files" and [r["test"] for r in report["splits"]["per_split"]] == [
        4,
        3,
    ]
    np.save(tmp_path / "test.npy", np.array([[6, 7, 8, 10], [3, 4, 5, -1]]))
    with pytest.raises(ValueError, match="indices must be in 0..9"):
        dataset_splits(dataset, Protocol(split_files=tmp_path))
    np.save(tmp_path / "test.npy", np.array([[5, 7, 8, 9], [3, 4, 5, -1]]))
    with pytest.raises(ValueError, match="split 0 has images in both"):
        dataset_splits(dataset, Protocol(split_files=tmp_path))
    with pytest.raises(FileNotFoundError, match="no train.npy"):
        dataset_splits(dataset, Protocol(split_files=tmp_path / "elsewhere"))


def test_protocol_arguments_are_checked():
    for arguments, message in [
        ({"splits": 0}, "Argument `splits` must be a positive integer"),
        ({"test_fraction": 0.0}, "Argument `test_fraction` must be in"),
        ({"bootstrap": -1}, "Argument `bootstrap` must be a non-negative integer"),
        ({"confidence": 1.0}, "Argument `confidence` must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            Protocol(**arguments)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="differ in length"):
        correlations([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        correlations([1, 2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        correlations([1, 2, float("nan")], [1, 2, 3])


# -- dataset readers ------------------------------------------------------------------------------


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        array = (make_images(1, 48, 64, seed=index)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(array).save(folder / name)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_generic_and_pyiqa_no_reference_layouts(tmp_path):
    names = [f"{i}.png" for i in range(4)]
    write_images(tmp_path / "images", names)
    generic = read_csv_dataset(
        tmp_path / "images", write_csv(tmp_path / "mos.csv", ["image", "mos"], [[n, i] for i, n in enumerate(names)])
    )
    assert [p.name for p in generic.paths] == names and generic.scores.tolist() == [0, 1, 2, 3]
    assert generic.higher_is_better and generic.groups is None
    koniq = write_csv(
        tmp_path / "meta_info_KonIQ10kDataset.csv",
        ["img_name", "mos", "std", "split"],
        [[f"subdir/{n}", 50 + i, 1.0, 0] for i, n in enumerate(names)],  # resolved by file name
    )
    dataset = read_csv_dataset(tmp_path / "images", koniq)
    assert dataset.name == "KonIQ10kDataset" and dataset.scores.tolist() == [50, 51, 52, 53]
    assert all(p.is_file() for p in dataset.paths)


def test_full_reference_layout_is_read_as_distorted_images(tmp_path):
    names = ["a_blur.png", "a_noise.png", "b_blur.png", "b_noise.png"]
    write_images(tmp_path / "images", names)
    rows = [[n[0] + ".png", n, 10 * i] for i, n in enumerate(names)]
    live = read_csv_dataset(
        tmp_path / "images",
        write_csv(tmp_path / "meta_info_LIVEIQADataset.csv", ["ref_name", "dist_name", "mos"], rows),
    )
    assert live.higher_is_better is False  # LIVE carries DMOS under a "mos" column
    assert live.groups == ["a.png", "a.png", "b.png", "b.png"]
    kadid = read_csv_dataset(
        tmp_path / "images",
        write_csv(tmp_path / "meta_info_KADID10kDataset.csv", ["ref_name", "dist_name", "mos"], rows),
    )
    assert kadid.higher_is_better is True
    dmos = read_csv_dataset(
        tmp_path / "images", write_csv(tmp_path / "other.csv", ["ref_name", "dist_name", "dmos"], rows)
    )
    assert dmos.higher_is_better is False


def test_missing_images_and_bad_scores_are_named(tmp_path):
    write_images(tmp_path / "images", ["0.png"])
    missing = write_csv(tmp_path / "m.csv", ["image", "mos"], [["0.png", 1], ["gone.png", 2]])
    with pytest.raises(FileNotFoundError, match="1 of 2 images are missing .*gone.png"):
        read_csv_dataset(tmp_path / "images", missing)
    bad = write_csv(tmp_path / "b.csv", ["image", "mos"], [["0.png", "high"]])
    with pytest.raises(ValueError, match="'mos' must hold numbers"):
        read_csv_dataset(tmp_path / "images", bad)


def test_clive_mat_files(tmp_path):
    names = ["t1.bmp", "10.JPG", "11.JPG"]
    write_images(tmp_path / "Images", names)
    (tmp_path / "Data").mkdir()
    savemat(
        tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": np.array([[n] for n in names], dtype=object)}
    )
    savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[63.9, 25.3, 48.9]])})
    dataset = read_clive_mat(tmp_path)
    assert [p.name for p in dataset.paths] == names
    assert dataset.scores.tolist() == pytest.approx([63.9, 25.3, 48.9]) and dataset.higher_is_better


# -- the command ----------------------------------------------------------------------------------


def test_evaluate_command_writes_report_and_plot(official_pth, tmp_path):
    pytest.importorskip("matplotlib")
    names = [f"{i}.png" for i in range(8)]
    write_images(tmp_path / "images", names)
    scores = write_csv(tmp_path / "mos.csv", ["image", "mos"], [[n, 10 + 7 * i] for i, n in enumerate(names)])
    script = Path(sys.executable).with_name("qualiclip")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]
    command += [
        "evaluate",
        "--images",
        str(tmp_path / "images"),
        "--scores",
        str(scores),
        "--weights",
        str(official_pth),
    ]
    command += ["--plot", str(tmp_path / "plot.png"), "--output", str(tmp_path / "report.json"), "--bootstrap", "50"]
    command += ["--splits", "3", "--test-fraction", "0.5", "--workers", "0", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "srcc" in result.stdout and "split median (3 x 0.5)" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == report["scored"] == 8 and len(report["scores"]) == 8 and report["failed"] == []
    assert set(report["all_images"]) == {"srcc", "krcc", "plcc", "plcc_logistic", "rmse_logistic"}
    assert len(report["splits"]["per_split"]) == 3 and set(report["bootstrap"]["intervals"]) == {"srcc", "krcc", "plcc"}
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_reads_predictions_of_another_scorer(tmp_path):
    names = [f"{i}.png" for i in range(10)]
    write_images(tmp_path / "images", names)
    mos = [10 + 7 * i for i in range(10)]
    scores = write_csv(tmp_path / "mos.csv", ["image", "mos"], [[n, m] for n, m in zip(names, mos, strict=True)])
    # Another scorer's CSV: rows in another order, paths from elsewhere (matched by file name), one failure,
    # one image missing. Its scores rank the images exactly as the MOS except for one swap.
    predicted = {n: float(i) for i, n in enumerate(names)}
    predicted["3.png"], predicted["4.png"] = 4.0, 3.0
    rows = [[f"/elsewhere/{n}", predicted[n], 8, 8, ""] for n in reversed(names[:8])]
    rows.append([f"/elsewhere/{names[8]}", "", "", "", "cannot identify image file"])
    predictions = write_csv(tmp_path / "pred.csv", ["path", "score", "width", "height", "error"], rows)
    script = Path(sys.executable).with_name("qualiclip")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]
    command += ["evaluate", "--images", str(tmp_path / "images"), "--scores", str(scores), "--bootstrap", "0"]
    command += ["--output", str(tmp_path / "report.json"), "--predictions", str(predictions)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1, result.stderr  # some images have no usable score
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 10 and report["scored"] == 8 and report["weights"] == f"predictions {predictions}"
    errors = sorted(row["error"] for row in report["failed"])
    assert errors == ["cannot identify image file", f"no prediction in {predictions}"]
    # SRCC of 0..7 against itself with one adjacent swap: 1 - 6 * 2 / (8 * 63).
    assert report["all_images"]["srcc"] == pytest.approx(1 - 12 / 504)
    bad = write_csv(tmp_path / "bad.csv", ["file", "value"], [["a", 1]])
    result = subprocess.run(command[:-1] + [str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and "needs the columns path and score" in result.stderr


def test_logistic_fit_with_as_few_points_as_parameters_keeps_the_starting_curve():
    from qualiclip_metric.evaluation import correlations, fit_logistic

    x, y = [0.1, 0.5, 0.9], [10.0, 40.0, 30.0]
    assert fit_logistic(x, y).tolist() == [40.0, 10.0, 0.5, pytest.approx(np.std(x))]
    assert correlations(x, y)["srcc"] == pytest.approx(0.5)
