"""Loss benchmark: forward+backward time and memory of QualiCLIPLoss against pyiqa's ``as_loss``.

    python benchmarks/bench_loss.py                      # CPU, batch 4 x 3 x 256 x 256
    python benchmarks/bench_loss.py --device cuda

Each implementation runs in its own process on the same random-weight checkpoint (or ``--weights``).
Memory is the activation memory autograd keeps for the backward pass (unique storages saved by the
forward), which does not depend on the allocator; on CUDA the allocator's peak is reported too. The
CPU resident-set growth of the first pass is recorded as well, but it mostly reflects how much freed
heap the process had left over from loading, so it is not used for the comparison. Time is the median
of ``--repeats`` passes after a warm-up. Both sides use temperature 2 (pyiqa's default), so values
and input gradients are compared: QualiCLIPLoss = 1 - pyiqa's value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import ROOT, machine, pyiqa_downloads_from, random_official_checkpoint, write_result

IMPLEMENTATIONS = {"qualiclip-metric": "QualiCLIPLoss", "pyiqa": "pyiqa.create_metric(..., as_loss=True)"}


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(fn) -> int:
    """Largest resident-memory growth while ``fn`` runs, sampled from a thread every millisecond."""
    baseline, peak, running = resident_bytes(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        running[0] = False
        sampler.join()
    return max(peak[0], resident_bytes()) - baseline


def saved_for_backward(fn) -> int:
    """Bytes of the unique tensor storages autograd saves while ``fn`` runs a forward pass."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def build_loss(name: str, weights: Path, device: str) -> torch.nn.Module:
    if name == "qualiclip-metric":
        from qualiclip_metric import QualiCLIPLoss

        return QualiCLIPLoss(weights, temperature=2.0).to(device)
    import pyiqa

    import qualiclip_metric  # noqa: F401  (keeps pyiqa's own implementation reachable as "qualiclip-pyiqa")

    with pyiqa_downloads_from(weights):
        return pyiqa.create_metric("qualiclip-pyiqa", as_loss=True, device=device)


def worker(name: str, weights: Path, shape: list[int], repeats: int, device: str, out: Path) -> None:
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    loss_fn = build_loss(name, weights, device)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        x = images.clone().requires_grad_(True)
        value = loss_fn(x)
        value.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return value.detach(), x.grad

    result: dict[str, object] = {"cuda_peak_bytes": None, "rss_growth_bytes": None}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        value, grad = step()
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() - start
    else:
        outputs: dict[str, torch.Tensor] = {}
        result["rss_growth_bytes"] = peak_growth(lambda: outputs.update(zip(("v", "g"), step(), strict=True)))
        value, grad = outputs["v"], outputs["g"]
    result["saved_bytes"] = saved_for_backward(lambda: loss_fn(images.clone().requires_grad_(True)))
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    torch.save({**result, "seconds": statistics.median(times), "value": value.cpu(), "grad": grad.cpu()}, out)


def mib(value: object) -> float | None:
    return None if value is None else value / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 3, 256, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.weights, args.shape, args.repeats, args.device, args.worker_out)
        return 0

    device = torch.device(args.device)
    output = args.output or ROOT / "results" / f"loss_{device.type}.json"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        weights = args.weights or random_official_checkpoint(tmp_path)
        measured = {}
        for name in IMPLEMENTATIONS:
            out = tmp_path / f"{name}.pt"
            command = [sys.executable, __file__, "--worker", name, "--weights", str(weights), "--worker-out", str(out)]
            command += ["--shape", *map(str, args.shape), "--repeats", str(args.repeats), "--device", args.device]
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            measured[name] = torch.load(out, weights_only=True)
    ours, reference = measured["qualiclip-metric"], measured["pyiqa"]
    value_diff = abs(float(ours["value"]) - (1.0 - float(reference["value"])))
    grad_diff = (ours["grad"] + reference["grad"]).abs().max().item() / reference["grad"].abs().max().item()
    valid = value_diff <= 1e-5 and grad_diff <= 1e-3

    peak_kind = "cuda_peak_bytes" if device.type == "cuda" else "rss_growth_bytes"
    print(f"device: {device}  input: {' x '.join(map(str, args.shape))}  threads: {torch.get_num_threads()}")
    print(f"{'implementation':<42} {'fwd+bwd s':>9} {'speed-up':>8} {'saved MiB':>9} {'ratio':>6} {'peak MiB':>8}")
    for name, label in IMPLEMENTATIONS.items():
        m = measured[name]
        print(
            f"{label:<42} {m['seconds']:>9.3f} {reference['seconds'] / m['seconds']:>7.2f}x "
            f"{mib(m['saved_bytes']):>9.0f} {m['saved_bytes'] / reference['saved_bytes']:>5.2f}x "
            f"{mib(m[peak_kind]):>8.0f}"
        )
    print("saved: activations kept for backward; peak: CUDA allocator peak, or CPU first-pass RSS growth")
    print(
        f"loss value difference {value_diff:.1e}, relative input-gradient difference {grad_diff:.1e}: "
        f"{'agree' if valid else 'DISAGREE: figures invalid'}"
    )
    result = {
        "benchmark": "loss forward+backward",
        "machine": machine(device),
        "input_shape": args.shape,
        "weights": "random" if args.weights is None else str(args.weights),
        "results": {
            name: {
                "seconds": m["seconds"],
                "saved_for_backward_mib": mib(m["saved_bytes"]),
                "cuda_peak_mib": mib(m["cuda_peak_bytes"]),
                "cpu_first_pass_rss_growth_mib": mib(m["rss_growth_bytes"]),
            }
            for name, m in measured.items()
        },
        "loss_value_difference": value_diff,
        "relative_gradient_difference": grad_diff,
        "valid": valid,
    }
    return write_result(output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
