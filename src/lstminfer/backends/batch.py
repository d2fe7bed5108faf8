"""A query's batch cut into row groups, and the groups' outputs joined back: the CPU backends' throughput mode.

``--cpu-mode throughput`` runs one query as several smaller ones at once (openvino: one slice per stream;
onnxruntime: groups of at most 4 rows, docs/cpu.md). Cutting needs the batch axis of every input and output,
which lstminfer knows for the models it builds from a ModelSpec (presets, sizes, a user's nn.LSTM / nn.GRU);
for a user's file or a whole model it does not, and ``batch_axes`` answers None.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lstminfer.model.base import Model

CPU_MODES = ("latency", "throughput")


def batch_axes(model: Model, names: Iterable[str]) -> dict[str, int] | None:
    """The batch axis of every named input and output, from the model's spec; None when any is unknown."""
    if model.spec is None:
        return None
    marked = model.spec.shapes(-1, -2)  # -2 marks the batch axis of every tensor
    axes = {}
    for name in names:
        if name not in marked or -2 not in marked[name]:
            return None
        axes[name] = marked[name].index(-2)
    return axes


def group_sizes(batch: int, groups: int) -> list[int]:
    """`batch` rows in `groups` groups (at most `batch`) as even as they go: 7 in 2 -> [4, 3], 9 in 3 -> [3, 3, 3]."""
    groups = max(1, min(groups, batch))
    return [batch // groups + (1 if i < batch % groups else 0) for i in range(groups)]


def split_rows(arrays: dict[str, np.ndarray], axes: dict[str, int],
               sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """One dict of contiguous arrays per group of `sizes` rows, cut along each array's batch axis."""
    bounds = np.cumsum([0, *sizes])
    return [{n: np.ascontiguousarray(np.take(a, range(lo, hi), axis=axes[n])) for n, a in arrays.items()}
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def join_rows(parts: Sequence[dict[str, np.ndarray]], axes: dict[str, int]) -> dict[str, np.ndarray]:
    """The groups' outputs concatenated back along each output's batch axis, in group order."""
    if len(parts) == 1:
        return dict(parts[0])
    return {n: np.concatenate([p[n] for p in parts], axis=axes[n]) for n in parts[0]}
