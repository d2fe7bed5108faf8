"""A whole PyTorch model with nn.LSTM / nn.GRU layers anywhere inside (a CRNN, a speech encoder, a VAD).

``--model file.py:factory`` may return such a module, or ``(module, example_inputs)``.  Inputs are named
after the forward's parameters (a tuple argument ``hx`` becomes ``hx_0``, ``hx_1``), outputs ``output``
(one) or ``output_0``, ``output_1``, ... (the forward's result flattened, torch.onnx's order), a returned
state named after its input (``forward(x, h) -> (y, h)``: ``h`` -> ``h_out``).  Which axes
are dynamic comes from ``--dynamic x:0=batch,1=seq`` or, by default, from probing: the first input's axes
are changed one at a time, and an axis whose change reaches the first recurrent layer's batch (time) axis
is the batch (sequence) axis.  A named axis that turns out not to be dynamic is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import Model, TensorInfo
from lstminfer.model.probe import (
    check_dynamic,
    default_dynamic,
    example_from_shapes,
    first_line,
    flat_inputs,
    forward_params,
    named_example,
    parse_dynamic,
    recurrent_layers,
)
from lstminfer.onnx.shapes import BATCH_DIM, SEQ_DIM
from lstminfer.onnx.torchscript import flatten_outputs


def role_of(label: str) -> str | None:
    """"seq", "batch" or None for a dynamic axis' name (the rule symbolic dims of files follow too)."""
    if SEQ_DIM.search(label):
        return "seq"
    if BATCH_DIM.search(label):
        return "batch"
    return None


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

    def _tensors(self) -> list[TensorInfo]:
        out = []
        for name, array in self.example.items():
            labels = self.dynamic.get(name, {})
            out.append(TensorInfo(name, array.dtype.name, [labels.get(a, d) for a, d in enumerate(array.shape)]))
        return out + [TensorInfo(n, "float32", list(s)) for n, s in zip(self._output_names, self.output_shapes)]

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

    @property
    def notes(self) -> list[str]:
        missing = [role for role in ("seq", "batch") if not self.axes(role)]
        if not missing:
            return super().notes
        first, which = self.input_names[0], " or ".join(missing)
        return [*super().notes, f"{self.name}: no {which} axis found by probing {first}: it keeps the example's "
                f"size at every point (name it with --dynamic {first}:AXIS={missing[0]})"]

    def stream_refusal(self) -> str:
        backward = [path or "(model)" for path, m in recurrent_layers(self.module) if m.bidirectional]
        if backward:
            return f"its recurrent layer {backward[0]} is bidirectional, and the backward direction needs the future"
        return ""

    # ---- calling the module ---------------------------------------------------------------------------
    def call_module(self, module: Any, tensors: list[Any]) -> list[Any]:
        """Call `module` (this model's module, or a copy on another device or dtype) with tensors in
        input_names order; the outputs flattened, in output_names order."""
        return flatten_outputs(module(*self.regroup(tensors)))

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
        """Float64 PyTorch, integer inputs (lengths, flags) left as they are."""
        import torch

        outputs = self.run(self._module64, inputs, torch.float64)
        return {n: t.numpy() for n, t in zip(self.output_names, outputs)}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["inputs"] = {n: [d for d in t.dims] for n, t in zip(self.input_names, self.inputs)}
        out["recurrent_layers"] = [f"{p or '(root)'}: {type(m).__name__}({m.input_size}, {m.hidden_size}, "
                                   f"num_layers={m.num_layers}, bidirectional={m.bidirectional})"
                                   for p, m in recurrent_layers(self.module)]
        return out


# ---- from a factory -------------------------------------------------------------------------------------------
def whole_model(module: Any, example: Any, *, name: str = "model", shapes: str | None = None,
                dynamic: str | None = None, seq_len: int | None = None, batch: int | None = None) -> WholeModel:
    """A WholeModel from a module and its example inputs (or --shapes), dynamic axes given or probed."""
    if not recurrent_layers(module):
        raise UserError(f"{name}: found no nn.LSTM / nn.GRU inside the model; lstminfer runs models with "
                        "recurrent layers (check the factory returns the right module)")
    if shapes:
        example = example_from_shapes(module, shapes)
    elif example is None:
        params = ", ".join(p.name for p in forward_params(module))
        raise UserError(f"{name}: give the example input shapes with --shapes NAME:AxBxC (forward takes {params}), "
                        "or return (module, example_inputs) from the factory")
    else:
        example = named_example(module, example, name)
    args, flat = flat_inputs(example)
    model = WholeModel(name, module, args, flat, {}, [], [])
    try:
        outputs = model.run(module, flat)
    except Exception as err:
        given = f"--shapes {shapes}" if shapes else "the example inputs"
        raise UserError(f"{given} do not fit {name}'s forward: {first_line(err)}; fix the shapes") from None
    import torch

    if not outputs or not all(isinstance(t, torch.Tensor) for t in outputs):
        raise UserError(f"{name}: forward must return tensors (a tensor, or tuples/lists/dicts of them)")
    model._output_names = names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    model.output_shapes = [tuple(t.shape) for t in outputs]
    # the state the forward returns is named after its input (h -> h_out): the name rule files follow pairs them
    for pair in model.state_pairs:
        names[names.index(pair.output)] = f"{pair.input}_out"
    rest = [n for n in names if n.startswith("output_")]
    if len(rest) == 1:
        names[names.index(rest[0])] = "output"
    if dynamic:
        model.dynamic = parse_dynamic(dynamic, model.input_names)
        check_dynamic(model)
    else:
        model.dynamic = default_dynamic(model)
    return WholeModel(name, module, args, flat, model.dynamic, model._output_names, model.output_shapes,
                      seq_len=seq_len, batch=batch)


def load_factory(ref: str, weights: str | None = None) -> tuple[Any, Any]:
    """Call ``--model``'s factory: (module in float32 eval mode, example inputs or None)."""
    import torch

    from lstminfer.model.user import _import_factory, _user_code, load_weights

    factory: Callable[[], Any] = _import_factory(ref)
    with _user_code(f"calling {ref}"):  # its errors and sys.exit become one line
        result = factory()
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
