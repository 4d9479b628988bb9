"""``qualiclip info``: versions, devices, what ``--fast`` picks, and the registry's weights and their state."""

from __future__ import annotations

import argparse
from typing import Any

from qualiclip_metric.cli.common import EXIT_OK, weights_arguments


def add_parser(commands: Any) -> None:
    info = commands.add_parser("info", help="version, the registry's weights and their state, cache and devices")
    info.add_argument("--weights", metavar="SOURCE", help="weights source to look up in the cache")
    weights_arguments(info)
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from qualiclip_metric import __version__
    from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
    from qualiclip_metric.machine import cpu_features, cpu_model
    from qualiclip_metric.pretrained import ALIASES, DEFAULT_NAME, REGISTRY
    from qualiclip_metric.runtimes import fastest_configuration
    from qualiclip_metric.weights import hub_cache_dir, is_offline, pretrained_status, resolve

    devices = ["cpu"]
    devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    lines = {
        "qualiclip-metric": __version__,
        "torch": torch.__version__,
        "default weights": DEFAULT_NAME,
        "hub cache": str(hub_cache_dir(args.cache_dir)),
        "offline": str(is_offline() or args.offline),
        "devices": ", ".join(devices),
        "cpu": cpu_model(),
        "cpu flags": " ".join(cpu_features()) or "none listed",
        "backends": ", ".join(backend_versions()),
    }
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        choice = fastest_configuration(device)
        lines[f"--fast on {device}"] = f"{choice}: {choice.reason}"
    if args.weights is not None:
        try:  # look in the cache only: `info` never downloads
            lines["weights"] = str(
                resolve(args.weights, revision=args.revision, cache_dir=args.cache_dir, local_files_only=True)
            )
        except WeightsNotFoundError:
            lines["weights"] = "not in the cache (`qualiclip download` fetches it)"
        except (CheckpointError, ValueError) as err:
            lines["weights"] = f"unusable: {err}"
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    print("\npretrained weights (pinned commit and sha256; `qualiclip download NAME` fetches them):")
    names = list(REGISTRY)
    width = max(map(len, names))
    print(f"  {'name':<{width}}  {'cached':<6}  {'verified':<8}  description")
    for name in names:
        try:
            status = pretrained_status(name, args.cache_dir)
            cached, verified = ("yes" if status.path else "no"), ("yes" if status.verified else "no")
        except (CheckpointError, WeightsNotFoundError) as err:
            cached, verified = "broken", str(err)
        print(f"  {name:<{width}}  {cached:<6}  {verified:<8}  {REGISTRY[name].description}")
    print("  aliases: " + ", ".join(f"{alias} = {name}" for alias, name in ALIASES.items()))
    return EXIT_OK


def backend_versions() -> list[str]:
    """torch's version, and each other backend's, or the extra that installs it."""
    import torch

    from qualiclip_metric.runtimes import REQUIREMENTS, is_installed, runtime_versions

    found = [f"torch {torch.__version__}"]
    for backend, (modules, extra) in REQUIREMENTS.items():
        if is_installed(backend):
            found.append(f"{backend} {runtime_versions(backend)[modules[0]]}")
        else:
            found.append(f"{backend} not installed ([{extra}] extra)")
    return found
