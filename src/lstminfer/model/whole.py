"""A whole PyTorch model with nn.LSTM / nn.GRU layers anywhere inside (a CRNN, a speech encoder, a VAD).

``--model file.py:factory`` may return such a module, or ``(module, example_inputs)``.  Inputs are named
after the forward's parameters (a tuple argument ``hx`` becomes ``hx_0``, ``hx_1``), outputs ``output``
(one) or ``output_0``, ``output_1``, ... (the forward's result flattened, torch.onnx's order).  Which axes
are dynamic comes from ``--dynamic x:0=batch,1=seq`` or, by default, from probing: the first input's axes
are changed one at a time, and an axis whose change reaches the first recurrent layer's batch (time) axis
is the batch (sequence) axis.  A named axis that turns out not to be dynamic is refused in one line.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import Model, TensorInfo
from lstminfer.onnx.shapes import BATCH_DIM, SEQ_DIM, parse_shapes


def recurrent_layers(module: Any) -> list[tuple[str, Any]]:
    """(path, layer) of every nn.LSTM / nn.GRU inside `module` (itself included), in registration order."""
    import torch

    return [(path, m) for path, m in module.named_modules() if isinstance(m, (torch.nn.LSTM, torch.nn.GRU))]


def role_of(label: str) -> str | None:
    """"seq", "batch" or None for a dynamic axis' name (the rule symbolic dims of files follow too)."""
    if SEQ_DIM.search(label):
        return "seq"
    if BATCH_DIM.search(label):
        return "batch"
    return None


