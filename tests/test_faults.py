"""What a hostile or careless user runs into: every case answers with one clear line and loses nothing.

Each test is a regression test for a fault found by probing the package; the training side's cases are in
``test_training_engine.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_images
from PIL import Image
from test_cli import qualiclip_command, run

from qualiclip_metric import CheckpointError, QualiCLIP, QualiCLIPLoss, qualiclip_score
from qualiclip_metric.checkpoint import read_checkpoint, write_layout
from qualiclip_metric.config import validate_prompt_pairs
from qualiclip_metric.score_writer import ScoreWriter

ROOT = Path(__file__).resolve().parents[1]
MISSING_WEIGHTS = "/nonexistent/weights.pth"  # exit code 3 if anything tried to load them


def strict_json(text: str):
    """Python's json accepts NaN and Infinity; the JSON standard does not."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def write_pngs(folder: Path, count: int, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(make_images(count, size, size, seed=300)):
        path = folder / f"image_{index:03d}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
        paths.append(path)
    return paths


# -- the model ------------------------------------------------------------------------------------------


def test_train_mode_of_a_parent_does_not_change_scores(official_pth):
    model = QualiCLIP.from_pretrained(official_pth)
    parent = torch.nn.Sequential(model)
    images = make_images(2, 64, 64, seed=301)
    with torch.no_grad():
        before = model(images)
        parent.train()
        for _ in range(3):
            model(images)
        after = model(images)
    assert not model.training and torch.equal(before, after)
    # Fine-tuning is a deliberate step: then train() means batch statistics, and the tower learns.
    model.set_trainable()
    parent.train()
    assert model.training and all(p.requires_grad for p in model.visual.parameters())
    model.set_trainable(False)
    assert not model.training and not any(p.requires_grad for p in model.visual.parameters())


def test_scores_are_float32_under_a_callers_autocast(model, official_pth):
    images = make_images(2, 64, 64, seed=302)
    loss = QualiCLIPLoss(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, pairs, value = model(images), model.pair_probabilities(images), loss(images)
    assert scores.dtype == pairs.dtype == value.dtype == torch.float32


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("inf"), float("nan")])
def test_nonsense_temperatures_are_refused(official_pth, temperature):
    with pytest.raises(ValueError, match="Argument `temperature` must be a positive finite number"):
        QualiCLIP.from_pretrained(official_pth, temperature=temperature)


@pytest.mark.parametrize("data_range", [float("inf"), "1", 0, True])
def test_nonsense_data_ranges_are_refused(model, data_range):
    with pytest.raises(ValueError, match="Argument `data_range` must be a positive finite number"):
        qualiclip_score(make_images(1, 64, 64), model, data_range=data_range)
    with pytest.raises(ValueError, match="Argument `data_range`"):
        QualiCLIPLoss(model, data_range=data_range)


def test_a_max_size_below_the_network_minimum_is_refused(model):
    with pytest.raises(ValueError, match="Argument `max_size` must be None or an integer of at least 31"):
        QualiCLIPLoss(model, max_size=10)


def test_weights_holding_nan_are_refused(official_pth, tmp_path):
    state = torch.load(official_pth, weights_only=True)
    state["clip_model.visual.layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 tensors hold NaN or Inf values .*layer1.0.conv1.weight"):
        QualiCLIP.from_pretrained(path)


def test_a_legacy_non_zip_pth_loads(official_pth, model, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(torch.load(official_pth, weights_only=True), path, _use_new_zipfile_serialization=False)
    images = make_images(1, 64, 64, seed=303)
    assert torch.equal(QualiCLIP.from_pretrained(path)(images), model(images))


def test_prompt_pair_names_must_not_collide():
    with pytest.raises(ValueError, match="share the name 'a/b/c'"):
        validate_prompt_pairs([("a", "b/c"), ("a/b", "c")])


def test_prompts_longer_than_clip_reads_are_refused(layout_dir):
    long = " ".join(["sharp"] * 80) + "."
    with pytest.raises(ValueError, match="tokens long; CLIP reads at most 77"):
        QualiCLIP.from_pretrained(layout_dir, prompts=[(long, "Blurry.")])


def test_converted_layouts_are_readable_by_other_users(official_pth, tmp_path):
    previous = os.umask(0o022)
    try:
        target = write_layout(read_checkpoint(official_pth), tmp_path / "layout")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in target.iterdir()} == {0o644}


