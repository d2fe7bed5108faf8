"""A whole model's example inputs and dynamic axes: named from the forward's signature, given (``--shapes``,
``--dynamic``) or found by probing (model/whole.py says how)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.onnx.shapes import parse_shapes

if TYPE_CHECKING:
    from lstminfer.model.whole import WholeModel


def recurrent_layers(module: Any) -> list[tuple[str, Any]]:
    """(path, layer) of every nn.LSTM / nn.GRU inside `module` (itself included), in registration order."""
    import torch

    return [(path, m) for path, m in module.named_modules() if isinstance(m, (torch.nn.LSTM, torch.nn.GRU))]


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def forward_params(module: Any) -> list[inspect.Parameter]:
    """The forward's positional parameters (self excluded)."""
    params = inspect.signature(module.forward).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds]


def named_example(module: Any, example: Any, ref: str) -> dict[str, Any]:
    """The factory's example inputs (a tensor, a tuple or a dict) named after the forward's parameters."""
    import torch

    params = [p.name for p in forward_params(module)]
    if isinstance(example, torch.Tensor):
        example = (example,)
    if isinstance(example, dict):
        unknown = sorted(set(example) - set(params))
        if unknown:
            raise UserError(f"--model {ref}: example inputs name {', '.join(unknown)}, which forward does not take "
                            f"(it takes {', '.join(params)})")
        return dict(example)
    if not isinstance(example, (tuple, list)):
        raise UserError(f"--model {ref}: the example inputs are a {type(example).__name__}; give a tensor, a tuple "
                        "or a dict of tensors")
    if len(example) > len(params):
        raise UserError(f"--model {ref}: {len(example)} example inputs, but forward takes {len(params)} "
                        f"({', '.join(params)})")
    return dict(zip(params, example))


