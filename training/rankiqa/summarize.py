"""python -m training.rankiqa.summarize RUNS_DIR OUTPUT.json: the median test correlations over the splits.

Reads the ``--output`` summaries of stage 2 (``mos_split<K>.json``) and of stage 1 (``stage1.json``),
and each split's resolved configuration, so the result file states exactly what was run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from qualiclip_metric.evaluation import median_over_splits


def summarize(runs: Path) -> dict[str, object]:
    splits = sorted(runs.glob("mos_split*.json"), key=lambda p: int(p.stem.removeprefix("mos_split")))
    if not splits:
        raise FileNotFoundError(f"no mos_split*.json in {runs}")
    per_split = []
    for path in splits:
        validation = json.loads(path.read_text(encoding="utf-8"))["validation"]
        per_split.append({"split": int(path.stem.removeprefix("mos_split")), **validation})
    median = median_over_splits(per_split, ("test_srcc", "test_plcc", "test_plcc_logistic"))
    result: dict[str, object] = {"splits": len(per_split), "median": median, "per_split": per_split}
    stage1 = runs / "stage1.json"
    if stage1.is_file():
        result["stage1"] = json.loads(stage1.read_text(encoding="utf-8"))
    for name, folder in (("stage1_config", runs / "stage1"), ("stage2_config_split0", runs / "mos_split0")):
        if (folder / "config.yaml").is_file():
            result[name] = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    result = summarize(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