def test_hub_convert_of_a_bare_safetensors_file(layout_dir, tmp_path):
    bare = tmp_path / "model.safetensors"
    shutil.copy(layout_dir / "model.safetensors", bare)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "hub.convert", str(bare), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "holds no text tower" in result.stderr and (tmp_path / "out" / "model.safetensors").is_file()


def test_hub_verify_answers_bad_sources_and_skips_bad_images(official_pth, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    verify = [sys.executable, "-m", "hub.verify"]
    result = subprocess.run([*verify, "hf-hub:a/b/c", str(official_pth)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "hf-hub:ORG/REPO" in result.stderr
    images = tmp_path / "images"
    write_pngs(images, 3)
    (images / "broken.png").write_bytes(b"not an image")
    command = [*verify, str(official_pth), str(official_pth), "--images", str(images)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "broken.png" in result.stderr and "on 3 " in result.stdout


# -- writing results ------------------------------------------------------------------------------------


def test_csv_cells_that_would_run_as_formulas_are_quoted(tmp_path):
    path = tmp_path / "scores.csv"
    writer = ScoreWriter(path, ["path", "score", "error"])
    for name in ("=HYPERLINK(1)", "+1", "-1", "@SUM(1)", "plain.png"):
        writer.write({"path": name, "score": 0.5, "error": None})
    writer.close()
    cells = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    assert cells == ["'=HYPERLINK(1)", "'+1", "'-1", "'@SUM(1)", "plain.png"]


def test_non_finite_scores_are_errors_and_json_stays_json(official_pth, tmp_path):
    state = torch.load(official_pth, weights_only=True)
    state["clip_model.visual.attnpool.c_proj.weight"] *= 1e38  # finite weights whose features overflow
    weights = tmp_path / "overflow.pth"
    torch.save(state, weights)
    images = tmp_path / "images"
    write_pngs(images, 2)
    output = tmp_path / "scores.json"
    result = run(["score", images, "--weights", weights, "--output", output, "--workers", "0", "--per-pair"])
    assert result.returncode == 1, result.stderr
    rows = strict_json(output.read_text())
    assert len(rows) == 2 and all(row["score"] is None and "not finite" in row["error"] for row in rows)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-size", "10"], "--max-size: must be at least 31"),
        (["--temperature", "0"], "--temperature: must be a positive finite number"),
        (["--temperature", "inf"], "--temperature: must be a positive finite number"),
        (["--workers", "-1"], "--workers: must be at least 0"),
        (["--output", "{tmp}/missing/scores.csv"], "the folder {tmp}/missing does not exist"),
        (["--output", "{tmp}"], "--output must end in .csv, .json, .jsonl"),
        (["--output", "{tmp}/folder.csv"], "is a directory"),
        (["--prompt-pair", "a", "b/c", "--prompt-pair", "a/b", "c"], "share the name"),
    ],
)
def test_score_refuses_bad_options_before_loading_anything(tmp_path, arguments, message):
    (tmp_path / "folder.csv").mkdir()
    write_pngs(tmp_path / "images", 1)
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    result = run(["score", tmp_path / "images", "--weights", MISSING_WEIGHTS, *arguments])
    assert result.returncode == 2, result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr and "Traceback" not in result.stderr


def _mos_csv(path: Path, images: list[Path], values: list[str]) -> Path:
    path.write_text("image,mos\n" + "".join(f"{p.name},{v}\n" for p, v in zip(images, values, strict=True)))
    return path


def test_evaluate_refuses_bad_options_and_scores_before_scoring(tmp_path):
    images = write_pngs(tmp_path / "images", 4)
    good = _mos_csv(tmp_path / "good.csv", images, ["1", "2", "3", "4"])
    cases = [
        (["--scores", good, "--test-fraction", "1.5"], "--test-fraction: must be in (0, 1]"),
        (["--scores", good, "--bootstrap", "-5"], "--bootstrap: must be at least 0"),
        (["--scores", good, "--splits", "0"], "--splits: must be at least 1"),
        (["--scores", _mos_csv(tmp_path / "nan.csv", images, ["1", "nan", "3", "4"])], "1 of 4 are not finite"),
        (["--scores", _mos_csv(tmp_path / "same.csv", images, ["2"] * 4)], "all 4 are equal"),
        (["--scores", good, "--output", tmp_path / "missing" / "r.json"], "does not exist"),
        (["--scores", good, "--split-files", tmp_path / "images"], "no train.npy"),
    ]
    for arguments, message in cases:
        result = run(["evaluate", "--images", tmp_path / "images", "--weights", MISSING_WEIGHTS, *arguments])
        assert result.returncode == 2, (arguments, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (arguments, result.stderr)


def test_evaluate_treats_nan_predictions_as_failed(tmp_path):
    images = write_pngs(tmp_path / "images", 5)
    scores = _mos_csv(tmp_path / "mos.csv", images, ["1", "2", "3", "4", "5"])
    predictions = tmp_path / "predictions.csv"
    values = ["0.1", "nan", "0.3", "inf", "0.2"]
    predictions.write_text("path,score\n" + "".join(f"{p},{v}\n" for p, v in zip(images, values, strict=True)))
    report = tmp_path / "report.json"
    command = ["evaluate", "--images", tmp_path / "images", "--scores", scores, "--predictions", predictions]
    result = run([*command, "--bootstrap", "0", "--splits", "2", "--test-fraction", "1", "--output", report])
    assert result.returncode == 1, result.stderr
    saved = strict_json(report.read_text())
    assert (
        saved["images"] == 5
        and saved["scored"] == 3
        and len(saved["failed"]) == 2
        and "not a finite number" in saved["failed"][0]["error"]
    )


def test_download_of_a_malformed_source_exits_2():
    result = run(["download", "hf-hub:a/b/c"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "hf-hub:ORG/REPO" in result.stderr


def test_a_failed_run_leaves_an_older_result_untouched(tmp_path, official_pth):
    write_pngs(tmp_path / "images", 1)
    output = tmp_path / "scores.json"
    output.write_text('["an older result"]\n')
    result = run(["score", tmp_path / "images", "--weights", tmp_path / "missing.pth", "--output", output])
    assert result.returncode == 3 and output.read_text() == '["an older result"]\n'


def test_ctrl_c_prints_one_line_keeps_the_rows_and_the_older_file(official_pth, tmp_path):
    write_pngs(tmp_path / "images", 120, size=96)
    output = tmp_path / "scores.jsonl"
    output.write_text('{"older": true}\n')
    command = [*qualiclip_command(), "score", str(tmp_path / "images"), "--weights", str(official_pth)]
    command += ["--output", str(output), "--workers", "0", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    partial = tmp_path / "scores.jsonl.partial"  # a run that replaces a file writes its rows there
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0 and "interrupted after" in stderr
    assert output.read_text() == '{"older": true}\n'
    rows = [strict_json(line) for line in partial.read_text().splitlines()]
    assert 2 <= len(rows) < 120 and all(row["error"] is None for row in rows)
    assert not list(tmp_path.glob(".scores.jsonl.*"))  # no hidden temporary file is left behind


# -- pyiqa ----------------------------------------------------------------------------------------------


def test_pyiqa_finds_this_package_in_a_fresh_process(official_pth, tmp_path):
    pytest.importorskip("pyiqa")
    script = f"""
import sys, torch, pyiqa
metric = pyiqa.create_metric("qualiclip", pretrained_model_path={str(official_pth)!r}, device="cpu")
print(type(metric.net).__module__, type(metric.net).__name__)
official = pyiqa.create_metric("qualiclip-official", pretrained_model_path={str(official_pth)!r}, device="cpu")
same = pyiqa.create_metric(
    "qualiclip", pretrained_model_path={str(official_pth)!r}, device="cpu", temperature=1.0, logit_scale="fixed"
)
images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
print(float((official(images) - same(images)).abs().max()))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[0] == "qualiclip_metric.pyiqa_plugin QualiCLIPMetricArch" and float(lines[1]) == 0.0
