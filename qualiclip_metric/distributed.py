"""Scoring across the processes ``torchrun`` starts: each rank scores a shard, rank 0 gets all results in order.

Rank ``r`` of ``W`` scores files ``r, r + W, r + 2W, ...`` (an even split whatever the file sizes' order);
the results are gathered on rank 0 and put back in input order, so the merged output has every file once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from qualiclip_metric.batch import FileScore

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_environment() -> Ranks:
    """This process's place among those ``torchrun`` started (one process when not under torchrun)."""
    return Ranks(
        int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    )


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA devices, gloo otherwise) unless already joined."""
    import torch.distributed as dist

    if ranks.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    return list(items[ranks.rank :: ranks.world_size])


def gather_in_order(results: Iterable[FileScore], ranks: Ranks, total: int) -> list[FileScore]:
    """Every rank's results on rank 0, indexed and ordered as the full input (an empty list elsewhere)."""
    import torch.distributed as dist

    mine = [dataclasses.replace(result, index=ranks.rank + result.index * ranks.world_size) for result in results]
    if not ranks.enabled:
        return mine
    gathered: list[list[FileScore] | None] = [None] * ranks.world_size if ranks.is_main else []
    dist.gather_object(mine, gathered if ranks.is_main else None, dst=0)
    if not ranks.is_main:
        return []
    merged = sorted((result for part in gathered for result in part or []), key=lambda result: result.index)
    if [result.index for result in merged] != list(range(total)):
        raise RuntimeError(f"gathered {len(merged)} results for {total} files; a rank lost or repeated files")
    return merged
