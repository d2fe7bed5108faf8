"""TensorRT optimization profiles: which inputs are dynamic, which axis is the sequence and which the batch
(the one rule ``inspect`` uses: ``lstminfer.onnx.shapes.dim_roles``), and min / opt / max shapes from the
points a runner serves or the user's trtexec-style overrides. Plain ONNX reading: no TensorRT needed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.model.base import TensorInfo
from lstminfer.onnx.inspect import export_batch_first, graph_axes, graph_inputs
from lstminfer.onnx.shapes import Shapes, dim_roles, format_dims

DEFAULT_MAX_SEQ_LEN = 512
DEFAULT_MAX_BATCH = 64


# ---- ONNX inputs and profiles -------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxInputs:
    """A file's real inputs (``TensorInfo``: anonymous dims named ``input[axis]``), its metadata_props,
    and the role of each symbolic dim by the one rule ``inspect`` uses (``lstminfer.onnx.shapes.dim_roles``)."""

    inputs: list[TensorInfo]
    metadata: dict[str, str]
    roles: dict[str, str]

    @property
    def dynamic(self) -> list[TensorInfo]:
        return [i for i in self.inputs if i.dims and any(isinstance(d, str) for d in i.dims)]

    def role(self, inp: TensorInfo, axis: int) -> str:
        d = inp.dims[axis]
        if d not in self.roles:
            raise UserError(f"cannot tell what dynamic axis {axis} of input {inp.name!r} ({d}) is: give "
                            "--min-shapes/--opt-shapes/--max-shapes for it")
        return self.roles[d]


def onnx_inputs(onnx_path: str | Path) -> OnnxInputs:
    """The real inputs of an ONNX file (initializers excluded), its metadata_props and its dims' roles."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; export one with `lstminfer export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a bad file
        raise UserError(f"{path} is not a readable ONNX file: {str(err).splitlines()[0] if str(err) else err}") from err
    inputs = graph_inputs(proto)
    roles = dim_roles(inputs, graph_axes(proto, inputs)[0], export_batch_first(proto))
    return OnnxInputs(inputs, {p.key: p.value for p in proto.metadata_props}, roles)


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile: min / opt / max shape of every dynamic input."""

    min: Shapes = field(default_factory=dict)
    opt: Shapes = field(default_factory=dict)
    max: Shapes = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {k: {n: list(d) for n, d in getattr(self, k).items()} for k in ("min", "opt", "max")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            return cls(**{k: {n: tuple(int(x) for x in d) for n, d in data[k].items()} for k in ("min", "opt", "max")})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"not an optimization profile: {data!r}") from err

    def describe(self) -> str:
        return "; ".join(f"{n}: {format_dims(self.min[n])} .. {format_dims(self.max[n])} "
                         f"(opt {format_dims(self.opt[n])})" for n in self.min)

    def check(self, shapes: dict[str, Sequence[int]]) -> None:
        """UserError naming the profile's range when a shape lies outside it."""
        for name, shape in shapes.items():
            if name not in self.min:
                continue
            lo, hi, shape = self.min[name], self.max[name], tuple(int(s) for s in shape)
            if len(shape) != len(lo):
                raise UserError(f"input {name!r} has {len(shape)} dimensions ({format_dims(shape)}); the engine's "
                                f"profile has {len(lo)} (min {format_dims(lo)}, max {format_dims(hi)})")
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                if any(s > b for s, b in zip(shape, hi)):
                    fix = f"--max-shapes {name}:{format_dims(tuple(max(s, b) for s, b in zip(shape, hi)))}"
                else:
                    fix = f"--min-shapes {name}:{format_dims(tuple(min(s, a) for s, a in zip(shape, lo)))}"
                raise UserError(f"input {name!r} has shape {format_dims(shape)}, outside the engine's profile "
                                f"(min {format_dims(lo)}, max {format_dims(hi)}); rebuild with {fix}")