def example_from_shapes(module: Any, text: str) -> dict[str, Any]:
    """``--shapes x:1x16x40`` -> standard-normal float32 tensors named like forward's parameters."""
    import torch

    shapes = parse_shapes(text)
    params = forward_params(module)
    names = [p.name for p in params]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UserError(f"--shapes names {', '.join(unknown)}, which forward does not take; it takes "
                        f"{', '.join(names)}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in shapes]
    if missing:
        raise UserError(f"--shapes: forward({', '.join(names)}) needs {', '.join(missing)} too; add "
                        f"{','.join(m + ':AxB' for m in missing)}")
    generator = torch.Generator().manual_seed(0)
    return {n: torch.randn(shapes[n], generator=generator) for n in names if n in shapes}


def flat_inputs(example: dict[str, Any]) -> tuple[list[tuple[str, int | None]], dict[str, np.ndarray]]:
    import torch

    args, flat = [], {}
    for name, value in example.items():
        if isinstance(value, torch.Tensor):
            args.append((name, None))
            flat[name] = value.detach().cpu().numpy()
        elif isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
            args.append((name, len(value)))
            flat.update({f"{name}_{i}": v.detach().cpu().numpy() for i, v in enumerate(value)})
        else:
            raise UserError(f"example input {name!r} is a {type(value).__name__}: inputs must be tensors or tuples "
                            "of tensors")
    for name, array in flat.items():
        if array.dtype.kind == "f" and array.dtype != np.float32:
            flat[name] = array.astype(np.float32)
    return args, flat


class _Probe:
    """Runs the module on changed inputs and sees what reaches the first recurrent layer."""

    def __init__(self, model: WholeModel):
        self.model = model
        self._base: tuple | None = None  # what the example itself gives the recurrent layer

    def rnn_input_shape(self, inputs: dict[str, np.ndarray]) -> tuple[tuple[int, ...] | None, bool]:
        """(shape of the first recurrent layer's input, its batch_first); raises what forward raises."""
        seen: list[tuple] = []

        def hook(layer: Any, args: tuple) -> None:
            if not seen:
                x = args[0]
                if hasattr(x, "batch_sizes"):  # a PackedSequence: its (time, batch, features), time first
                    seen.append(((len(x.batch_sizes), int(x.batch_sizes[0]), x.data.shape[-1]), False))
                else:
                    seen.append((tuple(x.shape), layer.batch_first))

        handles = [m.register_forward_pre_hook(hook) for _, m in recurrent_layers(self.model.module)]
        try:
            self.model.run(self.model.module, inputs)
        finally:
            for h in handles:
                h.remove()
        return seen[0] if seen else (None, False)

    def resized(self, group: dict[str, int], new: int) -> dict[str, np.ndarray]:
        inputs = dict(self.model.example)
        for name, axis in group.items():
            shape = list(inputs[name].shape)
            shape[axis] = new
            inputs[name] = np.resize(inputs[name], shape)
        return inputs

    def role(self, group: dict[str, int]) -> str | None:
        """"batch" or "seq" when changing the axes in `group` together changes the recurrent layer's batch or
        time axis; None when forward fails (not dynamic) or the change does not reach either."""
        first, axis = next(iter(group.items()))
        new = 2 * self.model.example[first].shape[axis] + 2  # doubled, even: a stride-2 or -4 front end follows
        if self._base is None:
            self._base = self.rnn_input_shape(self.model.example)
        base, batch_first = self._base
        try:
            changed, _ = self.rnn_input_shape(self.resized(group, new))
        except Exception:  # forward's own error: the axis is not dynamic
            return None
        if base is None or changed is None or len(base) != 3:
            return None
        diff = [a for a in range(3) if base[a] != changed[a]]
        batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
        if batch_axis in diff:
            return "batch"
        return "seq" if time_axis in diff else None


def default_dynamic(model: WholeModel) -> dict[str, dict[int, str]]:
    """The first input's batch and time axes, by probing; other inputs follow the batch where they must."""
    probe = _Probe(model)
    first = model.input_names[0]
    shape = model.example[first].shape
    found: dict[str, dict[int, str]] = {}
    for axis in range(len(shape)):
        role = probe.role({first: axis})
        group = {first: axis}
        if role is None and len(model.input_names) > 1:
            group, role = _with_partners(probe, model, first, axis)
        label = {"batch": "batch", "seq": "seq"}.get(role or "")
        if label and label not in {lab for d in found.values() for lab in d.values()}:
            for name, a in group.items():
                found.setdefault(name, {})[a] = label
    return found


def _with_partners(probe: _Probe, model: WholeModel, first: str, axis: int) -> tuple[dict[str, int], str | None]:
    """The first input's axis together with an equal-sized axis of every other input (a state's batch)."""
    size = model.example[first].shape[axis]
    candidates = {n: [a for a, d in enumerate(model.example[n].shape) if d == size] for n in model.input_names[1:]}
    candidates = {n: c for n, c in candidates.items() if c}
    for k in range(max((len(c) for c in candidates.values()), default=0)):
        group = {first: axis, **{n: c[min(k, len(c) - 1)] for n, c in candidates.items()}}
        role = probe.role(group)
        if role:
            return group, role
    return {first: axis}, None


def parse_dynamic(text: str, names: list[str]) -> dict[str, dict[int, str]]:
    """``x:0=batch,1=seq,h:1=batch`` -> {"x": {0: "batch", 1: "seq"}, "h": {1: "batch"}}."""
    out: dict[str, dict[int, str]] = {}
    current = None
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if ":" in item:
            current, _, item = item.rpartition(":")
        axis, sep, label = item.partition("=")
        if current is None or not sep or not label.strip() or not axis.strip().lstrip("-").isdigit():
            raise UserError(f"--dynamic {text!r}: expected NAME:AXIS=LABEL,AXIS=LABEL (e.g. x:0=batch,1=seq)")
        if current not in names:
            raise UserError(f"--dynamic names {current!r}, which is not an input; the inputs are {', '.join(names)}")
        out.setdefault(current, {})[int(axis)] = label.strip()
    return out


def check_dynamic(model: WholeModel) -> None:
    """Every axis the user called dynamic must be: forward runs with all axes of one label changed."""
    probe = _Probe(model)
    by_label: dict[str, dict[str, int]] = {}
    for name, labels in model.dynamic.items():
        rank = model.example[name].ndim
        for axis, label in labels.items():
            if not -rank <= axis < rank:
                raise UserError(f"--dynamic {name}:{axis}={label}: {name} has {rank} axes (0..{rank - 1})")
            by_label.setdefault(label, {})[name] = axis % rank
    for label, group in by_label.items():
        first, axis = next(iter(group.items()))
        size = model.example[first].shape[axis]
        new = 2 * size + 2
        try:
            model.run(model.module, probe.resized(group, new))
        except Exception as err:
            where = ", ".join(f"{n} axis {a}" for n, a in group.items())
            raise UserError(f"--dynamic: {where} ({label}) is not dynamic: forward fails when it is {new} instead "
                            f"of {size} ({first_line(err)}); drop it from --dynamic") from None
    model.dynamic = {n: {a % model.example[n].ndim: lab for a, lab in d.items()} for n, d in model.dynamic.items()}
