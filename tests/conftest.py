"""Shared fixtures: a random-weight CLIP RN50 in the official QualiCLIP layout (see ``random_clip.py``), and images.

Nothing here downloads.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from random_clip import PROMPT_TEXTS, SEED, build_random_clip, make_images, official_state

__all__ = ["PROMPT_TEXTS", "SEED", "build_random_clip", "make_images"]  # imported by tests from here too

# No test may reach the network: huggingface_hub reads this when it is first imported, after this file.
os.environ["HF_HUB_OFFLINE"] = "1"
# Converted copies and verification stamps go to the assets cache: never the user's during tests.
os.environ["HF_ASSETS_CACHE"] = tempfile.mkdtemp(prefix="qualiclip-test-assets-")


@pytest.fixture(autouse=True)
def _default_sigchld() -> Iterator[None]:
    """Put SIGCHLD back to its default after each test.

    A DataLoader with workers, run in the test process, installs torch's SIGCHLD handler for good; from then on
    every child process that ends (each CLI run by subprocess) interrupts the test process with a signal. On
    virtual machines whose kernel cannot always lay out a signal frame with the AMX register state, that delivery
    ends the whole run in a segmentation fault (SI_KERNEL, before any handler runs). The loaders do not need the
    handler: they notice a dead worker through their own status checks.
    """
    yield
    if signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.fixture(scope="session")
def clip_parts() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return build_random_clip()


@pytest.fixture(scope="module")
def module_tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for one module's shared fixtures, removed with the module: its checkpoints are hundreds of MB."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def official_pth(clip_parts, weights_dir: Path) -> Path:
    """The official/pyiqa ``qualiclip.pth`` layout: prompts_features plus clip_model.<key>."""
    path = weights_dir / "qualiclip.pth"
    torch.save(official_state(*clip_parts), path)
    return path


@pytest.fixture(scope="session")
def quiet_attention_pth(clip_parts, weights_dir: Path) -> Path:
    """The same checkpoint with the attention pool's query projection scaled by 1e-3.

    Its scores hardly depend on the order of summation, so different kernels (the backends, windows scored
    together or one by one) agree to 1e-5 in fp32.
    """
    state = {key: value.clone() for key, value in official_state(*clip_parts).items()}
    for name in ("weight", "bias"):
        state[f"clip_model.visual.attnpool.q_proj.{name}"] *= 1e-3
    path = weights_dir / "quiet_attention.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def layout_dir(official_pth: Path, weights_dir: Path) -> Path:
    """The same weights in our Hub layout (model, text tower and config.json)."""
    from qualiclip_metric.checkpoint import read_checkpoint, write_layout

    return write_layout(read_checkpoint(official_pth), weights_dir / "layout")


@pytest.fixture(scope="session")
def model(official_pth: Path):
    from qualiclip_metric import QualiCLIP

    return QualiCLIP.from_pretrained(official_pth)


@pytest.fixture(scope="session")
def pyiqa_reference(official_pth: Path, clip_parts):
    """pyiqa's own QualiCLIP arch on the same weights, its two downloads redirected to local data.

    pyiqa's CLIP download is replaced by its own ``build_model`` on our random CLIP state dict (its
    file loader only reads TorchScript archives correctly); the QualiCLIP download returns our file.
    """
    pytest.importorskip("pyiqa")
    import pyiqa.archs.qualiclip_arch as arch
    from pyiqa.archs.clip_model import build_model

    def build(temperature: float):
        def load_clip(name: str, device: str):
            return build_model(dict(clip_parts[0])).to(device).float()

        with (
            mock.patch.object(arch, "load", load_clip),
            mock.patch.object(arch, "load_file_from_url", lambda url, *a, **k: str(official_pth)),
        ):
            net = arch.QualiCLIP(model_type="qualiclip", temperature=temperature)
        return net.eval()

    return build


@pytest.fixture(scope="session")
def prompt_learner_files(clip_parts, weights_dir: Path) -> dict[str, Path]:
    """QualiCLIP+ prompt learners in pyiqa's file layout, made by pyiqa's own ``PromptLearner`` class.

    One file per dataset name, each with its own random context (std 0.3, so that the learned prompts
    move scores well away from QualiCLIP's), on the random CLIP of ``clip_parts``.
    """
    pytest.importorskip("pyiqa")
    from pyiqa.archs.clip_model import build_model
    from pyiqa.archs.qualiclip_arch import PromptLearner

    clip = build_model(dict(clip_parts[0])).float()
    files = {}
    for index, key in enumerate(("koniq", "clive", "flive", "spaq")):
        torch.manual_seed(100 + index)
        learner = PromptLearner(clip, PROMPT_TEXTS, n_ctx=16, prompt_specific_ctx=True)
        with torch.no_grad():
            learner.ctx.normal_(0, 0.3)
        files[key] = weights_dir / f"QualiCLIP+_{key}.pth"
        torch.save({"params": {f"prompt_learner.{k}": v.clone() for k, v in learner.state_dict().items()}}, files[key])
    return files


@pytest.fixture(scope="session")
def pyiqa_plus_reference(official_pth: Path, clip_parts):
    """pyiqa's own QualiCLIP+ arch on the random CLIP, with its prompt learner read from a local file."""
    pytest.importorskip("pyiqa")
    import pyiqa.archs.arch_util as arch_util
    import pyiqa.archs.qualiclip_arch as arch
    from pyiqa.archs.clip_model import build_model

    def build(learner: Path, model_type: str = "qualiclip+-spaq", **options):
        def local(url: str, *args, **kwargs) -> str:
            return str(official_pth if url.endswith("/QualiCLIP.pth") else learner)

        with (
            mock.patch.object(arch, "load", lambda name, device: build_model(dict(clip_parts[0])).float()),
            mock.patch.object(arch, "load_file_from_url", local),
            mock.patch.object(arch_util, "load_file_from_url", local),
        ):
            return arch.QualiCLIP(model_type=model_type, pretrained=True, **options).eval()

    return build


@pytest.fixture(scope="session")
def registry_files(official_pth: Path, prompt_learner_files) -> dict[str, tuple[Path, str, int]]:
    """The generated stand-ins for the registry's files: path, sha256 and size by file name."""
    import hashlib

    def sha256(path: Path) -> str:  # hashlib directly: the expected values must not come from the code under test
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    files = {"QualiCLIP.pth": official_pth, **{path.name: path for path in prompt_learner_files.values()}}
    return {name: (path, sha256(path), path.stat().st_size) for name, path in files.items()}


@pytest.fixture(scope="session")
def pinned_hub_cache(registry_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding the generated registry files at the pinned commit (tests only read it)."""
    from hubcache import prefill

    from qualiclip_metric import pretrained

    cache = tmp_path_factory.mktemp("pinned") / "hub"
    prefill(
        cache,
        pretrained.PYIQA_REPO,
        {name: path for name, (path, _, _) in registry_files.items()},
        pretrained.PYIQA_COMMIT,
    )
    return cache


@pytest.fixture
def pinned_registry(registry_files, pinned_hub_cache: Path, tmp_path: Path, monkeypatch) -> Path:
    """The registry pinned to the generated files' hashes, an empty assets cache, and the hub cache holding them
    (also as the default hub cache).

    The generated files stand in for the real ones (which hold the real weights): every registry entry
    keeps its repository, file names and commit, only its sha256 and size become those of the files here.
    Returns the hub cache.
    """
    from hubcache import pin_to

    from qualiclip_metric import pretrained

    pinned = {name: pin_to(entry, registry_files) for name, entry in pretrained.REGISTRY.items()}
    monkeypatch.setattr(pretrained, "REGISTRY", pinned)
    monkeypatch.setenv("HF_ASSETS_CACHE", str(tmp_path / "assets"))
    monkeypatch.setattr(
        "huggingface_hub.constants.HF_HUB_CACHE", str(pinned_hub_cache)
    )  # for callers without cache_dir
    return pinned_hub_cache
