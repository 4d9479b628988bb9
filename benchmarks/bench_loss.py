"""Loss benchmark: forward+backward time and memory of QualiCLIPLoss against pyiqa's ``as_loss``.

    python benchmarks/bench_loss.py                      # CPU, batch 4 x 3 x 256 x 256
    python benchmarks/bench_loss.py --device cuda

Both implementations run in one process on the same random-weight checkpoint (or ``--weights``), in
interleaved rounds so that both see the same machine; the median of ``--repeats`` rounds is
reported. Memory is the activation memory autograd keeps for the backward pass (unique storages
saved by the forward), which does not depend on the allocator; on CUDA the allocator's peak is
reported too. Both sides use temperature 2 (pyiqa's default): QualiCLIPLoss = 1 - pyiqa's value.

Parity is judged in float64, where rounding cannot hide a difference between the two: the loss
values must agree within 1e-5 in fp32 and the input gradients within 1e-5 (relative L2) in float64.
The fp32 gradients are reported beside their distance from the float64 ones: a deep network's fp32
input gradient carries a rounding error of its own, the same for both implementations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    PARITY_TOLERANCE,
    ROOT,
    machine,
    peak_memory_mib,
    pyiqa_downloads_from,
    random_official_checkpoint,
    reset_peak_memory,
    synchronize,
    write_result,
)

IMPLEMENTATIONS = {"qualiclip-metric": "QualiCLIPLoss", "pyiqa": "pyiqa.create_metric(..., as_loss=True)"}
#: Relative L2 distance between the two float64 input gradients above which the figures are invalid.
GRADIENT_TOLERANCE = 1e-5


def build_losses(weights: Path, device: torch.device) -> dict[str, torch.nn.Module]:
    """Ours, and pyiqa's own QualiCLIP (kept reachable as "qualiclip-pyiqa" by our plugin), as losses.

    pyiqa's ``as_loss`` returns the score itself, whose gradient is that of our 1 - score negated.
    """
    import pyiqa

    from qualiclip_metric import QualiCLIPLoss

    with pyiqa_downloads_from(weights):
        reference = pyiqa.create_metric("qualiclip-pyiqa", as_loss=True, device=device)
    return {"qualiclip-metric": QualiCLIPLoss(weights, temperature=2.0).to(device), "pyiqa": reference}


def value_and_input_gradient(loss_fn: torch.nn.Module, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = images.clone().requires_grad_(True)
    value = loss_fn(x)
    value.backward()
    return float(value.detach()), x.grad.double().cpu()


def saved_for_backward(loss_fn: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes of the unique tensor storages autograd saves during one forward pass."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(images.clone().requires_grad_(True))
    return sum(storages.values())


def to_float64(loss_fn: torch.nn.Module) -> torch.nn.Module:
    loss_fn.double()
    net = getattr(loss_fn, "net", None)
    if net is not None and isinstance(getattr(net, "prompts_features", None), torch.Tensor):
        net.prompts_features = net.prompts_features.double()  # a plain attribute in pyiqa's arch
    return loss_fn


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 3, 256, 256])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    output = args.output or ROOT / "results" / f"loss_{device.type}.json"
    images = torch.rand(*args.shape, generator=torch.Generator().manual_seed(0)).to(device)
    sign = {"qualiclip-metric": 1.0, "pyiqa": -1.0}

    with tempfile.TemporaryDirectory() as folder:
        losses = build_losses(args.weights or random_official_checkpoint(Path(folder)), device)
    fp32, saved, peak, times = {}, {}, {}, {name: [] for name in losses}
    for name, loss_fn in losses.items():
        baseline = reset_peak_memory(device) if device.type == "cuda" else 0
        value, grad = value_and_input_gradient(loss_fn, images)
        fp32[name] = (sign[name] * value, sign[name] * grad)
        peak[name] = peak_memory_mib(device, baseline) if device.type == "cuda" else None
        saved[name] = saved_for_backward(loss_fn, images) / 2**20
    for _ in range(args.repeats):  # interleaved rounds, after the passes above as warm-up
        for name, loss_fn in losses.items():
            start = time.perf_counter()
            value_and_input_gradient(loss_fn, images)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    fp64 = {
        name: sign[name] * value_and_input_gradient(to_float64(fn), images.double())[1] for name, fn in losses.items()
    }

    ours, reference = "qualiclip-metric", "pyiqa"
    value_diff = abs(fp32[ours][0] - (1.0 + fp32[reference][0]))
    fp64_grad_diff = relative_l2(fp64[ours], fp64[reference])
    fp32_grad_diff = relative_l2(fp32[ours][1], fp32[reference][1])
    fp32_rounding = {name: relative_l2(fp32[name][1], fp64[name]) for name in losses}
    valid = value_diff <= PARITY_TOLERANCE and fp64_grad_diff <= GRADIENT_TOLERANCE

    print(f"device: {device}  input: {' x '.join(map(str, args.shape))}  threads: {torch.get_num_threads()}")
    print(f"{'implementation':<42} {'fwd+bwd s':>9} {'speed-up':>8} {'saved MiB':>9} {'ratio':>6} {'peak MiB':>8}")
    for name, label in IMPLEMENTATIONS.items():
        peak_text = "-" if peak[name] is None else f"{peak[name]:.0f}"
        print(
            f"{label:<42} {seconds[name]:>9.3f} {seconds[reference] / seconds[name]:>7.2f}x "
            f"{saved[name]:>9.0f} {saved[name] / saved[reference]:>5.2f}x {peak_text:>8}"
        )
    print("saved: activations kept for backward; peak: CUDA allocator peak of the first pass")
    print(
        f"loss values differ by {value_diff:.1e}; input gradients differ by {fp64_grad_diff:.1e} in float64 "
        f"(relative L2): {'agree' if valid else 'DISAGREE: figures invalid'}"
    )
    print(
        f"fp32 input gradients: {fp32_grad_diff:.1e} apart; each from its float64 gradient: "
        + ", ".join(f"{name} {error:.1e}" for name, error in fp32_rounding.items())
    )
    result = {
        "benchmark": "loss forward+backward",
        "machine": machine(device),
        "input_shape": args.shape,
        "weights": "random" if args.weights is None else str(args.weights),
        "repeats": args.repeats,
        "results": {
            name: {
                "seconds": seconds[name],
                "saved_for_backward_mib": saved[name],
                "cuda_peak_mib": peak[name],
                "fp32_gradient_rounding": fp32_rounding[name],
            }
            for name in losses
        },
        "loss_value_difference": value_diff,
        "float64_gradient_difference": fp64_grad_diff,
        "fp32_gradient_difference": fp32_grad_diff,
        "valid": valid,
    }
    return write_result(output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
