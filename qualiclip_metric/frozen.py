"""Using a QualiCLIP network inside another module without owning its weights."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from qualiclip_metric.model import QualiCLIP


def build_network(weights: str | QualiCLIP | None, **options: Any) -> QualiCLIP:
    """A loaded model as given, or one loaded from any ``from_pretrained`` source with ``options``."""
    if isinstance(weights, QualiCLIP):
        given = {key: value for key, value in options.items() if value is not None}
        if given:
            raise ValueError(f"{', '.join(sorted(given))} cannot be applied to an already loaded model; set them on it")
        return weights
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be a source accepted by QualiCLIP.from_pretrained or a QualiCLIP, got {weights!r}"
        )
    return QualiCLIP.from_pretrained(weights, **{key: value for key, value in options.items() if value is not None})


class FrozenNetworkMixin:
    """Keeps a QualiCLIP network outside the module tree.

    ``.to()``, ``.cuda()`` and dtype conversions reach it, but ``parameters()``, ``state_dict()`` and
    ``train()`` do not: an optimizer of the enclosing model cannot update it, checkpoints of that
    model stay small, and its BatchNorm layers stay in evaluation mode.
    """

    def _hold_network(self, network: QualiCLIP) -> None:
        network.eval().requires_grad_(False)
        object.__setattr__(self, "_frozen_network", network)  # bypasses nn.Module registration

    @property
    def network(self) -> QualiCLIP:
        """The wrapped QualiCLIP model (frozen, in evaluation mode)."""
        return self._frozen_network

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
        this = super()._apply(fn, *args, **kwargs)  # type: ignore[misc]
        self._frozen_network._apply(fn)
        return this
