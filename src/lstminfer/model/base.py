"""The Model every backend is handed: inputs, outputs, the float64 reference, verify points, notes."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.spec import ModelSpec, call_rnn


@dataclass
class Model:
    """What every backend is handed: the PyTorch module (when there is one), its spec, the ONNX file.

    Inputs and outputs are named as in the ONNX export (`input`, `h0`, `c0` -> `output`, `hn`, `cn`).
    Subclasses (e.g. a user's ONNX file) override `make_inputs` and `reference`.
    """

    name: str
    spec: ModelSpec | None = None
    module: Any = None  # float32 eval-mode torch.nn.Module, on the CPU
    onnx_path: Path | None = None
    seq_len: int = 1  # the example / default bench shape
    batch: int = 1
    with_state: bool = True  # feed h0/c0 (the tutorial does)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        names = self.spec.input_names
        return names if self.with_state else names[:1]

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh standard-normal float32 inputs at one point."""
        shapes = self.spec.shapes(seq_len, batch)
        return {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in self.input_names}

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float64 PyTorch on the CPU: the oracle every backend is compared with."""
        import torch

        if self.module is None:
            raise UserError(f"model {self.name} has no PyTorch module to use as the reference")
        with torch.no_grad():
            args = [torch.from_numpy(inputs[n]).double() for n in self.input_names]
            outputs = call_rnn(self._module64, self.spec.kind if self.spec else "lstm", args)
        return {n: t.numpy() for n, t in zip(self.output_names, outputs)}

    @cached_property
    def _module64(self) -> Any:
        """A float64 copy of the module, made once."""
        return copy.deepcopy(self.module).double().eval()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict() if self.spec else None,
                "onnx": str(self.onnx_path) if self.onnx_path else None,
                "seq_len": self.seq_len, "batch": self.batch, "with_state": self.with_state, **self.metadata}
