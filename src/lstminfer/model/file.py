"""A user's ONNX or TorchScript file as a Model.

A user's file is not one of our exports: its inputs come from the graph, its symbolic dims from
trtexec-style ``--shapes name:AxB``, its integer and scalar inputs from ``--input name=VALUE`` or an
``.npz``, and its reference is ``onnx.reference`` on a float64 copy where that is faithful
(docs/verify.md), else ONNX Runtime on the CPU.  ``FileModel`` is the ``Model`` every backend gets for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.onnx.inspect import OnnxInfo, TensorInfo, inspect_proto
from lstminfer.onnx.load import _first_line, _ort_message, load_onnx
from lstminfer.onnx.oracle import applicable
from lstminfer.onnx.shapes import load_npz, parse_shapes
from lstminfer.onnx.torchscript import (
    flatten_outputs,
    is_torchscript_path,
    load_torchscript,
    script_arg_names,
    script_inputs,
)


# ---- the Model handle for a file ----------------------------------------------------------------------------
class FileModel(Model):
    """A user's ONNX (or TorchScript) file, handed to every backend like our exported presets.

    ``make_inputs(seq_len, batch, rng)`` builds inputs from the graph: fixed dims as they are, dims set by
    ``--shapes`` or by ``.npz`` arrays as given, other dims recognised as sequence or batch axes from
    ``seq_len`` / ``batch``; values from ``--input``/``--inputs`` where given, else random data of the
    input's dtype.  ``reference`` is onnx.reference in float64 where it applies, else ONNX Runtime on CPU.
    """

    def __init__(self, name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], *,
                 proto: Any = None, onnx_path: Path | None = None, info: OnnxInfo | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None, values: dict[str, Any] | None = None,
                 arrays: dict[str, np.ndarray] | None = None, seq_len: int | None = None, batch: int | None = None,
                 script_path: Path | None = None, script_args: list[str] | None = None, validate: bool = True):
        super().__init__(name=name, spec=None, module=None, onnx_path=onnx_path, with_state=True)
        self.graph_inputs = inputs
        self.graph_outputs = outputs
        self.proto = proto
        self.info = info
        self.roles = dict(info.dim_roles) if info else {}
        self.script_path = script_path
        self.script_args = script_args or []
        self.values = dict(values or {})
        self.arrays = dict(arrays or {})
        self.shapes = dict(shapes or {})
        self._by_name = {i.name: i for i in inputs}
        self.bindings: dict[str, int] = {}
        self._oracle: Any = None
        self._ort: Any = None
        self._script64: Any = None
        self.reference_name = self._choose_reference()
        self._bind_given()
        fixed_seq = [self.bindings[d] for d, r in self.roles.items() if r == "seq" and d in self.bindings]
        fixed_batch = [self.bindings[d] for d, r in self.roles.items() if r == "batch" and d in self.bindings]
        self.seq_varies = any(r == "seq" and d not in self.bindings for d, r in self._used_roles().items())
        self.batch_varies = any(r == "batch" and d not in self.bindings for d, r in self._used_roles().items())
        self.seq_len = seq_len if self.seq_varies and seq_len else (fixed_seq[0] if fixed_seq else (seq_len or 16))
        self.batch = batch if self.batch_varies and batch else (fixed_batch[0] if fixed_batch else (batch or 1))
        self.metadata = {"file": name, "reference": self.reference_name}
        if validate:  # every dim resolvable, or a UserError naming those unset
            self.input_shapes(self.seq_len, self.batch)

    # -- names --
    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.graph_inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph_outputs]

    def _used_roles(self) -> dict[str, str]:
        used = {d for i in self.graph_inputs if i.dims for d in i.dims if isinstance(d, str)}
        return {d: r for d, r in self.roles.items() if d in used}

    # -- shapes --
    def _bind(self, dim: str, value: int, source: str) -> None:
        old = self.bindings.get(dim)
        if old is not None and old != value:
            raise UserError(f"{source} sets dim {dim!r} to {value}, but another input already set it to {old}")
        self.bindings[dim] = value

    def _bind_shape(self, name: str, shape: tuple[int, ...], source: str) -> None:
        info = self._by_name[name]
        if info.dims is None:
            return
        if len(shape) != len(info.dims):
            raise UserError(f"{source}: input {name!r} has rank {len(info.dims)} {info.shape_text}, "
                            f"got rank {len(shape)} {list(shape)}")
        for axis, (want, got) in enumerate(zip(info.dims, shape)):
            if isinstance(want, int):
                if want != got:
                    raise UserError(f"{source}: input {name!r} dim {axis} is fixed at {want} in the graph, got {got}")
            else:
                self._bind(want, got, source)

    def _bind_given(self) -> None:
        names = set(self.input_names)
        for source, given in (("--shapes", self.shapes), ("--input", self.values), ("--inputs", self.arrays)):
            unknown = sorted(set(given) - names)
            if unknown:
                raise UserError(f"{source} names {', '.join(repr(u) for u in unknown)}, which the model does not "
                                f"have; its inputs are {', '.join(self.input_names)}")
        for name, shape in self.shapes.items():
            self._bind_shape(name, shape, f"--shapes {name}")
        for name, array in self.arrays.items():
            info = self._by_name[name]
            if array.dtype.name != info.dtype:
                raise UserError(f"--inputs: array {name!r} is {array.dtype.name}, the model's input is {info.dtype}")
            if name in self.shapes and tuple(array.shape) != self.shapes[name]:
                raise UserError(f"--inputs: array {name!r} has shape {list(array.shape)}, --shapes says "
                                f"{list(self.shapes[name])}")
            self._bind_shape(name, tuple(array.shape), f"--inputs array {name!r}")
        for name, value in self.values.items():
            dtype = np.dtype(self._by_name[name].dtype) if self._by_name[name].dtype in np.sctypeDict else None
            if dtype is not None and dtype.kind in "iub" and isinstance(value, float) and not value.is_integer():
                raise UserError(f"--input {name}={value}: the model's input {name!r} is {dtype.name}, "
                                "give an integer")

    def input_shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        """Every input's shape at one point; a UserError names each dim still unset."""
        shapes, unset = {}, []
        for info in self.graph_inputs:
            if info.name in self.arrays:
                shapes[info.name] = tuple(self.arrays[info.name].shape)
                continue
            if info.name in self.shapes:
                shapes[info.name] = self.shapes[info.name]
                continue
            if info.dims is None:
                if info.name in self.values:
                    shapes[info.name] = ()
                    continue
                unset.append(f"{info.name} (no shape in the graph)")
                continue
            shape = []
            for axis, d in enumerate(info.dims):
                if isinstance(d, int):
                    shape.append(d)
                elif d in self.bindings:
                    shape.append(self.bindings[d])
                elif self.roles.get(d) == "seq":
                    shape.append(seq_len)
                elif self.roles.get(d) == "batch":
                    shape.append(batch)
                else:
                    unset.append(f"{info.name} dim {axis} ({d})")
                    shape.append(-1)
            shapes[info.name] = tuple(shape)
        if unset:
            example = ",".join(f"{i.name}:{'x'.join('N' for _ in i.dims) if i.dims else 'AxB'}"
                               for i in self.graph_inputs if any(u.startswith(i.name + " ") for u in unset))
            raise UserError(f"dims still unset: {'; '.join(unset)}; set them with --shapes {example} "
                            "(or give the arrays with --inputs FILE.npz)")
        return shapes

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = self.input_shapes(seq_len, batch)
        out = {}
        for info in self.graph_inputs:
            if info.name in self.arrays:
                out[info.name] = self.arrays[info.name]
                continue
            shape = shapes[info.name]
            dtype = np.dtype(info.dtype)
            if info.name in self.values:
                out[info.name] = np.full(shape, self.values[info.name], dtype=dtype)
            elif dtype.kind == "f":
                out[info.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                out[info.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[info.name] = rng.integers(0, 4, shape).astype(dtype)
        return out

    def verify_points(self) -> list[tuple[int, int]]:
        """The model's shape, a longer sequence and another batch, where those axes are free."""
        points = [(self.seq_len, self.batch)]
        if self.seq_varies:
            points.append((4 * self.seq_len, self.batch))
        if self.batch_varies:
            points.append((self.seq_len, self.batch + 2))
        return points

    # -- reference --
    def _choose_reference(self) -> str:
        if self.proto is None:
            return "torchscript-float64-cpu"
        ok, why = self.info.oracle if self.info else applicable(self.proto)
        if ok:
            return "onnx.reference-float64"
        self.reference_note = (f"onnx.reference not applicable ({why}); the reference is ONNX Runtime CPU fp32, "
                               "so onnxruntime[cpu] is compared with itself")
        return "onnxruntime-cpu-fp32"

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.proto is None:
            return self._script_reference(inputs)
        if self.reference_name == "onnx.reference-float64":
            try:
                if self._oracle is None:
                    from lstminfer.onnx.oracle import Float64Reference

                    self._oracle = Float64Reference(self.proto)
                return self._oracle.run(inputs)
            except UserError:
                raise
            except Exception as err:  # an op onnx.reference lacks: fall back, and say so in every table
                self.reference_note = f"onnx.reference failed ({_first_line(err)}); reference is ONNX Runtime CPU"
                self.reference_name = "onnxruntime-cpu-fp32"
                self.metadata["reference"] = self.reference_name
        return self._ort_reference(inputs)

    def _ort_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if self._ort is None:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4  # the refusal becomes our one-line error, not ORT's log line
            try:
                self._ort = ort.InferenceSession(self.proto.SerializeToString(), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
            except Exception as err:
                why = self.info.oracle[1] if self.info else ""
                raise UserError(f"no reference can run {self.name}: onnx.reference is not applicable ({why}) "
                                f"and ONNX Runtime refuses it: {_ort_message(err)}") from err
        try:
            outs = self._ort.run(None, inputs)
        except Exception as err:
            raise UserError(f"ONNX Runtime cannot run {self.name} on these inputs: {_ort_message(err)}") from err
        return dict(zip(self.output_names, outs))

    def _script_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._script64 is None:
            self._script64 = load_torchscript(self.script_path).double().eval()
        feeds = {n: torch.from_numpy(a).double() if a.dtype.kind == "f" else torch.from_numpy(a)
                 for n, a in inputs.items()}
        with torch.no_grad():
            outs = flatten_outputs(self._script64(*script_inputs(self, feeds)))
        self._ensure_output_names(len(outs))
        return {n: t.numpy() for n, t in zip(self.output_names, outs)}

    def _ensure_output_names(self, count: int) -> None:
        if self.proto is None and len(self.graph_outputs) != count:
            self.graph_outputs = [TensorInfo(f"output{i}", "float32", None) for i in range(count)]

    @property
    def notes(self) -> list[str]:
        """What a user should know before reading the tables: no recurrent node, which reference and why."""
        out = list(self.info.notes) if self.info else []
        if getattr(self, "reference_note", None):
            out.append(self.reference_note)
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["reference"] = self.reference_name
        if getattr(self, "reference_note", None):
            out["reference_note"] = self.reference_note
        if self.info:
            out["recurrent_nodes"] = len(self.info.recurrent)
        return out


def load_model_file(path: str | Path, *, shapes: str | dict | None = None, values: dict | None = None,
                    inputs_npz: str | Path | None = None, onnx: str | Path | None = None,
                    seq_len: int | None = None, batch: int | None = None, validate: bool = True) -> FileModel:
    """An ONNX file, or a TorchScript file (checked against its ONNX export when `onnx` is given)."""
    path = Path(path)
    shapes = parse_shapes(shapes) if isinstance(shapes, str) or shapes is None else dict(shapes)
    arrays = load_npz(inputs_npz) if inputs_npz else {}
    values = dict(values or {})
    if is_torchscript_path(path):
        module = load_torchscript(path)
        args = script_arg_names(module)
        if onnx:
            proto = load_onnx(onnx)
            info = inspect_proto(proto, str(onnx))
            names = [i.name for i in info.inputs]
            if not set(names) <= set(args) and len(names) != len(args):
                raise UserError(f"cannot match TorchScript forward({', '.join(args)}) to the ONNX inputs "
                                f"{', '.join(names)}: export with input_names equal to forward's argument names")
            model = FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=Path(onnx), info=info,
                              shapes=shapes, values=values, arrays=arrays, seq_len=seq_len, batch=batch,
                              script_path=path, script_args=args, validate=validate)
        else:
            tensors = [TensorInfo(a, "float32", None) for a in args]
            for t in tensors:
                if t.name in arrays:
                    t.dtype = arrays[t.name].dtype.name
                elif t.name in values and isinstance(values[t.name], int):
                    t.dtype = "int64"
            model = FileModel(str(path), tensors, [], shapes=shapes, values=values, arrays=arrays,
                              seq_len=seq_len, batch=batch, script_path=path, script_args=args, validate=validate)
        model.metadata["torchscript"] = str(path)
        return model
    proto = load_onnx(path)
    info = inspect_proto(proto, str(path))
    return FileModel(str(path), info.inputs, info.outputs, proto=proto, onnx_path=path, info=info, shapes=shapes,
                     values=values, arrays=arrays, seq_len=seq_len, batch=batch, validate=validate)
