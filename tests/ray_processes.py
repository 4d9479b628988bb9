"""Ray's processes for tests/test_ray.py: a head that holds a local cluster, and a driver that joins it.

Both run outside the test process. A Ray driver keeps native threads and its own signal handlers in its
process after ``ray.shutdown()``; kept out of the test process, they cannot take down the tests that run
after it. ``python ray_processes.py head`` starts a cluster of two CPUs, prints its address and keeps it
until its standard input closes; ``python ray_processes.py drive ADDRESS FOLDER WEIGHTS`` runs the cluster
cases below and prints their rows as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

#: Files that ray.data.read_images(mode="RGB") decodes to the pixels load_image decodes (no EXIF, 8 bits).
SAME_PIXELS = ["cmyk.jpg", "gray.png", "palette.png", "photo.jpg", "rgb.png", "rgba.png", "small.png"]
#: The inputs of score_files_with_ray: out of order, repeated, one missing.
ORDERED = ["truncated.jpg", "small.png", "*", "rgb.png", "missing.png", "photo.jpg"]


def head() -> None:
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    print(context.address_info["address"], flush=True)
    sys.stdin.read()
    ray.shutdown()


def ordered_names(folder: Path) -> list[str]:
    every = sorted([*(path.name for path in folder.iterdir()), "missing.png"])
    return [name for item in ORDERED for name in (every if item == "*" else [item])]


def drive(address: str, folder: Path, weights: str) -> dict[str, object]:
    import ray

    from qualiclip_metric.ray import QualiCLIPPredictor, score_files_with_ray

    ray.init(address=address, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    binary = ray.data.read_binary_files(str(folder), include_paths=True).map_batches(
        QualiCLIPPredictor,
        fn_constructor_kwargs={"weights": weights, "device": "cpu", "per_pair": True},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_size=4,
    )
    images = ray.data.read_images([str(folder / name) for name in SAME_PIXELS], mode="RGB", include_paths=True)
    decoded = images.map_batches(
        QualiCLIPPredictor,
        fn_constructor_kwargs={"weights": weights, "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_size=3,
    )
    paths = [folder / name for name in ordered_names(folder)]
    results = score_files_with_ray(paths, weights=weights, device="cpu", actors=2, files_per_task=3, per_pair=True)
    return {
        "read_binary_files": [
            {key: value for key, value in row.items() if key != "bytes"} | {"columns": list(row)}
            for row in binary.take_all()
        ],  # fmt: skip
        "read_images": [{**row, "columns": list(row)} for row in decoded.take_all()],
        "score_files_with_ray": [dataclasses.asdict(result) for result in results],
        "still_joined": ray.is_initialized(),
    }


if __name__ == "__main__":
    if sys.argv[1] == "head":
        head()
    else:
        json.dump(drive(sys.argv[2], Path(sys.argv[3]), sys.argv[4]), sys.stdout, default=lambda value: value.item())
