"""The ``qualiclip`` console script, run as a subprocess with the network off."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hubcache import PINNED_CLI, prefill
from images import write_odd_images

from qualiclip_metric import load_image
from qualiclip_metric.runtimes import fastest_configuration

REPO = "someone/qualiclip-cli"
GOOD = ["cmyk.jpg", "deep16.png", "gray.png", "gray_alpha.png", "palette.png", "photo.jpg", "rgb.png", "rgba.png"]
GOOD += ["rotated.jpg"]
BAD = ["not_an_image.png", "truncated.jpg"]


def qualiclip_command() -> list[str]:
    script = Path(sys.executable).with_name("qualiclip")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qualiclip_metric"]


def run(args, env_extra=None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([*qualiclip_command(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def folder(module_tmp_path):
    path = module_tmp_path / "images"
    write_odd_images(path)
    return path


@pytest.fixture(scope="module")
def hub_cache(layout_dir, module_tmp_path):
    cache = module_tmp_path / "hub-cache"
    files = {name: layout_dir / name for name in ("config.json", "model.safetensors", "text.safetensors")}
    prefill(cache, REPO, files, "a" * 40, refs=("main", "v1"))
    return cache


def test_score_folder_with_good_corrupt_and_odd_images(folder, official_pth, model, tmp_path):
    output = tmp_path / "scores.jsonl"
    result = run(
        ["score", folder, "--weights", official_pth, "--output", output, "--workers", "2", "--batch-size", "3"]
    )
    assert result.returncode == 1, result.stderr  # some inputs failed
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == sorted(GOOD + BAD)
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in GOOD:
        assert by_name[name]["error"] is None and 0 < by_name[name]["score"] < 1
    assert "not a recognised image file" in by_name["not_an_image.png"]["error"]
    assert "truncated" in by_name["truncated.jpg"]["error"]
    with torch.no_grad():
        expected = model(load_image(folder / "rgb.png")[None]).item()
    assert abs(by_name["rgb.png"]["score"] - expected) < 1e-5
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == (48, 64)
    assert "scored 9 of 11 images" in result.stderr and "2 failed" in result.stderr
    assert "truncated.jpg" in result.stderr


def test_csv_to_stdout_and_json_with_pairs(folder, official_pth, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for name in ("rgb.png", "photo.jpg"):
        shutil.copy(folder / name, good / name)
    result = run(["score", good, "--weights", official_pth, "--workers", "0", "--per-pair", "--quiet"])
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [Path(r["path"]).name for r in rows] == ["photo.jpg", "rgb.png"]
    assert "Good photo./Bad photo." in rows[0] and rows[0]["error"] == ""
    assert result.stderr == ""
    output = tmp_path / "scores.json"
    assert run(["score", good, "--weights", official_pth, "--output", output, "--per-pair"]).returncode == 0
    document = json.loads(output.read_text())
    assert len(document) == 2 and len([k for k in document[0] if "/" in k and k != "path"]) == 7
    assert abs(float(rows[1]["score"]) - document[1]["score"]) < 1e-7


def run_pinned(args, registry_files, env_extra=None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process, with the registry pinned to the generated files (see hubcache)."""
    pins = {name: [str(path), sha256, size] for name, (path, sha256, size) in registry_files.items()}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "QUALICLIP_TEST_DIR": str(Path(__file__).parent),
        "QUALICLIP_TEST_PINS": json.dumps(pins),
        **(env_extra or {}),
    }
    command = [sys.executable, "-c", PINNED_CLI, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_default_weights_info_download_and_the_air_gap(folder, pinned_hub_cache, registry_files, tmp_path):
    env = {"HF_HUB_CACHE": str(pinned_hub_cache), "HF_ASSETS_CACHE": str(tmp_path / "assets")}
    image = folder / "rgb.png"
    default = run_pinned(["score", image, "--quiet"], registry_files, env)  # test_pretrained checks the numbers
    assert default.returncode == 0, default.stderr
    info = run_pinned(["info"], registry_files, env)
    assert info.returncode == 0 and str(pinned_hub_cache) in info.stdout
    table = {line.split()[0]: line.split()[1:3] for line in info.stdout.splitlines() if line.startswith("  qualiclip")}
    assert table["qualiclip"] == ["yes", "yes"]  # converted and verified by the first score
    assert table["qualiclip+-spaq"] == ["yes", "no"]  # its files are in the hub cache, its prompt learner unhashed

    # Where there is network (here: the pre-filled cache), write self-contained folders ...
    bundle = tmp_path / "bundle"
    download = run_pinned(["download", "qualiclip", "qualiclip+-spaq", "--to", bundle, "--text"], registry_files, env)
    assert download.returncode == 0, download.stderr
    assert sorted(path.name for path in bundle.iterdir()) == ["qualiclip", "qualiclip+-spaq"]
    assert (bundle / "qualiclip" / "text.safetensors").is_file()  # --text: custom prompts work offline too
    assert not (bundle / "qualiclip+-spaq" / "text.safetensors").exists()  # learned prompts need no text tower
    again = run_pinned(["download", "qualiclip", "--to", bundle], registry_files, env)
    assert again.returncode == 0 and "already there, verified" in again.stdout
    # ... and load them with the plain CLI, no registry patch, an empty cache and no network.
    air_gap = {"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_ASSETS_CACHE": str(tmp_path / "empty-assets")}
    copied = run(["score", image, "--quiet", "--weights", bundle / "qualiclip"], air_gap)
    assert copied.returncode == 0 and copied.stdout == default.stdout
    plus = run_pinned(["score", image, "--quiet", "--weights", "qualiclip+-spaq"], registry_files, env)
    plus_copied = run(["score", image, "--quiet", "--weights", bundle / "qualiclip+-spaq"], air_gap)
    assert plus.returncode == 0 and plus_copied.returncode == 0 and plus_copied.stdout == plus.stdout
    assert plus.stdout != default.stdout


def test_download_never_replaces_a_folder_that_holds_something_else(registry_files, pinned_hub_cache, tmp_path):
    env = {"HF_HUB_CACHE": str(pinned_hub_cache), "HF_ASSETS_CACHE": str(tmp_path / "assets")}
    (tmp_path / "bundle" / "qualiclip").mkdir(parents=True)
    (tmp_path / "bundle" / "qualiclip" / "notes.txt").write_text("mine")
    result = run_pinned(["download", "qualiclip", "qualiclip+-clive", "--to", tmp_path / "bundle"], registry_files, env)
    assert result.returncode == 3 and "holds other weights; nothing was replaced" in result.stderr
    assert (tmp_path / "bundle" / "qualiclip" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "bundle" / "qualiclip+-clive" / "config.json").is_file()  # the other name was still written


def test_download_to_a_folder_of_other_weights_is_refused(official_pth, tmp_path):
    """Same source path, new content: the folder written before is kept, not taken for the new weights."""
    from qualiclip_metric.checkpoint import read_checkpoint, write_layout

    source = tmp_path / "weights"
    checkpoint = read_checkpoint(official_pth)
    write_layout(checkpoint, source)
    bundle = tmp_path / "bundle"
    assert run(["download", source, "--to", bundle]).returncode == 0
    written = (bundle / "weights" / "model.safetensors").read_bytes()
    checkpoint.image_state = {
        **checkpoint.image_state,
        "visual.bn1.bias": checkpoint.image_state["visual.bn1.bias"] + 1,
    }
    write_layout(checkpoint, source, overwrite=True)
    result = run(["download", source, "--to", bundle])
    assert result.returncode == 3 and "holds other weights; nothing was replaced" in result.stderr
    assert (bundle / "weights" / "model.safetensors").read_bytes() == written
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    usage = run(["download", source, "--to", not_a_folder])
    assert usage.returncode == 2 and "not a folder" in usage.stderr


def test_hub_sources_from_an_offline_cache(folder, hub_cache):
    env = {"HF_HUB_CACHE": str(hub_cache)}
    result = run(["score", folder / "rgb.png", "--quiet", "--weights", f"hf-hub:{REPO}"], env)
    assert result.returncode == 0, result.stderr
    pinned = run(["score", folder / "rgb.png", "--quiet", "--weights", f"hf-hub:{REPO}@v1"], env)
    assert pinned.returncode == 0 and pinned.stdout == result.stdout
    info = run(["info", "--weights", f"hf-hub:{REPO}"], env)
    assert info.returncode == 0 and "models--someone--qualiclip-cli" in info.stdout
    download = run(["download", f"hf-hub:{REPO}", "--text"], env)
    assert download.returncode == 0 and f"hf-hub:{REPO}" in download.stdout


def test_missing_weights_exit_code_and_message(folder, tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ASSETS_CACHE": str(tmp_path / "assets")}
    result = run(["score", folder / "rgb.png"], env)
    assert result.returncode == 3
    assert "Sources tried" in result.stderr and "IQA-PyTorch-Weights@9c1c305ce9d0" in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "Retrying" not in result.stderr


def test_usage_errors(folder, official_pth, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["score", empty, "--weights", official_pth]).returncode == 2
    bad_output = run(["score", folder, "--weights", official_pth, "--output", tmp_path / "x.xlsx"])
    assert bad_output.returncode == 2 and "--output" in bad_output.stderr
    assert run(["score", folder, "--batch-size", "0"]).returncode == 2
    assert run([]).returncode == 2


def test_score_under_torchrun_merges_the_shards_in_input_order(folder, official_pth, tmp_path):
    """Two gloo processes: one output with every file once, in input order, with the single-process scores."""
    single, merged = tmp_path / "single.jsonl", tmp_path / "merged.jsonl"
    common = ["score", folder, "--weights", official_pth, "--workers", "0", "--quiet", "--per-pair"]
    # One thread in both runs, as torchrun gives each rank: the fp32 sums then run in the same order.
    one_thread = {"OMP_NUM_THREADS": "1"}
    assert run([*common, "--output", single], one_thread).returncode == 1  # the folder holds corrupt files
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, "-m", "qualiclip_metric", *map(str, common), "--output", str(merged)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode != 0  # rank 0 reports the corrupt files, as one process does
    assert "failed" in result.stderr
    expected = [json.loads(line) for line in single.read_text().splitlines()]
    rows = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [row["path"] for row in rows] == [row["path"] for row in expected]  # no gaps, no repeats, same order
    assert len(rows) == len(GOOD + BAD) and len({row["path"] for row in rows}) == len(rows)
    for row, reference in zip(rows, expected, strict=True):
        assert (row["error"] is None) == (reference["error"] is None), row["path"]
        if reference["error"] is None:
            assert row["score"] == pytest.approx(reference["score"], abs=1e-6), row["path"]
            assert row["Sharp image./Blurry image."] == pytest.approx(reference["Sharp image./Blurry image."], abs=1e-6)


def test_fast_scores_agree_with_the_library(folder, official_pth, model, tmp_path):
    output = tmp_path / "fast.csv"
    result = run(["score", folder, "--weights", official_pth, "--fast", "--output", output, "--workers", "0", "-q"])
    assert result.returncode == 1, result.stderr  # the two bad files
    rows = {Path(r["path"]).name: r for r in csv.DictReader(output.open())}
    # --fast picks by the machine: fp32 (test_fused's tolerance) or, where AMX has bf16 tiles, OpenVINO in bf16,
    # which fastest_configuration promises to keep within 3e-3 of the fp32 scores.
    tolerance = 5e-5 if fastest_configuration("cpu").precision == "fp32" else 3e-3
    for name in ("rgb.png", "photo.jpg", "gray.png"):
        with torch.no_grad():
            expected = model(load_image(folder / name)[None]).item()
        assert abs(float(rows[name]["score"]) - expected) < tolerance, (name, rows[name]["score"], expected)


def test_a_file_the_cluster_loses_or_returns_twice_stops_with_one_line_and_exit_2():
    """--ray: the results come back in input order; a file returned twice or never is the cluster's error."""
    pytest.importorskip("ray")
    from qualiclip_metric.batch import FileScore
    from qualiclip_metric.cli.common import CommandError
    from qualiclip_metric.cli.score import _cluster_errors_stop
    from qualiclip_metric.ray import _in_order

    first = FileScore(0, "a.png", 0.5, 64, 64)
    for results, message in (([first, first], "twice or unasked"), ([first], "no result for file number 1 of 2")):
        with pytest.raises(CommandError, match=message) as stop:
            list(_cluster_errors_stop(_in_order(iter(results), 2), "auto"))
        assert stop.value.code == 2 and "\n" not in stop.value.message
