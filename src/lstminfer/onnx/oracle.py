"""An independent oracle for ONNX graphs: onnx.reference on a float64 copy of the model.

It shares no code with torch, ONNX Runtime or cuDNN, so it catches export bugs the PyTorch reference
cannot.  onnx >= 1.23 implements LSTM/GRU correctly (bidirectional, reverse, Y_c, linear_before_reset);
it implements ``layout=1`` too, and silently ignores ``activations``, ``clip``, ``input_forget`` and
``sequence_lens``, so a graph that sets any of them makes the oracle "not applicable", never "passed"
(docs/verify.md).
"""

from __future__ import annotations

import warnings
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


def is_recurrent(node: Any) -> bool:
    """An ONNX LSTM/GRU/RNN node, or a contrib one (``com.microsoft`` ``DynamicQuantizeLSTM`` and kin)."""
    if node.domain in ("", "ai.onnx"):
        return node.op_type in RECURRENT_OPS
    return any(op in node.op_type for op in RECURRENT_OPS)


def oracle_gaps(op: str, domain: str, attrs: dict[str, Any], sequence_lens: bool) -> list[str]:
    """What onnx.reference would ignore or lack in one recurrent node: empty when it computes it faithfully.

    Checked on onnx 1.23: ``layout=1`` is implemented (it matches the layout=0 graph transposed,
    tests/test_file_classes.py); ``activations``, ``clip``, ``input_forget`` and ``sequence_lens`` are
    silently ignored; contrib operators are not implemented at all.
    """
    if domain not in ("", "ai.onnx"):
        return [f"the {domain} operator {op}"]
    gaps = []
    if attrs.get("clip") is not None:
        gaps.append("clip")
    if attrs.get("input_forget"):
        gaps.append("input_forget")
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations") or []]
    default = DEFAULT_ACTIVATIONS[op]
    if acts and [a.lower() for a in acts] != [a.lower() for a in default * max(1, len(acts) // len(default))]:
        gaps.append(f"activations {acts}")
    if sequence_lens:
        gaps.append("sequence_lens")
    return gaps


def applicable(proto: Any) -> tuple[bool, str]:
    """Whether onnx.reference computes this graph faithfully; (False, why) if it would ignore or lack something."""
    import onnx

    if tuple(int(p) for p in onnx.__version__.split(".")[:2]) < (1, 23):
        return False, f"onnx {onnx.__version__} computes LSTM/GRU wrongly; the oracle needs onnx >= 1.23"
    local = {f.domain for f in proto.functions}
    for node in _iter_nodes(proto.graph):
        if node.domain not in ("", "ai.onnx", *local) and not is_recurrent(node):
            return False, f"node {node.name or node.op_type} is the {node.domain} operator {node.op_type}, " \
                          "which onnx.reference does not implement"
        if not is_recurrent(node):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        gaps = oracle_gaps(node.op_type, node.domain, attrs, len(node.input) > 4 and bool(node.input[4]))
        if gaps:
            what = "lacks" if node.domain not in ("", "ai.onnx") else "ignores"
            return False, f"{node.op_type} node {node.name or '(unnamed)'}: onnx.reference {what} {', '.join(gaps)}"
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
        # numpy's sigmoid overflows exp() for large pre-activations and still returns the right 0 or 1:
        # that RuntimeWarning is noise on the user's terminal, not a finding.
        with np.errstate(over="ignore", under="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            outs = self.evaluator.run(None, feeds)
        return dict(zip(self.output_names, outs))