def flatten(value: Any) -> list[Any]:
    """A forward's result (tensor, tuple, list, dict, nested) as a flat list of tensors, torch.onnx's order."""
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten(v)]
    return [value]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class WholeModel(Model):
    """Any nn.Module with recurrent layers inside, with named example inputs and dynamic axes.

    args: the forward's positional arguments, each (name, number of tensors in it or None for one tensor);
    example: flattened input name -> float32 / integer array; dynamic: input name -> {axis: label}.
    """

    def __init__(self, name: str, module: Any, args: list[tuple[str, int | None]], example: dict[str, np.ndarray],
                 dynamic: dict[str, dict[int, str]], output_names: list[str], output_shapes: list[tuple],
                 seq_len: int | None = None, batch: int | None = None):
        super().__init__(name=name, spec=None, module=module, with_state=False)
        self.args = args
        self.example = example
        self.dynamic = dynamic
        self._output_names = output_names
        self.output_shapes = output_shapes
        seq, bat = self._example_sizes()
        self.seq_len = seq_len or seq
        self.batch = batch or bat
        if seq_len and not self.axes("seq"):
            raise UserError(f"--seq-len {seq_len}: {name} has no dynamic sequence axis; name one with --dynamic")
        if batch and not self.axes("batch"):
            raise UserError(f"--batch {batch}: {name} has no dynamic batch axis; name one with --dynamic")
        self.metadata = {"whole_model": True}

    # ---- names and shapes ---------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.example)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def name_outputs(self, count: int) -> list[str]:
        return self.output_names

    def _tensors(self) -> list[TensorInfo]:
        out = []
        for name, array in self.example.items():
            labels = self.dynamic.get(name, {})
            out.append(TensorInfo(name, array.dtype.name, [labels.get(a, d) for a, d in enumerate(array.shape)]))
        return out + [TensorInfo(n, "float32", list(s)) for n, s in zip(self._output_names, self.output_shapes)]

    @property
    def batch_first(self) -> bool:
        seq, batch = self.axes("seq").get(self.input_names[0]), self.axes("batch").get(self.input_names[0])
        return seq is not None and batch is not None and batch < seq

    @property
    def state_pairs(self) -> list:
        """The forward's own state: every input after the first whose shape an output repeats, paired from
        the end (``forward(x, h) -> (y, h)``); none when the model calls its recurrent layers without state."""
        from lstminfer.model.base import StatePair

        pairs, outputs = [], list(zip(self._output_names, self.output_shapes))[1:]
        for name in reversed(self.input_names[1:]):
            if not outputs or tuple(self.example[name].shape) != tuple(outputs[-1][1]):
                break
            pairs.append(StatePair(name, outputs.pop()[0], "model"))
        return pairs[::-1]

    def axes(self, role: str) -> dict[str, int]:
        """input name -> its axis with this role ("seq" or "batch")."""
        return {n: a for n, labels in self.dynamic.items() for a, lab in labels.items() if role_of(lab) == role}

    def _example_sizes(self) -> tuple[int, int]:
        first = self.input_names[0]
        shape = self.example[first].shape
        seq, batch = self.axes("seq").get(first), self.axes("batch").get(first)
        return (shape[seq] if seq is not None else 1), (shape[batch] if batch is not None else 1)

    def input_shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        seq_axes, batch_axes = self.axes("seq"), self.axes("batch")
        out = {}
        for name, array in self.example.items():
            shape = list(array.shape)
            if name in seq_axes:
                shape[seq_axes[name]] = seq_len
            if name in batch_axes:
                shape[batch_axes[name]] = batch
            out[name] = tuple(shape)
        return out

    def make_inputs(self, seq_len: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Standard-normal float inputs; integer inputs (lengths, flags) repeat the example's values."""
        out = {}
        for name, shape in self.input_shapes(seq_len, batch).items():
            example = self.example[name]
            if example.dtype.kind == "f":
                out[name] = rng.standard_normal(shape).astype(example.dtype)
            else:
                out[name] = np.resize(example, shape)
        return out

    def verify_points(self) -> list[tuple[int, int]]:
        """The example's shape, a longer sequence (2x + 1: odd, for strided front ends), another batch, and
        seq 1 where the model takes it; only the axes that are dynamic vary."""
        seq, batch = self.seq_len, self.batch
        points = [(seq, batch)]
        if self.axes("seq"):
            points.append((2 * seq + 1, batch))
            if seq > 1 and self._runs_at(1, batch):
                points.insert(0, (1, batch))
        if self.axes("batch"):
            points.append((seq, batch + 2))
        return points

    def _runs_at(self, seq_len: int, batch: int) -> bool:
        try:
            self.run(self.module, self.make_inputs(seq_len, batch, np.random.default_rng(0)))
        except Exception:  # any failure means "not a valid point"
            return False
        return True

    def stream_refusal(self) -> str:
        backward = [path or "(model)" for path, m in recurrent_layers(self.module) if m.bidirectional]
        if backward:
            return f"its recurrent layer {backward[0]} is bidirectional, and the backward direction needs the future"
        return ""

    # ---- calling the module ---------------------------------------------------------------------------
    def call_module(self, module: Any, tensors: list[Any]) -> list[Any]:
        """Call `module` (this model's module, or a copy on another device or dtype) with tensors in
        input_names order; the outputs flattened, in output_names order."""
        return flatten(module(*self.regroup(tensors)))

    def regroup(self, tensors: list[Any]) -> list[Any]:
        """Flat tensors (input_names order) back into the forward's arguments, a tuple argument as a tuple."""
        args, i = [], 0
        for _, count in self.args:
            args.append(tensors[i] if count is None else tuple(tensors[i:i + count]))
            i += 1 if count is None else count
        return args

    def run(self, module: Any, inputs: dict[str, np.ndarray], dtype: Any = None) -> list[Any]:
        """Host arrays in, the flattened outputs of `module` out (no autograd)."""
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
        if dtype is not None:
            tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
        with torch.no_grad():
            return self.call_module(module, tensors)

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        outputs = self.run(self._module64, inputs, torch.float64)
        return {n: t.numpy() for n, t in zip(self.output_names, outputs)}

    @cached_property
    def _module64(self) -> Any:
        return copy.deepcopy(self.module).double().eval()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["inputs"] = {n: [d for d in t.dims] for n, t in zip(self.input_names, self.inputs)}
        out["recurrent_layers"] = [f"{p or '(root)'}: {type(m).__name__}({m.input_size}, {m.hidden_size}, "
                                   f"num_layers={m.num_layers}, bidirectional={m.bidirectional})"
                                   for p, m in recurrent_layers(self.module)]
        return out


# ---- from a factory -------------------------------------------------------------------------------------------
def forward_params(module: Any) -> list[inspect.Parameter]:
    """The forward's positional parameters (self excluded)."""
    params = inspect.signature(module.forward).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in kinds]


def _named_example(module: Any, example: Any, ref: str) -> dict[str, Any]:
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


def _example_from_shapes(module: Any, text: str) -> dict[str, Any]:
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


