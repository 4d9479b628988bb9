"""Image quality datasets on disk: image paths with their subjective scores.

Readers for a folder plus a CSV (``image,mos`` or pyiqa's ``meta_info_*.csv`` layouts, including the
full-reference sets read as distorted images with their scores) and for CLIVE's official ``.mat`` files.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Datasets whose scores are DMOS (differential MOS): lower is better.
DMOS_DATASETS = frozenset({"live", "csiq"})


@dataclass
class IQADataset:
    """Images and their subjective scores, in file order."""

    name: str
    paths: list[Path]
    scores: np.ndarray
    #: False for DMOS datasets (LIVE, CSIQ): a lower score means a better image.
    higher_is_better: bool = True
    #: Content (reference image) of each image, for splits that keep a content on one side; None for NR sets.
    groups: list[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.scores):
            raise ValueError(f"{self.name}: {len(self.paths)} images but {len(self.scores)} scores")
        if self.groups is not None and len(self.groups) != len(self.paths):
            raise ValueError(f"{self.name}: {len(self.groups)} groups for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)


def _resolve(images: Path, relative: str) -> Path:
    """``images / relative``, or ``images / <file name>`` when only that exists (CSV paths with a prefix)."""
    candidate = images / relative
    by_name = images / Path(relative).name
    return by_name if not candidate.exists() and by_name.exists() else candidate


def _is_dmos_dataset(name: str) -> bool:
    """LIVE and CSIQ, also under pyiqa's names (``LIVEIQADataset``, ``CSIQDataset``)."""
    key = name.lower().removesuffix("dataset").removesuffix("iqa")
    return key in DMOS_DATASETS


def _check_files(name: str, paths: list[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise FileNotFoundError(f"{name}: {len(missing)} of {len(paths)} images are missing ({shown})")


def read_csv_dataset(
    images: str | os.PathLike,
    scores_csv: str | os.PathLike,
    *,
    name: str | None = None,
    higher_is_better: bool | None = None,
    check_files: bool = True,
) -> IQADataset:
    """Read a score file in any of the supported CSV layouts; image paths are relative to ``images``.

    Layouts, recognised by the header: ``image,mos[,...]`` (generic); ``ref_name,dist_name,mos|dmos``
    (pyiqa's full-reference files: the distorted image is scored, the reference names the content); any
    other header is pyiqa's no-reference layout (image path in column 0, score in column 1). Image
    paths are resolved by file name when the CSV's relative path does not exist. ``higher_is_better``
    defaults to False for a ``dmos`` column or a LIVE/CSIQ dataset name.
    """
    images, scores_csv = Path(images), Path(scores_csv)
    name = name or scores_csv.stem.removeprefix("meta_info_")
    with open(scores_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise ValueError(f"{scores_csv}: no scores")
    header, body = [column.strip() for column in rows[0]], [row for row in rows[1:] if any(row)]
    columns = {column.lower(): index for index, column in enumerate(header)}
    groups = None
    if "dist_name" in columns and ("mos" in columns or "dmos" in columns):
        score_column = "dmos" if "dmos" in columns else "mos"
        path_index, score_index = columns["dist_name"], columns[score_column]
        groups = [row[columns["ref_name"]] for row in body] if "ref_name" in columns else None
        dmos = score_column == "dmos"
    elif "image" in columns and "mos" in columns:
        path_index, score_index, dmos = columns["image"], columns["mos"], False
    else:
        path_index, score_index, dmos = 0, 1, header[1].lower() == "dmos"
    try:
        scores = np.array([float(row[score_index]) for row in body], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{scores_csv}: column {header[score_index]!r} must hold numbers ({err})") from err
    paths = [_resolve(images, row[path_index].strip()) for row in body]
    if higher_is_better is None:
        higher_is_better = not (dmos or _is_dmos_dataset(name))
    if check_files:
        _check_files(name, paths)
    return IQADataset(name, paths, scores, higher_is_better, groups, {"scores": str(scores_csv)})


def read_clive_mat(root: str | os.PathLike, *, check_files: bool = True) -> IQADataset:
    """CLIVE from its official release: ``Data/AllImages_release.mat``, ``Data/AllMOS_release.mat``, ``Images/``."""
    from scipy.io import loadmat

    root = Path(root)
    names = loadmat(root / "Data" / "AllImages_release.mat")["AllImages_release"]
    mos = loadmat(root / "Data" / "AllMOS_release.mat")["AllMOS_release"]
    files = [str(np.asarray(item).reshape(-1)[0]) for item in np.asarray(names, dtype=object).reshape(-1)]
    scores = np.asarray(mos, dtype=np.float64).reshape(-1)
    paths = [root / "Images" / file for file in files]
    if check_files:
        _check_files("CLIVE", paths)
    return IQADataset("CLIVE", paths, scores, True, None, {"scores": str(root / "Data")})
