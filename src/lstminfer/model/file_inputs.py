"""A file's inputs at a point: its dims bound from ``--shapes``, ``--input`` and ``--inputs``, the rest from
the sequence and batch axes (``lstminfer.onnx.shapes.dim_roles``), every size checked before a runtime
sees it."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import TensorInfo
from lstminfer.onnx.shapes import format_dims

DEFAULT_SEQ_LEN = 16


class FileInputs:
    """The input half of ``FileModel``: the graph's inputs, the user's shapes, values and arrays.

    ``make_inputs(seq_len, batch, rng)`` builds inputs from the graph: fixed dims as they are, dims set by
    ``--shapes`` or by ``.npz`` arrays as given, other dims recognised as sequence or batch axes from
    ``seq_len`` / ``batch``; values from ``--input``/``--inputs`` where given, else random data of the
    input's dtype (a ``sequence_lens`` input: lengths in [1, seq_len]).
    """

    def __init__(self, inputs: list[TensorInfo], info: Any, shapes: dict[str, tuple[int, ...]] | None,
                 values: dict[str, Any] | None, arrays: dict[str, np.ndarray] | None, seq_len: int | None,
                 batch: int | None, validate: bool):
        self._inputs = inputs
        self.roles = dict(info.dim_roles) if info else {}
        self.length_inputs = list(info.length_inputs) if info else []
        self.values = dict(values or {})
        self.arrays = dict(arrays or {})
        self.shapes = dict(shapes or {})
        self._by_name = {i.name: i for i in inputs}
        self.bindings: dict[str, int] = {}
        self._bind_given()
        used = self._used_roles()
        fixed_seq = [self.bindings[d] for d, r in used.items() if r == "seq" and d in self.bindings]
        fixed_batch = [self.bindings[d] for d, r in used.items() if r == "batch" and d in self.bindings]
        self.seq_varies = any(r == "seq" and d not in self.bindings for d, r in used.items())
        self.batch_varies = any(r == "batch" and d not in self.bindings for d, r in used.items())
        # An axis the user cannot vary is labelled with its real size: bound by --shapes, else the size the
        # graph's recurrent node runs at (a fixed [512, 1, 64] input is 512x1, never a made-up 16x1).
        graph = dict(info.fixed_axes) if info else {}
        self.seq_len = seq_len if self.seq_varies and seq_len else (
            fixed_seq[0] if fixed_seq else (graph.get("seq") or seq_len or DEFAULT_SEQ_LEN))
        self.batch = batch if self.batch_varies and batch else (
            fixed_batch[0] if fixed_batch else (graph.get("batch") or batch or 1))
        if validate:  # every dim resolvable, or a UserError naming those unset
            self.input_shapes(self.seq_len, self.batch)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._inputs]

    def _used_roles(self) -> dict[str, str]:
        used = {d for i in self._inputs if i.dims for d in i.dims if isinstance(d, str)}
        return {d: r for d, r in self.roles.items() if d in used}

    # -- binding what the user gave --
    def _bind(self, dim: str, value: int, source: str) -> None:
        old = self.bindings.get(dim)
        if old is not None and old != value:
            raise UserError(f"{source} sets dim {dim!r} to {value}, but another input already set it to {old}")
        self.bindings[dim] = value

    def _bind_shape(self, name: str, shape: tuple[int, ...], source: str) -> None:
        if any(d <= 0 for d in shape):  # a runtime given a zero-sized dim may abort the whole process
            raise UserError(f"{source}: input {name!r} has shape {list(shape)}; every size must be >= 1")
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

    # -- inputs at a point --
    def input_shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        """Every input's shape at one point; a UserError names each dim still unset."""
        if seq_len <= 0 or batch <= 0:
            raise UserError(f"point {seq_len}x{batch}: sequence length and batch must be >= 1")
        shapes, unset = {}, []
        for info in self._inputs:
            if info.name in self.arrays:
                shapes[info.name] = tuple(self.arrays[info.name].shape)
            elif info.name in self.shapes:
                shapes[info.name] = self.shapes[info.name]
            elif info.dims is None:
                if info.name in self.values:
                    shapes[info.name] = ()
                else:
                    unset.append(f"{info.name} (no shape in the graph)")
            else:
                shapes[info.name] = tuple(self._dim(info, axis, d, seq_len, batch, unset)
                                          for axis, d in enumerate(info.dims))
        if unset:
            example = ",".join(f"{i.name}:{'x'.join('N' for _ in i.dims) if i.dims else 'AxB'}"
                               for i in self._inputs if any(u.startswith(i.name + " ") for u in unset))
            raise UserError(f"dims still unset: {'; '.join(unset)}; set them with --shapes {example} "
                            "(or give the arrays with --inputs FILE.npz)")
        return shapes

    def _dim(self, info: TensorInfo, axis: int, d: int | str, seq_len: int, batch: int, unset: list[str]) -> int:
        if isinstance(d, int):
            if d <= 0:
                unset.append(f"{info.name} dim {axis} (fixed at {d} in the graph; set it)")
            return d
        if d in self.bindings:
            return self.bindings[d]
        role = self.roles.get(d)
        if role is None:
            unset.append(f"{info.name} dim {axis} ({d})")
            return -1
        return seq_len if role == "seq" else batch

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = self.input_shapes(seq_len, batch)
        out = {}
        for info in self._inputs:
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
            elif info.name in self.length_inputs:  # sequence_lens: a length each sequence really has
                out[info.name] = rng.integers(1, seq_len + 1, shape).astype(dtype)
            else:
                out[info.name] = rng.integers(0, 4, shape).astype(dtype)
        return out

    # -- saying what was run --
    def shape_text(self, inputs: dict[str, Any]) -> str:
        """The real shapes of a feed: ``x:1x512x8, state:2x1x6`` (scalars left out)."""
        return ", ".join(f"{n}:{format_dims(np.shape(a))}" for n, a in inputs.items() if np.ndim(a)) or "scalars"

    def input_hint(self) -> str:
        """The inputs that got random integers: the likely cause when a runtime refuses a feed."""
        drawn = [i.name for i in self._inputs if i.name not in self.values and i.name not in self.arrays
                 and i.dtype in np.sctypeDict and np.dtype(i.dtype).kind in "iu"]
        if not drawn:
            return ""
        example = drawn[0]
        return (f" (integer input(s) {', '.join(drawn)} got random values: give them with --input "
                f"{example}=N or --inputs FILE.npz)")