def example_shape(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(seq_len, batch) that `lstminfer export` stored in the file, if it did."""
    m = re.fullmatch(r"(\d+)x(\d+)", metadata.get("lstminfer.example_shape", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def derive_profile(onnx_path: str | Path | None = None, seq_len: int | None = None, batch: int | None = None,
                   max_seq_len: int | None = None, max_batch: int | None = None,
                   min_shapes: Shapes | None = None, opt_shapes: Shapes | None = None,
                   max_shapes: Shapes | None = None, inputs: OnnxInputs | None = None,
                   points: Sequence[tuple[int, int]] = ()) -> Profile:
    """The default profile of a model's dynamic inputs, with the user's trtexec-style overrides on top.

    Sequence and batch axes: min 1, opt the bench shape (``seq_len``, ``batch``; default the first of
    ``points``, else the export's example shape), max the largest of ``points`` -- the points a runner
    must serve -- or, for an engine built on its own (``lstminfer build``), ``max(DEFAULT_MAX_SEQ_LEN,
    seq_len)`` / ``max(DEFAULT_MAX_BATCH, batch)``; ``max_seq_len`` / ``max_batch`` override either.
    Static axes keep their size. An input named in ``min_shapes`` etc. takes the user's shape.
    """
    if inputs is None:
        if onnx_path is None:
            raise ValueError("derive_profile needs onnx_path or inputs")
        inputs = onnx_inputs(onnx_path)
    if points:
        seq_len, batch = seq_len or points[0][0], batch or points[0][1]
    example = example_shape(inputs.metadata)
    by_name = {i.name: i for i in inputs.inputs}
    overrides = {"min": min_shapes or {}, "opt": opt_shapes or {}, "max": max_shapes or {}}
    for kind, given in overrides.items():
        for name, dims in given.items():
            if name not in by_name:
                raise UserError(f"--{kind}-shapes names {name!r}, which is not an input of the model "
                                f"(inputs: {', '.join(by_name) or 'none'})")
            _check_rank(by_name[name], dims, kind)
    needs_default = [i for i in inputs.dynamic if not all(i.name in overrides[k] for k in overrides)]
    roles = {inputs.role(i, axis) for i in needs_default for axis, d in enumerate(i.dims) if isinstance(d, str)}
    if "seq" in roles and seq_len is None:
        if example is None:
            raise UserError("the model has a dynamic sequence axis: give --seq-len (the length to optimize for)")
        seq_len = example[0]
    if "batch" in roles and batch is None:
        batch = example[1] if example else 1
    if points:
        largest = (max(max(s for s, _ in points), seq_len or 1), max(max(b for _, b in points), batch or 1))
    else:
        largest = (max(DEFAULT_MAX_SEQ_LEN, seq_len or 1), max(DEFAULT_MAX_BATCH, batch or 1))
    sizes = {"seq": (1, seq_len, max_seq_len or largest[0]), "batch": (1, batch, max_batch or largest[1])}
    out: dict[str, Shapes] = {"min": {}, "opt": {}, "max": {}}
    for inp in inputs.dynamic:
        for k, kind in enumerate(("min", "opt", "max")):
            if inp.name in overrides[kind]:
                out[kind][inp.name] = tuple(overrides[kind][inp.name])
                continue
            out[kind][inp.name] = tuple(d if isinstance(d, int) else int(sizes[inputs.role(inp, axis)][k])
                                        for axis, d in enumerate(inp.dims))
    profile = Profile(**out)
    _check_order(profile)
    return profile


def _check_rank(inp: TensorInfo, dims: Sequence[int], kind: str) -> None:
    if len(dims) != len(inp.dims):
        raise UserError(f"--{kind}-shapes {inp.name}:{format_dims(dims)} has {len(dims)} dimensions; "
                        f"the model's {inp.name} has {len(inp.dims)}")
    for axis, (d, static) in enumerate(zip(dims, inp.dims)):
        if isinstance(static, int) and d != static:
            raise UserError(f"--{kind}-shapes {inp.name}:{format_dims(dims)}: axis {axis} is fixed at {static} "
                            "in the model")


def _check_order(profile: Profile) -> None:
    for name in profile.min:
        lo, mid, hi = profile.min[name], profile.opt[name], profile.max[name]
        if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise UserError(f"profile for {name!r} must satisfy min <= opt <= max on every axis, got "
                            f"min {format_dims(lo)}, opt {format_dims(mid)}, max {format_dims(hi)}")


def shapes_at(profile: Profile, inputs: OnnxInputs, seq_len: int, batch: int) -> Shapes:
    """Concrete input shapes at one (seq_len, batch) point, for every dynamic input of the profile."""
    return {inp.name: tuple(d if isinstance(d, int) else (seq_len if inputs.role(inp, axis) == "seq" else batch)
                            for axis, d in enumerate(inp.dims))
            for inp in inputs.dynamic}
