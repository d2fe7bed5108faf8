"""CUDA-graph replay for runners whose eager execute is a sequence of kernel launches.

One graph per input shape: static input buffers, the eager computation captured once on the runner's
stream (after a warm-up outside the capture, so lazy initialisation and compilation never get captured),
then ``upload`` copies the host inputs into the static buffers and ``execute`` replays the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class ShapeGraphs:
    """Captured graphs keyed by input shapes, each with its static inputs and captured outputs."""

    def __init__(self, stream: Any, device: str, dtype: Any, eager: Callable[[list[Any]], list[Any]],
                 warmup_calls: int = 2):
        self.stream, self.device, self.dtype = stream, device, dtype
        self.eager = eager
        self.warmup_calls = warmup_calls
        self.graphs: dict[tuple, tuple[Any, list[Any], list[Any]]] = {}

    def _capture(self, shapes: tuple) -> tuple[Any, list[Any], list[Any]]:
        import torch

        static_in = [torch.randn(s, device=self.device, dtype=self.dtype) for s in shapes]
        with torch.cuda.stream(self.stream):
            for _ in range(self.warmup_calls):
                self.eager(static_in)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            static_out = self.eager(static_in)
        return graph, static_in, static_out

    def load(self, arrays: list[np.ndarray]) -> tuple:
        """Copy host arrays into the static inputs of their shape's graph (capturing it first if new)."""
        import torch

        shapes = tuple(a.shape for a in arrays)
        if shapes not in self.graphs:
            self.graphs[shapes] = self._capture(shapes)
        for buf, array in zip(self.graphs[shapes][1], arrays):
            buf.copy_(torch.from_numpy(array), non_blocking=True)
        return shapes

    def replay(self, shapes: tuple) -> list[Any]:
        graph, _, static_out = self.graphs[shapes]
        graph.replay()
        return static_out

    def clear(self) -> None:
        self.graphs = {}

    def __len__(self) -> int:
        return len(self.graphs)


class GraphReplay:
    """Mixin for a Runner: capture its eager computation per input shape, replay it on every query.

    The subclass's ``capture_target(static_inputs) -> outputs`` is what gets captured; ``upload`` copies
    the host inputs into that shape's static buffers, ``execute`` replays the graph.
    """

    def capture_target(self, static_inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def prepare_impl(self) -> None:
        super().prepare_impl()  # type: ignore[misc]
        self.graphs = ShapeGraphs(self.stream, self.device, self.dtype, self.capture_target)

    def upload_impl(self, inputs: dict[str, np.ndarray]) -> tuple:
        return self.graphs.load([np.ascontiguousarray(inputs[n]) for n in self.model.input_names])

    def execute_impl(self, shapes: tuple) -> list[Any]:
        return self.graphs.replay(shapes)

    def close_impl(self) -> None:
        self.graphs.clear()
        super().close_impl()  # type: ignore[misc]
