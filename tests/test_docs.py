"""The documentation site builds with every warning treated as an error (broken links, bad docstrings)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Markdown images and HTML <img> tags; the strict build catches a missing Markdown image, not a bad file or an <img>.
IMAGE_REFERENCE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)|<img\s[^>]*src=[\"']([^\"']+)")


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


def _referenced_pictures() -> dict[Path, list[str]]:
    """Every local image a page shows, with the pages that show it."""
    pictures: dict[Path, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for markdown, html in IMAGE_REFERENCE.findall(page.read_text()):
            target = (markdown or html).split("#")[0]
            if "://" not in target:
                pictures.setdefault((page.parent / target).resolve(), []).append(page.relative_to(DOCS).as_posix())
    return pictures


def _picture_script():
    spec = importlib.util.spec_from_file_location("docs_pictures", DOCS / "pictures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_every_picture_a_page_shows_is_a_small_png():
    pictures = _referenced_pictures()
    assert pictures, "no page shows a picture"
    for path, pages in pictures.items():
        assert path.is_file(), f"{pages} show {path}, which does not exist"
        with Image.open(path) as image:
            assert image.format == "PNG", f"{path} is {image.format}, not PNG"
            image.verify()
        assert path.stat().st_size < 400_000, f"{path} is {path.stat().st_size} bytes: lower its dpi or size"


def test_every_picture_in_docs_images_is_shown_and_can_be_remade():
    pictures = _referenced_pictures()
    script = _picture_script()
    made_here = {picture.filename for picture in script.PICTURES.values()}
    for filename in made_here:
        assert (DOCS / "images" / filename).is_file(), f"docs/pictures.py makes {filename}, which is not committed"
    for filename, maker in script.MADE_ELSEWHERE.items():
        assert filename not in made_here
        if (DOCS / "images" / filename).exists():
            assert filename in (ROOT / maker).read_text(), f"{maker} does not write {filename}"
    for path in sorted((DOCS / "images").iterdir()):
        assert path.name in made_here | set(script.MADE_ELSEWHERE), f"{path.name}: no script makes it"
        assert path.resolve() in pictures, f"docs/images/{path.name} is shown by no page"
