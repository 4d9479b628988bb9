"""hub/ tools: convert, verify and publish, on local files with no network."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_images
from PIL import Image

from hub import convert, publish, verify
from qualiclip_metric import CheckpointError
from qualiclip_metric.checkpoint import read_checkpoint, write_layout
from qualiclip_metric.integrity import sha256_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(official_pth, module_tmp_path):
    output = module_tmp_path / "release"
    assert convert.main([str(official_pth), str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def rated_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rated")
    rows = []
    for index, image in enumerate(make_images(5, 64, 96, seed=90)):
        name = f"image{index}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / name)
        rows.append({"image": f"images/{name}", "mos": 10.0 * index + 5})
    scores = folder.parent / f"{folder.name}-mos.csv"
    with open(scores, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "mos"])
        writer.writeheader()
        writer.writerows(rows)
    return folder, scores


def test_convert_keeps_every_tensor_and_records_provenance(official_pth, converted):
    original = read_checkpoint(official_pth, need_text=True)
    result = read_checkpoint(converted, need_text=True)
    for part in ("image_state", "text_state"):
        a, b = getattr(original, part), getattr(result, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert result.config.provenance["source_sha256"] == sha256_file(official_pth)


def test_convert_refuses_to_overwrite(official_pth, converted, capsys):
    assert convert.main([str(official_pth), str(converted)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_convert_as_a_module_with_an_image_folder(official_pth, rated_images, tmp_path):
    output = tmp_path / "release"
    command = [sys.executable, "-m", "hub.convert", str(official_pth), str(output), "--no-text"]
    result = subprocess.run([*command, "--images", str(rated_images[0])], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "scores identical" in result.stdout
    assert (output / "model.safetensors").is_file() and not (output / "text.safetensors").exists()


def test_verify_identical_checkpoints(official_pth, converted, rated_images, tmp_path):
    images, scores = rated_images
    report_path = tmp_path / "report.json"
    arguments = [str(official_pth), str(converted), "--images", str(images), "--scores", str(scores)]
    assert verify.main([*arguments, "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["match"] and report["scores"]["max_abs_difference"] == 0.0
    expected_tensors = len(read_checkpoint(official_pth).image_state)
    assert report["tensors"]["identical_tensors"] == report["tensors"]["shared_tensors"] == expected_tensors
    assert report["mos"]["images"] == 5 and report["mos"]["reference"] == report["mos"]["candidate"]
    assert -1 <= report["mos"]["reference"]["srcc"] <= 1 and set(report["mos"]["reference"]["split_median"]) >= {"srcc"}


def test_verify_finds_a_changed_tensor(official_pth, tmp_path, capsys):
    changed = read_checkpoint(official_pth)
    changed.image_state = dict(changed.image_state)
    changed.image_state["visual.bn1.bias"] = changed.image_state["visual.bn1.bias"] + 0.5
    candidate = write_layout(changed, tmp_path / "changed", include_text=False)
    assert verify.main([str(official_pth), str(candidate)]) == 1
    output = capsys.readouterr().out
    assert "visual.bn1.bias: 0.5" in output and "MISMATCH" in output


def test_publish_dry_run_lists_exactly_what_would_be_sent(converted, capsys):
    assert publish.publish(converted, "someone/qualiclip", dry_run=True) is None
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == ["config.json", "model.safetensors", "text.safetensors", "README.md"]


def test_model_card(converted):
    config = read_checkpoint(converted).config
    rows = [{"dataset": "CLIVE", "images": 627, "protocol": "zero-shot", "srcc": 0.7251, "plcc": 0.7412}]
    card = publish.render_card("someone/qualiclip", converted, config, rows)
    for needle in (
        "license: cc-by-nc-4.0",
        "CC BY-NC 4.0",
        "## Intended use",
        "## Limitations",
        "@article{agnolucci2024qualityaware",
        "| CLIVE | 627 | zero-shot | 0.725 | 0.741 |",
        "hf-hub:someone/qualiclip@",
        sha256_file(converted / "model.safetensors"),
    ):
        assert needle in card, needle


class RecordingHub:
    """Stands in for the Hub service (not reachable here) and records what would be sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, commit_message):
        files = sorted(path.name for path in Path(folder_path).iterdir())
        self.calls.append(("upload_folder", repo_id, files))
        return SimpleNamespace(oid="c" * 40)


def test_publish_uploads_the_verified_folder(converted, capsys):
    hub = RecordingHub()
    assert publish.publish(converted, "someone/qualiclip", api=hub, private=True) == "c" * 40
    assert hub.calls == [
        ("create_repo", "someone/qualiclip", True, True),
        ("upload_folder", "someone/qualiclip", ["README.md", "config.json", "model.safetensors", "text.safetensors"]),
    ]
    assert f"hf-hub:someone/qualiclip@{'c' * 40}" in capsys.readouterr().out


def test_publish_prints_a_registry_entry_that_serves_the_release(converted, capsys, tmp_path, monkeypatch):
    """The printed entry, added to the registry, loads the upload by name from the cache at the pinned commit."""
    from hubcache import prefill

    from qualiclip_metric import QualiCLIP, pretrained
    from qualiclip_metric.pretrained import HubFile, Pretrained

    commit = publish.publish(converted, "someone/qualiclip", api=RecordingHub())
    out = capsys.readouterr().out
    source = out.split("registry entry for qualiclip_metric/pretrained.py (REGISTRY):\n", 1)[1]
    entries = eval("{" + source + "}", {"HubFile": HubFile, "Pretrained": Pretrained})  # the printed Python source
    entry = entries["qualiclip"]
    assert entry.is_release and entry.weights.revision == commit and entry.text is not None
    assert entry.weights.sha256 == sha256_file(converted / "model.safetensors")
    names = ("config.json", "model.safetensors", "text.safetensors")
    prefill(tmp_path / "hub", "someone/qualiclip", {name: converted / name for name in names}, commit)
    monkeypatch.setitem(pretrained.REGISTRY, "qualiclip", entry)
    images = make_images(2, 64, 64, seed=3)
    with torch.no_grad():
        by_name = QualiCLIP.from_pretrained("qualiclip", cache_dir=tmp_path / "hub")(images)
        by_folder = QualiCLIP.from_pretrained(converted)(images)
    assert torch.equal(by_name, by_folder)
    assert QualiCLIP.from_pretrained("qualiclip", cache_dir=tmp_path / "hub", prompts=[("a", "b")]).pair_names == [
        "a/b"
    ]


def test_publish_refuses_a_tampered_folder(converted, tmp_path):
    import shutil

    copy = shutil.copytree(converted, tmp_path / "copy")
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-10] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    hub = RecordingHub()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        publish.publish(copy, "someone/qualiclip", api=hub)
    assert hub.calls == []


def test_verify_a_regenerated_checkpoint_against_a_published_one_in_the_hub_cache(converted, official_pth, tmp_path):
    """The release question: a pinned Hub revision, read from a pre-filled offline cache, against a local file."""
    import os

    from hubcache import prefill

    commit = "d" * 40
    files = {name: converted / name for name in ("config.json", "model.safetensors", "text.safetensors")}
    prefill(tmp_path / "cache", "someone/qualiclip", files, commit)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "hub.verify", f"hf-hub:someone/qualiclip@{commit}", str(official_pth)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "MATCH" in result.stdout and f"snapshots/{commit}" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hub.verify", "hf-hub:someone/qualiclip@" + "e" * 40, str(official_pth)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert missing.returncode == 2 and "cannot load a checkpoint" in missing.stderr
    assert "someone/qualiclip" in missing.stderr and "Traceback" not in missing.stderr