def _flat_inputs(example: dict[str, Any]) -> tuple[list[tuple[str, int | None]], dict[str, np.ndarray]]:
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

    def rnn_input_shape(self, inputs: dict[str, np.ndarray]) -> tuple[tuple[int, ...] | None, bool]:
        """(shape of the first recurrent layer's input, its batch_first); raises what forward raises."""
        seen: list[tuple] = []

        def hook(layer: Any, args: tuple) -> None:
            if not seen:
                x = args[0]
                seen.append((tuple(x.shape) if hasattr(x, "shape") else None, layer.batch_first))

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

    def role(self, group: dict[str, int]) -> tuple[str | None, str]:
        """("batch" / "seq" / None, why not) when the axes in `group` are changed together."""
        first, axis = next(iter(group.items()))
        size = self.model.example[first].shape[axis]
        new = 2 * size + 2  # doubled and even: a stride-2 or -4 front end still changes the length
        base, batch_first = self.rnn_input_shape(self.model.example)
        try:
            changed, _ = self.rnn_input_shape(self.resized(group, new))
        except Exception as err:  # forward's own error: the axis is not dynamic
            return None, f"forward fails when it is {new} instead of {size} ({_first_line(err)})"
        if base is None or changed is None or len(base) != 3:
            return None, "the first recurrent layer does not take a 3-d tensor (PackedSequence?)"
        diff = [a for a in range(3) if base[a] != changed[a]]
        batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
        if batch_axis in diff:
            return "batch", ""
        if time_axis in diff:
            return "seq", ""
        return None, "the change does not reach the recurrent layer's batch or time axis"


def _default_dynamic(model: WholeModel) -> dict[str, dict[int, str]]:
    """The first input's batch and time axes, by probing; other inputs follow the batch where they must."""
    probe = _Probe(model)
    first = model.input_names[0]
    shape = model.example[first].shape
    found: dict[str, dict[int, str]] = {}
    for axis in range(len(shape)):
        role, _ = probe.role({first: axis})
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
        role, _ = probe.role(group)
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


def _check_dynamic(model: WholeModel) -> None:
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
                            f"of {size} ({_first_line(err)}); drop it from --dynamic") from None
    model.dynamic = {n: {a % model.example[n].ndim: lab for a, lab in d.items()} for n, d in model.dynamic.items()}


def whole_model(module: Any, example: Any, *, name: str = "model", shapes: str | None = None,
                dynamic: str | None = None, seq_len: int | None = None, batch: int | None = None) -> WholeModel:
    """A WholeModel from a module and its example inputs (or --shapes), dynamic axes given or probed."""
    if not recurrent_layers(module):
        raise UserError(f"{name}: found no nn.LSTM / nn.GRU inside the model; lstminfer runs models with "
                        "recurrent layers (check the factory returns the right module)")
    if shapes:
        example = _example_from_shapes(module, shapes)
    elif example is None:
        params = ", ".join(p.name for p in forward_params(module))
        raise UserError(f"{name}: give the example input shapes with --shapes NAME:AxBxC (forward takes {params}), "
                        "or return (module, example_inputs) from the factory")
    else:
        example = _named_example(module, example, name)
    args, flat = _flat_inputs(example)
    model = WholeModel(name, module, args, flat, {}, [], [])
    try:
        outputs = model.run(module, flat)
    except Exception as err:
        given = f"--shapes {shapes}" if shapes else "the example inputs"
        raise UserError(f"{given} do not fit {name}'s forward: {_first_line(err)}; fix the shapes") from None
    import torch

    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise UserError(f"{name}: forward must return tensors (a tensor, or tuples/lists/dicts of them)")
    model._output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    model.output_shapes = [tuple(t.shape) for t in outputs]
    if dynamic:
        model.dynamic = parse_dynamic(dynamic, model.input_names)
        _check_dynamic(model)
    else:
        model.dynamic = _default_dynamic(model)
    return WholeModel(name, module, args, flat, model.dynamic, model._output_names, model.output_shapes,
                      seq_len=seq_len, batch=batch)


def load_factory(ref: str, weights: str | None = None) -> tuple[Any, Any]:
    """Call ``--model``'s factory: (module in float32 eval mode, example inputs or None)."""
    import torch

    from lstminfer.model.user import _import_factory, load_weights

    factory: Callable[[], Any] = _import_factory(ref)
    try:
        result = factory()
    except Exception as err:
        raise UserError(f"--model: calling {ref} failed: {_first_line(err)}") from err
    module, example = (result if isinstance(result, tuple) and len(result) == 2 else (result, None))
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"--model: {ref} returned {type(module).__name__}, not a torch.nn.Module "
                        "(or a (module, example_inputs) pair)")
    if weights:
        load_weights(module, weights)
    return module.float().eval(), example


def module_or_whole(ref: str, weights: str | None = None, *, shapes: str | None = None, dynamic: str | None = None,
                    seq_len: int | None = None, batch: int | None = None) -> Any:
    """``--model``'s result: the bare nn.Module when it is one recurrent stack called like nn.LSTM (no example
    inputs, no --shapes or --dynamic: the ModelSpec path), else a WholeModel."""
    from lstminfer.model.spec import spec_of_module

    module, example = load_factory(ref, weights)
    if example is None and not shapes and not dynamic and spec_of_module(module) is not None:
        return module
    return whole_model(module, example, name=ref, shapes=shapes, dynamic=dynamic, seq_len=seq_len, batch=batch)
