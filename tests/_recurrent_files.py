"""Model files built in the tests (nothing is downloaded): a streaming VAD-like model exported from PyTorch,
and hand-written ONNX graphs that set the LSTM attributes runtimes disagree on."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

FEATURES, HIDDEN = 8, 6


def vad_module():
    """Pointwise conv front end -> LSTM -> linear head; state [2, batch, H] = (h, c); scalar inputs sr, gain
    with a data-dependent branch (an If node once scripted)."""
    import torch

    class Vad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(FEATURES, 12, kernel_size=1)  # time-local: chunking cannot change it
            self.lstm = torch.nn.LSTM(12, HIDDEN)
            self.head = torch.nn.Linear(HIDDEN, 1)

        def forward(self, x, state, sr, gain):
            if sr == 8000:
                x = x * 0.5
            else:
                x = x * gain
            y = torch.relu(self.conv(x.transpose(1, 2))).permute(2, 0, 1)
            out, (h, c) = self.lstm(y, (state[0:1], state[1:2]))
            prob = torch.sigmoid(self.head(out)).permute(1, 0, 2)
            return prob, torch.cat([h, c], 0)

    torch.manual_seed(0)
    return Vad().eval()


def export_vad(directory: Path) -> tuple[Path, Path, object]:
    """(vad.onnx, vad.pt, the eager module)."""
    import torch

    module = vad_module()
    scripted = torch.jit.script(module)
    pt = directory / "vad.pt"
    scripted.save(str(pt))
    onnx_path = directory / "vad.onnx"
    args = (torch.randn(1, 5, FEATURES), torch.zeros(2, 1, HIDDEN), torch.tensor(16000), torch.tensor(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning
        torch.onnx.export(scripted, args, str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["x", "state", "sr", "gain"], output_names=["prob", "stateN"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "state": {1: "batch"},
                                        "prob": {0: "batch", 1: "time"}, "stateN": {1: "batch"}})
    return onnx_path, pt, module


def lstm_proto(*, layout: int = 0, clip: float | None = None, activations: list[str] | None = None,
               input_forget: int = 0, sequence_lens: bool = False, peepholes: bool = False,
               direction: str = "forward", op: str = "LSTM", hidden: int = 4, features: int = 3, seed: int = 0):
    """One recurrent node with state inputs h0 (, c0) and outputs Y, hn (, cn); dims seq and batch symbolic."""
    from onnx import TensorProto, helper, numpy_helper

    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(seed)
    f32 = TensorProto.FLOAT

    def init(name, shape):
        return numpy_helper.from_array((0.5 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [init("W", (dirs, gates * hidden, features)), init("R", (dirs, gates * hidden, hidden)),
             init("B", (dirs, 2 * gates * hidden))]
    x_dims = ["batch", "seq", features] if layout else ["seq", "batch", features]
    s_dims = ["batch", dirs, hidden] if layout else [dirs, "batch", hidden]
    inputs = [helper.make_tensor_value_info("X", f32, x_dims), helper.make_tensor_value_info("h0", f32, s_dims)]
    node_in = ["X", "W", "R", "B", "", "h0"]
    outputs = [helper.make_tensor_value_info("Y", f32, None), helper.make_tensor_value_info("hn", f32, s_dims)]
    node_out = ["Y", "hn"]
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]))
        node_in[4] = "lens"
    if op == "LSTM":
        inputs.append(helper.make_tensor_value_info("c0", f32, s_dims))
        outputs.append(helper.make_tensor_value_info("cn", f32, s_dims))
        node_in.append("c0")
        node_out.append("cn")
        if peepholes:
            inits.append(init("P", (dirs, 3 * hidden)))
            node_in.append("P")
    attrs = {"hidden_size": hidden, "direction": direction, "layout": layout}
    if clip is not None:
        attrs["clip"] = clip
    if activations:
        attrs["activations"] = activations
    if input_forget:
        attrs["input_forget"] = input_forget
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(op, node_in, node_out, name=f"{op.lower()}_0", **attrs)
    outputs[0] = helper.make_tensor_value_info("Y", f32, ["seq", dirs, "batch", hidden] if not layout
                                               else ["batch", "seq", dirs, hidden])
    graph = helper.make_graph([node], "rnn", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="tests")
    model.ir_version = 8
    return model


def if_proto():
    """An LSTM in each branch of an If: recurrent nodes live inside subgraphs."""
    from onnx import TensorProto, helper

    base = lstm_proto()
    branches = []
    for name, seed in (("then", 1), ("else", 2)):
        inner = lstm_proto(seed=seed)
        node = inner.graph.node[0]
        node.name = f"lstm_{name}"
        for init in inner.graph.initializer:
            init.name = f"{init.name}_{name}"
        node.input[1], node.input[2], node.input[3] = f"W_{name}", f"R_{name}", f"B_{name}"
        node.output[:] = [f"Y_{name}", f"hn_{name}", f"cn_{name}"]
        branches.append(helper.make_graph([node], f"{name}_branch", [], [
            helper.make_tensor_value_info(f"hn_{name}", TensorProto.FLOAT, None)], list(inner.graph.initializer)))
    cond = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    if_node = helper.make_node("If", ["flag"], ["hn"], name="pick", then_branch=branches[0], else_branch=branches[1])
    graph = helper.make_graph([if_node], "if_graph", [*base.graph.input[:3], cond],
                              [helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def no_rnn_proto():
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def save(proto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def quantized_lstm_proto(hidden: int = 4, features: int = 3, seed: int = 0):
    """ONNX Runtime's contrib com.microsoft DynamicQuantizeLSTM (int8 weights, W as [dirs, input, 4H])."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def arr(name, values):
        return numpy_helper.from_array(np.asarray(values), name)

    inits = [arr("W", rng.integers(-20, 20, (1, features, 4 * hidden)).astype(np.int8)),
             arr("R", rng.integers(-20, 20, (1, hidden, 4 * hidden)).astype(np.int8)),
             arr("B", (0.1 * rng.standard_normal((1, 8 * hidden))).astype(np.float32)),
             arr("W_scale", np.full((1,), 0.02, np.float32)), arr("W_zp", np.zeros((1,), np.int8)),
             arr("R_scale", np.full((1,), 0.02, np.float32)), arr("R_zp", np.zeros((1,), np.int8))]
    f32 = TensorProto.FLOAT
    node = helper.make_node("DynamicQuantizeLSTM", ["X", "W", "R", "B", "", "h0", "c0", "", "W_scale", "W_zp",
                                                    "R_scale", "R_zp"], ["Y", "hn", "cn"], name="qlstm",
                            domain="com.microsoft", hidden_size=hidden)
    state = [1, "batch", hidden]
    graph = helper.make_graph([node], "qlstm", [helper.make_tensor_value_info("X", f32, ["seq", "batch", features]),
                                                helper.make_tensor_value_info("h0", f32, state),
                                                helper.make_tensor_value_info("c0", f32, state)],
                              [helper.make_tensor_value_info("Y", f32, ["seq", 1, "batch", hidden]),
                               helper.make_tensor_value_info("hn", f32, state),
                               helper.make_tensor_value_info("cn", f32, state)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def renamed_state_proto():
    """What exporters write for a state fed back: the input's dims fixed, the output's dims named by the
    exporter (``[1, batch, 4]`` in, ``[AddhN_dim_0, batch, AddhN_dim_2]`` out)."""
    proto = lstm_proto(op="GRU")
    out = proto.graph.output[1]
    for axis, name in ((0, "AddhN_dim_0"), (2, "AddhN_dim_2")):
        out.type.tensor_type.shape.dim[axis].Clear()
        out.type.tensor_type.shape.dim[axis].dim_param = name
    return proto


def anonymous_dims_proto():
    """The LSTM test graph with every dynamic dim unnamed (no dim_param): roles come from the graph."""
    proto = lstm_proto()
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    return proto


def fixed_window_proto(window: int = 16):
    """A symbolic `time` axis the graph only accepts at `window` steps (X + a [window, 1, 3] constant)."""
    from onnx import TensorProto, helper, numpy_helper

    proto = lstm_proto()
    offset = numpy_helper.from_array(np.zeros((window, 1, 3), np.float32), "offset")
    proto.graph.initializer.append(offset)
    proto.graph.node.insert(0, helper.make_node("Add", ["X", "offset"], ["X_windowed"]))
    proto.graph.node[1].input[0] = "X_windowed"
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "time"
    del proto.graph.output[0].type.tensor_type.shape.dim[:]
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    return proto


def oracle_lacks_proto():
    """The LSTM test graph plus GlobalLpPool, an operator onnx.reference 1.23 has no implementation of."""
    from onnx import TensorProto, helper

    proto = lstm_proto()
    proto.graph.node.append(helper.make_node("GlobalLpPool", ["hn"], ["pooled"]))
    proto.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, "batch", 1]))
    return proto
