"""The documentation site builds with every warning treated as an error (broken links, bad docstrings)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", ROOT / "mkdocs.yml", "--site-dir", site],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("from_pretrained", "QualiCLIPScore", "QualiCLIPLoss", "score_files", "load_checkpoint"):
        assert name in api, f"{name} missing from the API reference"
    assert (site / "benchmarks" / "index.html").exists()
