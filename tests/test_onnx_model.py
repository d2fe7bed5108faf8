"""lstminfer.onnx.inspect and model.file: reading any ONNX / TorchScript file, its inputs, recurrent nodes,
state pairs, capability, and the FileModel's inputs and reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _recurrent_files import FEATURES, HIDDEN, export_vad, if_proto, lstm_proto, no_rnn_proto, save
from lstminfer.errors import UserError
from lstminfer.model.base import TensorInfo
from lstminfer.model.file import FileModel, load_model_file
from lstminfer.onnx.inspect import find_state_pairs, inspect_file
from lstminfer.onnx.load import load_onnx
from lstminfer.onnx.shapes import parse_shapes, parse_values


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return export_vad(tmp_path_factory.mktemp("vad"))


# ---- inspect ---------------------------------------------------------------------------------------------------
def test_inspect_exported_model(vad):
    info = inspect_file(vad[0])
    assert [(i.name, i.dtype, i.dims) for i in info.inputs] == [
        ("x", "float32", ["batch", "time", FEATURES]), ("state", "float32", [2, "batch", HIDDEN]),
        ("sr", "int64", []), ("gain", "float32", [])]
    assert [o.name for o in info.outputs] == ["prob", "stateN"]
    assert info.opset["ai.onnx"] == 17
    assert [(n.op, n.hidden_size, n.direction, n.where, n.layer) for n in info.recurrent] == [
        ("LSTM", HIDDEN, "forward", "main graph", 1)]
    assert [(p.input, p.output) for p in info.state_pairs] == [("state", "stateN")]
    assert info.dim_roles == {"batch": "batch", "time": "seq"}
    assert info.oracle == (True, "")
    proto = load_onnx(vad[0])
    assert "If" in {n.op_type for n in proto.graph.node}  # the scripted branch on sr became an If


def test_recurrent_nodes_inside_if_branches(tmp_path):
    info = inspect_file(save(if_proto(), tmp_path / "if.onnx"))
    where = sorted((n.name, n.where) for n in info.recurrent)
    assert where == [("lstm_else", "If 'pick' else_branch"), ("lstm_then", "If 'pick' then_branch")]


def test_stacked_layers_are_numbered(tmp_path):
    import onnx
    from onnx import helper

    first = lstm_proto(features=3, hidden=3)
    second = lstm_proto(features=3, hidden=3, seed=1).graph.node[0]
    # Y [seq, 1, batch, H] -> Squeeze(axis 1) -> the second layer's X
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    first.graph.initializer.append(axes)
    first.graph.node.append(helper.make_node("Squeeze", ["Y", "axes"], ["Y1"]))
    second.input[0] = "Y1"
    second.name = "lstm_1"
    second.output[:] = ["Y2", "", ""]
    second.input[1:] = ["W", "R", "B"]
    first.graph.node.append(second)
    info = inspect_file(save(first, tmp_path / "two.onnx"))
    assert [(n.name, n.layer) for n in info.recurrent] == [("lstm_0", 1), ("lstm_1", 2)]


@pytest.mark.parametrize("options, backend, expected", [
    ({"layout": 1}, "onnxruntime", "no: layout=1"),
    ({"layout": 1}, "tensorrt", "no: layout=1"),
    ({"layout": 1}, "onnx-reference", "yes"),  # onnx 1.23 implements layout=1 (test_file_classes.py)
    ({"clip": 1.0}, "onnxruntime", "yes"),
    ({"clip": 1.0}, "tensorrt", "yes"),
    ({"clip": 1.0}, "onnx-reference", "not applicable: ignores clip"),
    ({"activations": ["Relu", "Tanh", "Tanh"]}, "onnx-reference", "not applicable: ignores activations"),
    ({"activations": ["Affine", "Tanh", "Tanh"]}, "tensorrt", "no: activation Affine"),
    ({"input_forget": 1}, "tensorrt", "no: input_forget=1"),
    ({"sequence_lens": True}, "onnx-reference", "not applicable: ignores sequence_lens"),
    ({"sequence_lens": True}, "tensorrt", "yes"),
    ({"peepholes": True}, "onnx-reference", "yes"),
    ({"direction": "bidirectional", "activations": ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"]},
     "tensorrt", "no: different activations in the two directions"),
    ({"direction": "bidirectional"}, "stream", "no: a bidirectional layer"),
    ({}, "stream", "yes"),
])
def test_capability_per_backend(tmp_path, options, backend, expected):
    info = inspect_file(save(lstm_proto(**options), tmp_path / "m.onnx"))
    (node,) = info.recurrent
    assert node.capability[backend].startswith(expected)


def test_capability_matches_onnxruntime(tmp_path):
    """The onnxruntime column says what ORT actually does: layout=1 refused, the rest run."""
    import onnxruntime as ort

    for options in ({"layout": 1}, {"clip": 1.0}, {"input_forget": 1}, {"peepholes": True}):
        proto = lstm_proto(**options)
        claim = inspect_file(save(proto, tmp_path / "m.onnx")).recurrent[0].capability["onnxruntime"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        try:
            ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
            accepted = True
        except Exception:
            accepted = False
        assert accepted == (claim == "yes"), options


def test_no_recurrent_node_is_said_and_still_runs(tmp_path):
    path = save(no_rnn_proto(), tmp_path / "plain.onnx")
    model = load_model_file(path)
    assert any("no recurrent node" in n for n in model.notes)
    inputs = model.make_inputs(1, 3, np.random.default_rng(0))
    np.testing.assert_allclose(model.reference(inputs)["y"], np.maximum(inputs["x"], 0))


# ---- bad files ---------------------------------------------------------------------------------------------------
def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("hello, this is text\n")
    with pytest.raises(UserError, match="is not an ONNX file"):
        load_onnx(path)


def test_truncated_file(vad, tmp_path):
    data = vad[0].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is truncated"):
        load_onnx(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        load_onnx(path)


def test_checker_failure(tmp_path):
    proto = lstm_proto()
    proto.graph.node[0].input[1] = "W_missing"  # a weight nobody produces
    with pytest.raises(UserError, match="fails onnx.checker"):
        load_onnx(save(proto, tmp_path / "bad.onnx"))


def test_missing_file():
    with pytest.raises(UserError, match="no such file"):
        load_onnx("/nonexistent/model.onnx")


def test_torchscript_that_is_not_one(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("not torchscript")
    with pytest.raises(UserError, match="is not a TorchScript file"):
        load_model_file(path)


def test_torch_save_checkpoint_is_not_torchscript(tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="torch.save checkpoint"):
        load_model_file(path)


# ---- shapes, values, arrays ---------------------------------------------------------------------------------------
def test_parse_shapes_trtexec_syntax():
    assert parse_shapes("x:1x16x8,state:2x1x6,sr:") == {"x": (1, 16, 8), "state": (2, 1, 6), "sr": ()}
    assert parse_shapes("encoder:input:4x2") == {"encoder:input": (4, 2)}  # the name ends at the last colon
    with pytest.raises(UserError, match="is not name:AxBxC"):
        parse_shapes("x")
    with pytest.raises(UserError, match="positive integers"):
        parse_shapes("x:1xA")


@settings(max_examples=50, deadline=None)
@given(name=st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs", "Zs", "Cc")), min_size=1,
                    max_size=12),
       dims=st.lists(st.integers(1, 4096), max_size=5))
def test_parse_shapes_round_trip(name, dims):
    name = name.strip("'") or "x"  # trtexec's quotes around a name are dropped
    assert parse_shapes(f"{name}:{'x'.join(map(str, dims))}") == {name: tuple(dims)}


def test_parse_values():
    assert parse_values(["sr=16000", "gain=0.5", "flag=true"]) == {"sr": 16000, "gain": 0.5, "flag": 1}
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_values(["sr"])
    with pytest.raises(UserError, match="not a number"):
        parse_values(["sr=fast"])


def test_make_inputs_from_the_graph(vad):
    model = load_model_file(vad[0], values={"sr": 16000, "gain": 1.0})
    inputs = model.make_inputs(7, 2, np.random.default_rng(0))
    assert {k: (v.shape, v.dtype.name) for k, v in inputs.items()} == {
        "x": ((2, 7, FEATURES), "float32"), "state": ((2, 2, HIDDEN), "float32"),
        "sr": ((), "int64"), "gain": ((), "float32")}
    assert inputs["sr"] == 16000
    assert model.verify_points() == [(16, 1), (64, 1), (16, 3)]


def test_shapes_fix_the_free_axes(vad):
    model = load_model_file(vad[0], shapes="x:2x5x8")
    assert (model.seq_len, model.batch) == (5, 2)
    assert model.verify_points() == [(5, 2)]  # nothing left to vary
    assert model.make_inputs(5, 2, np.random.default_rng(0))["state"].shape == (2, 2, HIDDEN)


@pytest.mark.parametrize("shapes, message", [
    ("y:1x2", "--shapes names 'y', which the model does not have; its inputs are x, state, sr, gain"),
    ("x:1x2", "input 'x' has rank 3"),
    ("x:1x5x9", "dim 2 is fixed at 8 in the graph, got 9"),
    ("x:1x5x8,state:2x3x6", "sets dim 'batch' to 3, but another input already set it to 1"),
])
def test_bad_shapes(vad, shapes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model_file(vad[0], shapes=shapes)


def test_unset_dims_are_named(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    dims = ["batch", "feat", None]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    path = save(proto, tmp_path / "feat.onnx")
    with pytest.raises(UserError, match=r"dims still unset: x dim 1 \(feat\); x dim 2 \(x\[2\]\); set them with "
                                        r"--shapes x:NxNxN"):
        load_model_file(path)
    assert load_model_file(path, shapes="x:2x3x4").make_inputs(1, 1, np.random.default_rng(0))["x"].shape == (2, 3, 4)


def test_npz_inputs(vad, tmp_path):
    good = tmp_path / "good.npz"
    x = np.ones((1, 9, FEATURES), np.float32)
    np.savez(good, x=x, sr=np.array(8000, np.int64))
    model = load_model_file(vad[0], inputs_npz=good, values={"gain": 1.0})
    inputs = model.make_inputs(model.seq_len, model.batch, np.random.default_rng(0))
    assert (model.seq_len, model.batch) == (9, 1)
    np.testing.assert_array_equal(inputs["x"], x)
    assert inputs["sr"] == 8000 and inputs["state"].shape == (2, 1, HIDDEN)


@pytest.mark.parametrize("arrays, message", [
    ({"y": np.ones((1, 2, FEATURES), np.float32)}, "--inputs names 'y', which the model does not have"),
    ({"x": np.ones((1, 2, FEATURES), np.float64)}, "array 'x' is float64, the model's input is float32"),
    ({"sr": np.array(16000, np.int32)}, "array 'sr' is int32, the model's input is int64"),
    ({"x": np.ones((1, 2, 5), np.float32)}, "dim 2 is fixed at 8 in the graph, got 5"),
    ({"state": np.ones((2, 6), np.float32)}, "input 'state' has rank 3"),
])
def test_bad_npz(vad, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=message):
        load_model_file(vad[0], inputs_npz=path)


def test_integer_input_given_a_fraction(vad):
    with pytest.raises(UserError, match="is int64, give an integer"):
        load_model_file(vad[0], values={"sr": 16000.5})


# ---- state pairs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inp, out", [
    ("h0", "hn"), ("c0", "cn"), ("state", "stateN"), ("h_in", "h_out"), ("cache_prev", "cache_next"),
    ("state", "state_out"), ("hidden0", "hiddenN"),
])
def test_state_pairs_by_name(inp, out):
    dims = [2, "batch", 4]
    pairs = find_state_pairs([TensorInfo("x", "float32", ["t", "batch", 3]), TensorInfo(inp, "float32", dims)],
                             [TensorInfo("y", "float32", ["t", "batch", 4]), TensorInfo(out, "float32", dims)])
    assert [(p.input, p.output) for p in pairs] == [(inp, out)]


def test_state_pairs_need_equal_shapes_and_skip_scalars():
    inputs = [TensorInfo("h0", "float32", [1, "batch", 4]), TensorInfo("sr", "int64", []),
              TensorInfo("input", "float32", [3])]
    outputs = [TensorInfo("hn", "float32", [1, "batch", 5]), TensorInfo("srN", "int64", []),
               TensorInfo("output", "float32", [3])]
    pairs = find_state_pairs(inputs, outputs)
    assert pairs == []


# ---- the reference --------------------------------------------------------------------------------------------------
def test_oracle_matches_float64_pytorch(vad):
    """onnx.reference on the float64 graph against the eager module in float64: two independent computations."""
    import torch

    model = load_model_file(vad[0], values={"sr": 16000, "gain": 0.5})  # exact in float32
    assert model.reference_source.name == "onnx.reference-float64" and model.reference_source.independent
    inputs = model.make_inputs(11, 2, np.random.default_rng(3))
    got = model.reference(inputs)
    module = vad[2].double()
    with torch.no_grad():
        prob, state = module(torch.from_numpy(inputs["x"]).double(), torch.from_numpy(inputs["state"]).double(),
                             torch.tensor(16000), torch.tensor(0.5, dtype=torch.float64))
    np.testing.assert_allclose(got["prob"], prob.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["stateN"], state.numpy(), rtol=0, atol=1e-12)


def test_reference_falls_back_to_onnxruntime_when_oracle_ignores_an_attribute(tmp_path):
    model = load_model_file(save(lstm_proto(clip=0.5), tmp_path / "clip.onnx"))
    assert model.reference_source.name == "onnxruntime-cpu-fp32" and not model.reference_source.independent
    assert any("clip" in note for note in model.notes)
    out = model.reference(model.make_inputs(6, 2, np.random.default_rng(0)))
    assert np.abs(out["cn"]).max() <= 0.5 + 1e-6  # clip bounds the cell state: ORT applied it


def test_no_reference_for_layout_1_with_clip(tmp_path):
    model = load_model_file(save(lstm_proto(layout=1, clip=0.5), tmp_path / "bf.onnx"))
    with pytest.raises(UserError, match="no reference can run .*clip.*Batchwise"):
        model.reference(model.make_inputs(4, 2, np.random.default_rng(0)))


def test_torchscript_reference_without_onnx(vad):
    import torch

    model = load_model_file(vad[1], shapes="x:1x9x8,state:2x1x6", values={"sr": 16000, "gain": 1.0})
    assert isinstance(model, FileModel) and model.reference_source.name == "torchscript-float64-cpu"
    inputs = model.make_inputs(9, 1, np.random.default_rng(0))
    got = model.reference(inputs)
    with torch.no_grad():
        prob, _ = vad[2].double()(torch.from_numpy(inputs["x"]).double(), torch.from_numpy(inputs["state"]).double(),
                                  torch.tensor(16000), torch.tensor(1.0, dtype=torch.float64))
    assert list(got) == ["output0", "output1"]
    np.testing.assert_allclose(got["output0"], prob.numpy(), atol=1e-12)
