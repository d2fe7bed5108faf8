"""The Model interface: what every model says about itself, and the model of a ModelSpec or user module.

Every kind of model -- a preset or sizes (``ModelSpec``), a user's ``nn.Module`` (``--model``), a whole
model with recurrent layers inside, an ONNX or TorchScript file (``model.file.FileModel``) -- is a
``Model`` and answers the same questions; backends, verify, bench and stream ask these and nothing else
(no ``getattr`` probes, no private members):

- ``inputs`` / ``outputs``: named tensors with their dims (``TensorInfo``); ``input_names`` /
  ``output_names`` follow from them;
- ``state_pairs``: which output carries which input's state to the next call. The model owns them
  (files take ``--state`` when they are built); nothing assigns them from outside. ``state_pair_misses``
  says which names matched but could not pair, when that is why none was found;
- ``input_shapes(seq_len, batch)`` and ``make_inputs(seq_len, batch, rng)``: the real shapes and fresh
  inputs at one point;
- ``reference(inputs)``: the float64 outputs every backend is compared with, and ``reference_source``:
  what that reference is and whether it is independent of the runtimes under test (and if not, why);
- ``verify_points()``: the (seq_len, batch) points that are valid for this model; ``stream_refusal()``:
  why it cannot run chunk by chunk, if it cannot;
- ``notes``: what a user should read before the tables; ``describe()``: the facts kept with the results;
- ``script_path`` (a TorchScript file, else None) and ``name_outputs(count)`` (for a model whose outputs
  are known only once it has run).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.spec import ModelSpec, call_rnn


@dataclass
class TensorInfo:
    """One input or output.  ``dims``: int (fixed), str (symbolic; anonymous ones named ``name[axis]``),
    or None when the model gives no shape at all."""

    name: str
    dtype: str
    dims: list[int | str] | None

    @property
    def shape_text(self) -> str:
        if self.dims is None:
            return "?"
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


@dataclass(frozen=True)
class StatePair:
    """Output ``output`` carries input ``input``'s state to the next call (``found_by``: "name", "given",
    or "model" for our own h0/c0 -> hn/cn)."""

    input: str
    output: str
    found_by: str


@dataclass(frozen=True)
class ReferenceSource:
    """Where the reference outputs come from.

    ``independent`` is False when the reference is one of the runtimes under test (ONNX Runtime on the
    CPU compared with itself, a TorchScript module in float32): then a "passed" proves nothing about that
    runtime, and verify labels such results ``unverified``. ``reason`` says why in one line.
    """

    name: str
    independent: bool = True
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TORCH_FLOAT64 = ReferenceSource("torch-float64-cpu")


def default_points(seq_len: int, batch: int) -> list[tuple[int, int]]:
    """seq 1, the model's shape, a length much longer than the example, and another batch size."""
    long_seq = max(8 * seq_len, 64)
    points = [(1, batch), (seq_len, batch), (long_seq, batch), (seq_len, batch + 2)]
    return list(dict.fromkeys(points))


