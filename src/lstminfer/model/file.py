"""A user's ONNX or TorchScript file as a Model.

A user's file is not one of our exports: its inputs come from the graph, its symbolic dims from
trtexec-style ``--shapes name:AxB``, its integer and scalar inputs from ``--input name=VALUE`` or an
``.npz``, its state pairs from the names (or ``--state``), and its reference is ``onnx.reference`` on a
float64 copy where that is faithful (docs/verify.md), else ONNX Runtime on the CPU -- which is then one of
the runtimes under test, so the reference says it is not independent, and why, before anything runs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import Model, ReferenceSource, StatePair, TensorInfo
from lstminfer.model.file_inputs import FileInputs
from lstminfer.onnx.inspect import OnnxInfo, inspect_proto, parse_state
from lstminfer.onnx.load import _first_line, _ort_message, load_onnx
from lstminfer.onnx.oracle import applicable
from lstminfer.onnx.shapes import load_npz, parse_shapes
from lstminfer.onnx.torchscript import (
    ScriptArg,
    default_dtype,
    flatten_outputs,
    is_torchscript_path,
    load_torchscript,
    script_args,
    script_inputs,
)

ORACLE = ReferenceSource("onnx.reference-float64")
SCRIPT_FLOAT64 = ReferenceSource("torchscript-float64-cpu")


class FileModel(FileInputs, Model):
    """A user's ONNX (or TorchScript) file, handed to every backend like our exported presets.

    Inputs at a point come from ``FileInputs``; ``reference`` is onnx.reference in float64 where it
    applies, else ONNX Runtime on the CPU (TorchScript without ``--onnx``: the module in float64, else in
    float32). ``reference_source`` says which, decided by one trial run before any table or note.
    """

    def __init__(self, name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], *,
                 proto: Any = None, onnx_path: Path | None = None, info: OnnxInfo | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None, values: dict[str, Any] | None = None,
                 arrays: dict[str, np.ndarray] | None = None, seq_len: int | None = None, batch: int | None = None,
                 script_path: Path | None = None, script_arguments: list[ScriptArg] | None = None,
                 state: Any = None, validate: bool = True):
        Model.__init__(self, name=name, spec=None, module=None, onnx_path=onnx_path, with_state=True)
        self.proto = proto
        self.info = info
        self._script_path = script_path
        self.script_arguments = script_arguments or []
        self._outputs = outputs
        FileInputs.__init__(self, inputs, info, shapes, values, arrays, seq_len, batch, validate)
        self._given_pairs = parse_state(state, self.input_names, self.output_names or None)
        self._oracle: Any = None
        self._ort: Any = None
        self._script: Any = None
        self._late_notes: list[str] = []
        self.metadata = {"file": name}

    # -- the interface's names --
    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._outputs]

    def name_outputs(self, count: int) -> list[str]:
        """A TorchScript file without --onnx: its outputs are output0, output1, ... once a run shows how many."""
        if self.proto is None and len(self._outputs) != count:
            self._outputs = [TensorInfo(f"output{i}", "float32", None) for i in range(count)]
        return self.output_names

    @property
    def state_pairs(self) -> list[StatePair]:
        """--state when given, else the pairs found by name in the graph."""
        return self._given_pairs or (list(self.info.state_pairs) if self.info else [])

    @property
    def state_pair_misses(self) -> list[str]:
        return list(self.info.state_pair_misses) if self.info and not self.state_pairs else []

    @property
    def script_path(self) -> Path | None:
        return self._script_path

    # -- the reference --
    @cached_property
    def reference_source(self) -> ReferenceSource:
        """Decided before the first table: the preferred reference, tried once at the model's own point; when
        it does not apply or fails, the fallback with the reason (not independent of the runtimes tested)."""
        if self.proto is None:
            return self._trial(SCRIPT_FLOAT64, ReferenceSource(
                "torchscript-float32-cpu", False, "a float64 reference is impossible for this TorchScript module "
                "({why}); the reference is the module in float32, the torchscript backend compared with itself"))
        fallback = ReferenceSource("onnxruntime-cpu-fp32", False, "onnx.reference {why}; the reference is "
                                   "ONNX Runtime CPU fp32, so onnxruntime[cpu] is compared with itself")
        ok, why = self.info.oracle if self.info else applicable(self.proto)
        if not ok:
            return ReferenceSource(fallback.name, False, fallback.reason.format(why=f"is not applicable ({why})"))
        return self._trial(ORACLE, fallback)

    def _trial(self, preferred: ReferenceSource, fallback: ReferenceSource) -> ReferenceSource:
        try:
            inputs = self.make_inputs(self.seq_len, self.batch, np.random.default_rng(0))
        except UserError:
            return preferred  # dims still unset: the run that sets them will say so
        try:
            self._run(preferred, inputs)
        except UserError:
            return preferred  # the inputs are at fault, not the reference: the real run names them
        except Exception as err:  # an op the oracle lacks, a module float64 breaks ... or inputs nothing runs
            try:
                self._run(fallback, inputs)
            except Exception:
                return preferred  # the fallback fails too: the inputs are at fault, and the real run says so
            why = f"failed at run time: {_first_line(err)}" if preferred is ORACLE else _first_line(err)
            return ReferenceSource(fallback.name, False, fallback.reason.format(why=why))
        return preferred

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._run(self.reference_source, inputs)
        except UserError:
            raise
        except Exception as err:  # the reference cannot run this point: name it, and the way out
            raise UserError(f"the reference ({self.reference_source.name}) cannot run {self.name} at "
                            f"{self.shape_text(inputs)}: {_first_line(err)}{self.input_hint()}") from err

    def _run(self, source: ReferenceSource, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if source is ORACLE:
            if self._oracle is None:
                from lstminfer.onnx.oracle import Float64Reference

                self._oracle = Float64Reference(self.proto)
            return self._oracle.run(inputs)
        if self.proto is not None:
            return self._ort_reference(inputs)
        return self._script_reference(inputs, float64=source is SCRIPT_FLOAT64)

    def _ort_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if self._ort is None:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4  # the refusal becomes our one-line error, not ORT's log line
            try:
                self._ort = ort.InferenceSession(self.proto.SerializeToString(), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
            except Exception as err:
                raise UserError(f"no reference can run {self.name}: {self.reference_source.reason.split(';')[0]} "
                                f"and ONNX Runtime refuses it: {_ort_message(err)}") from err
        try:
            outs = self._ort.run(None, inputs)
        except Exception as err:
            raise UserError(f"ONNX Runtime cannot run {self.name} at {self.shape_text(inputs)}: "
                            f"{_ort_message(err)}{self.input_hint()}") from err
        return dict(zip(self.output_names, outs))

    def _script_reference(self, inputs: dict[str, np.ndarray], float64: bool) -> dict[str, np.ndarray]:
        import torch

        if self._script is None or (self._script[0] != float64):
            module = load_torchscript(self._script_path)
            self._script = (float64, module.double().eval() if float64 else module)
        dtype = torch.float64 if float64 else torch.float32
        feeds = {n: torch.from_numpy(a).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(a)
                 for n, a in inputs.items()}
        with torch.no_grad(), default_dtype(dtype):
            outs = flatten_outputs(self._script[1](*script_inputs(self.script_arguments, self.input_names, feeds)))
        names = self.name_outputs(len(outs))
        return {n: t.double().numpy() if t.is_floating_point() else t.numpy() for n, t in zip(names, outs)}

    # -- points and notes --
    def verify_points(self) -> list[tuple[int, int]]:
        """The model's shape, a longer sequence and another batch, where those axes are free and the reference
        runs there: a model that takes a fixed window under a symbolic dim keeps the points it can run."""
        points = [(self.seq_len, self.batch)]
        for point, what in (((4 * self.seq_len, self.batch), "seq"), ((self.seq_len, self.batch + 2), "batch")):
            if not (self.seq_varies if what == "seq" else self.batch_varies):
                continue
            try:
                self.reference(self.make_inputs(*point, np.random.default_rng(0)))
            except UserError as err:
                self._late_notes.append(f"verify point {point[0]}x{point[1]} dropped: {err}; choose points "
                                        "with --points")
                continue
            points.append(point)
        return points

    def stream_refusal(self) -> str:
        if self.info is None or not self.info.bidirectional:
            return ""
        node = self.info.bidirectional[0]
        return f"{node.op} node {node.name} ({node.where}) runs {node.direction}, which needs the future"

    @property
    def notes(self) -> list[str]:
        """No recurrent node, which reference and why, points dropped."""
        out = list(self.info.notes) if self.info else []
        out.extend(super().notes)
        return list(dict.fromkeys(out + self._late_notes))  # verify_points may run more than once

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._script_path is not None:
            out["torchscript"] = str(self._script_path)
        if self.info:
            out["recurrent_nodes"] = len(self.info.recurrent)
        return out


def load_model_file(path: str | Path, *, shapes: str | dict | None = None, values: dict | None = None,
                    inputs_npz: str | Path | None = None, onnx: str | Path | None = None,
                    seq_len: int | None = None, batch: int | None = None, state: Any = None,
                    validate: bool = True) -> FileModel:
    """An ONNX file, or a TorchScript file (checked against its ONNX export when `onnx` is given)."""
    path = Path(path)
    shapes = parse_shapes(shapes) if isinstance(shapes, str) or shapes is None else dict(shapes)
    arrays = load_npz(inputs_npz) if inputs_npz else {}
    common = dict(shapes=shapes, values=dict(values or {}), arrays=arrays, seq_len=seq_len, batch=batch,
                  state=state, validate=validate)
    if not is_torchscript_path(path):
        proto = load_onnx(path)
        info = inspect_proto(proto, str(path))
        return FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=path, info=info, **common)
    args = script_args(load_torchscript(path))
    if onnx:
        proto = load_onnx(onnx)
        info = inspect_proto(proto, str(onnx))
        names = [i.name for i in info.inputs]
        if not set(names) <= {a.name for a in args} and len(names) != len(args):
            raise UserError(f"cannot match TorchScript forward({', '.join(a.name for a in args)}) to the ONNX "
                            f"inputs {', '.join(names)}: export with input_names equal to forward's argument names")
        return FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=Path(onnx), info=info,
                         script_path=path, script_arguments=args, **common)
    tensors = []
    for a in args:  # no graph: scalars from forward's types, tensors from --shapes / --inputs
        given = "int64" if isinstance(common["values"].get(a.name), int) else "float32"
        dtype = arrays[a.name].dtype.name if a.name in arrays else a.scalar_dtype or given
        tensors.append(TensorInfo(a.name, dtype, [] if a.scalar_dtype else None))
    return FileModel(str(path), tensors, [], script_path=path, script_arguments=args, **common)
