"""An independent oracle for ONNX graphs: onnx.reference on a float64 copy of the model.

It shares no code with torch, ONNX Runtime or cuDNN, so it catches export bugs the PyTorch reference
cannot.  onnx >= 1.23 implements LSTM/GRU correctly (bidirectional, reverse, Y_c, linear_before_reset);
it silently ignores ``activations``, ``clip``, ``input_forget`` and ``sequence_lens``, so a graph that sets
any of them makes the oracle "not applicable", never "passed" (FACTS.md section 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstminfer.errors import UserError

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _iter_nodes(graph: Any):
    """Every node, subgraphs (If / Loop / Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _iter_nodes(attr.g)
            for g in attr.graphs:
                yield from _iter_nodes(g)


def applicable(proto: Any) -> tuple[bool, str]:
    """Whether onnx.reference computes this graph faithfully; (False, why) if it would ignore something."""
    import onnx

    if tuple(int(p) for p in onnx.__version__.split(".")[:2]) < (1, 23):
        return False, f"onnx {onnx.__version__} computes LSTM/GRU wrongly; the oracle needs onnx >= 1.23"
    for node in _iter_nodes(proto.graph):
        if node.op_type not in RECURRENT_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if "clip" in attrs:
            return False, f"{where} sets clip, which onnx.reference ignores"
        if attrs.get("input_forget", 0):
            return False, f"{where} sets input_forget, which onnx.reference ignores"
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        default = DEFAULT_ACTIVATIONS[node.op_type]
        if acts and [a.lower() for a in acts] != [a.lower() for a in default * (len(acts) // len(default))]:
            return False, f"{where} sets non-default activations {acts}, which onnx.reference ignores"
        if len(node.input) > 4 and node.input[4]:
            return False, f"{where} takes sequence_lens, which onnx.reference ignores"
        if attrs.get("layout", 0):
            return False, f"{where} uses layout=1, which onnx.reference does not implement"
    return True, ""


def to_float64(proto: Any) -> Any:
    """A copy of the graph computing in float64: initializers, Constants, Casts and I/O types."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)

    def convert_tensor(t: Any) -> None:
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            arr = numpy_helper.to_array(t).astype(np.float64)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def convert_graph(graph: Any) -> None:
        for init in graph.initializer:
            convert_tensor(init)
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                tt.elem_type = TensorProto.DOUBLE
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i in (
                        TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
                    attr.i = TensorProto.DOUBLE
                if node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value":
                    convert_tensor(attr.t)
                if attr.g is not None and attr.g.node:
                    convert_graph(attr.g)
                for g in attr.graphs:
                    convert_graph(g)

    convert_graph(model.graph)
    return model


class Float64Reference:
    """onnx.reference.ReferenceEvaluator on a float64 copy of an ONNX model."""

    def __init__(self, proto: Any):
        from onnx.reference import ReferenceEvaluator

        ok, why = applicable(proto)
        if not ok:
            raise UserError(f"onnx.reference is not applicable: {why}")
        self.proto = to_float64(proto)
        self.output_names = [o.name for o in self.proto.graph.output]
        self.evaluator = ReferenceEvaluator(self.proto)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: (v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v) for k, v in inputs.items()}
        outs = self.evaluator.run(None, feeds)
        return dict(zip(self.output_names, outs))