@dataclass
class Model:
    """A model built from a ModelSpec (a preset, sizes) or a user's nn.LSTM / nn.GRU module.

    Inputs and outputs are named as in the ONNX export (`input`, `h0`, `c0` -> `output`, `hn`, `cn`); the
    reference is the module itself in float64 on the CPU. Other kinds of model subclass this and override
    the interface's members (see the module docstring).
    """

    name: str
    spec: ModelSpec | None = None
    module: Any = None  # float32 eval-mode torch.nn.Module, on the CPU
    onnx_path: Path | None = None
    seq_len: int = 1  # the example / default bench shape
    batch: int = 1
    with_state: bool = True  # feed h0/c0 (the tutorial does)
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- inputs and outputs ---------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorInfo]:
        return [t for t in self._tensors() if t.name in self.input_names]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [t for t in self._tensors() if t.name in self.output_names]

    def _spec(self) -> ModelSpec:
        if self.spec is None:
            raise UserError(f"model {self.name} has no ModelSpec: its inputs cannot be named")
        return self.spec

    def _tensors(self) -> list[TensorInfo]:
        """Every input and output with the export's symbolic dims (`sequence`, `batch`)."""
        spec = self._spec()
        marks = spec.shapes(-1, -2)  # -1 / -2 mark the sequence / batch axes
        names = {-1: "sequence", -2: "batch"}
        return [TensorInfo(n, "float32", [names.get(d, d) for d in marks[n]])
                for n in spec.input_names + spec.output_names]

    @property
    def input_names(self) -> list[str]:
        names = self._spec().input_names
        return names if self.with_state else names[:1]

    @property
    def output_names(self) -> list[str]:
        return self._spec().output_names

    def name_outputs(self, count: int) -> list[str]:
        """The output names for a run that returned `count` outputs (fixed for a spec model)."""
        return self.output_names

    def call_module(self, module: Any, tensors: list[Any]) -> list[Any]:
        """Run `module` (this model's module, or a copy on another device or dtype) on tensors in input_names
        order; the outputs in output_names order."""
        return call_rnn(module, self.spec.kind if self.spec else "lstm", tensors)

    @property
    def state_pairs(self) -> list[StatePair]:
        """h0 -> hn (, c0 -> cn) when the state is fed; none otherwise."""
        if not self.with_state:
            return []
        return [StatePair(i, o, "model") for i, o in zip(self.input_names[1:], self.output_names[1:])]

    @property
    def state_pair_misses(self) -> list[str]:
        """Inputs and outputs whose names pair but whose tensors cannot (why a state was not found)."""
        return []

    @property
    def script_path(self) -> Path | None:
        """The TorchScript file this model is (None: not a TorchScript model)."""
        return None

    # ---- inputs at a point -----------------------------------------------------------------------
    def input_shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        """Every input's real shape at one (seq_len, batch) point."""
        shapes = self._spec().shapes(seq_len, batch)
        return {n: shapes[n] for n in self.input_names}

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh standard-normal float32 inputs at one point."""
        return {n: rng.standard_normal(s).astype(np.float32) for n, s in self.input_shapes(seq_len, batch).items()}

    def verify_points(self) -> list[tuple[int, int]]:
        """The (seq_len, batch) points verify checks when the user gives no --points."""
        return default_points(self.seq_len, self.batch)

    # ---- the reference ---------------------------------------------------------------------------
    @property
    def reference_source(self) -> ReferenceSource:
        return TORCH_FLOAT64

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float64 PyTorch on the CPU: the oracle every backend is compared with."""
        import torch

        if self.module is None:
            raise UserError(f"model {self.name} has no PyTorch module to use as the reference")
        with torch.no_grad():
            args = [torch.from_numpy(inputs[n]).double() for n in self.input_names]
            outputs = self.call_module(self._module64, args)
        return {n: t.numpy() for n, t in zip(self.output_names, outputs)}

    @cached_property
    def _module64(self) -> Any:
        """A float64 copy of the module, made once."""
        return copy.deepcopy(self.module).double().eval()

    def stream_refusal(self) -> str:
        """Why this model cannot run chunk by chunk ("" when it can): a backward direction needs the future."""
        if self.spec is not None and self.spec.bidirectional:
            return "it is bidirectional, and the backward direction needs the future"
        return ""

    # ---- what to tell the user -------------------------------------------------------------------
    @property
    def notes(self) -> list[str]:
        """What a user should know before reading the tables."""
        source = self.reference_source
        return [source.reason] if source.reason else []

    def describe(self) -> dict[str, Any]:
        source = self.reference_source
        out = {"name": self.name, "spec": self.spec.to_dict() if self.spec else None,
               "onnx": str(self.onnx_path) if self.onnx_path else None,
               "seq_len": self.seq_len, "batch": self.batch, "with_state": self.with_state, **self.metadata,
               "reference": source.name, "reference_independent": source.independent}
        if source.reason:
            out["reference_note"] = source.reason
        return out
