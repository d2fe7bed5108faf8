"""The classes of third-party files issue 14 found, each built here (nothing downloaded): what lstminfer reads
from them, which reference it uses and says it uses, and what it refuses before a runtime sees it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from _recurrent_files import (
    anonymous_dims_proto,
    fixed_window_proto,
    lstm_proto,
    oracle_lacks_proto,
    quantized_lstm_proto,
    renamed_state_proto,
    save,
)
from lstminfer.errors import UserError
from lstminfer.model.file import load_model_file
from lstminfer.onnx.inspect import inspect_file
from lstminfer.onnx.oracle import Float64Reference
from lstminfer.onnx.shapes import parse_shapes


def _ort(proto, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


# ---- item 6: onnx.reference implements layout=1 -------------------------------------------------------------
@pytest.mark.parametrize("op, direction", [("LSTM", "forward"), ("LSTM", "bidirectional"), ("GRU", "forward"),
                                           ("RNN", "reverse")])
def test_oracle_runs_layout_1_like_the_layout_0_graph(tmp_path, op, direction):
    """The oracle on a batch-first node equals ONNX Runtime on the same weights in layout=0, transposed."""
    batch_first = lstm_proto(layout=1, op=op, direction=direction)
    model = load_model_file(save(batch_first, tmp_path / "bf.onnx"))
    assert model.reference_source.name == "onnx.reference-float64" and model.reference_source.independent
    inputs = model.make_inputs(5, 2, np.random.default_rng(0))
    assert inputs["X"].shape == (2, 5, 3)  # [batch, seq, features]: the seq and batch roles follow layout=1
    got = model.reference(inputs)
    seq_major = {k: v.transpose(1, 0, 2) for k, v in inputs.items()}
    want = _ort(lstm_proto(layout=0, op=op, direction=direction), seq_major)
    np.testing.assert_allclose(got["Y"], want["Y"].transpose(2, 0, 1, 3), atol=1e-6)
    np.testing.assert_allclose(got["hn"], want["hn"].transpose(1, 0, 2), atol=1e-6)


# ---- item 5: contrib recurrent operators --------------------------------------------------------------------
def test_contrib_quantized_lstm_is_recognised_and_not_claimed_by_the_oracle(tmp_path):
    path = save(quantized_lstm_proto(), tmp_path / "q.onnx")
    info = inspect_file(path)
    (node,) = info.recurrent
    assert (node.op, node.domain, node.hidden_size) == ("DynamicQuantizeLSTM", "com.microsoft", 4)
    assert node.capability["onnx-reference"] == "not applicable: lacks the com.microsoft operator DynamicQuantizeLSTM"
    assert node.capability["onnxruntime"].startswith("yes")
    assert node.capability["tensorrt"].startswith("no: com.microsoft DynamicQuantizeLSTM")
    assert info.oracle[0] is False and "DynamicQuantizeLSTM" in info.oracle[1]
    assert not any("no recurrent node" in n for n in info.notes)
    model = load_model_file(path)
    source = model.reference_source
    assert source.name == "onnxruntime-cpu-fp32" and not source.independent
    assert "onnxruntime[cpu] is compared with itself" in source.reason and source.reason in model.notes


# ---- item 1: the oracle failing at run time is decided before the notes ---------------------------------------
def test_oracle_failing_at_run_time_is_a_non_independent_reference_from_the_start(tmp_path):
    model = load_model_file(save(oracle_lacks_proto(), tmp_path / "pool.onnx"))
    assert model.info.oracle == (True, "")  # statically the oracle applies ...
    notes = model.notes  # ... and the trial run before any note finds it cannot
    source = model.reference_source
    assert source.name == "onnxruntime-cpu-fp32" and not source.independent
    assert "onnx.reference failed at run time" in source.reason and "GlobalLpPool" in source.reason
    assert source.reason in notes
    assert model.describe()["reference_independent"] is False
    out = model.reference(model.make_inputs(4, 2, np.random.default_rng(0)))
    assert out["pooled"].shape == (1, 2, 1)


def test_spec_models_have_an_independent_reference():
    from lstminfer.model.base import Model
    from lstminfer.model.spec import ModelSpec

    model = Model("m", ModelSpec())
    assert model.reference_source.independent and model.notes == []
    assert [(p.input, p.output) for p in model.state_pairs] == [("h0", "hn"), ("c0", "cn")]


# ---- item 10: state pairs with exporter-named dims -------------------------------------------------------------
def test_fixed_and_symbolic_state_dims_pair(tmp_path):
    info = inspect_file(save(renamed_state_proto(), tmp_path / "gru.onnx"))
    assert [(p.input, p.output) for p in info.state_pairs] == [("h0", "hn")]
    assert info.state_pairs_note == ""


def test_no_state_pair_says_why(tmp_path):
    from lstminfer.measure.stream import Session

    proto = lstm_proto()
    dims = proto.graph.output[1].type.tensor_type.shape.dim
    dims[2].dim_value = 5  # hn [1, batch, 5] cannot carry h0 [1, batch, 4]
    proto.graph.output[2].name = "cell"
    proto.graph.node[0].output[2] = "cell"
    path = save(proto, tmp_path / "m.onnx")
    info = inspect_file(path)
    assert info.state_pairs == []
    miss = "h0 -> hn match by name but shapes differ ([1, batch, 4] vs [1, batch, 5])"
    assert info.state_pairs_note == f"none: {miss} (give --state IN:OUT)"
    with pytest.raises(UserError, match=r"found no recurrent state .*; outputs Y, hn, cell; h0 -> hn match by name "
                                        r"but shapes differ .*give the pairs with --state IN:OUT"):
        Session(path)


def test_state_given_at_load_is_the_models_own(tmp_path):
    path = save(lstm_proto(), tmp_path / "m.onnx")
    model = load_model_file(path, state=["c0:cn"])
    assert [(p.input, p.output, p.found_by) for p in model.state_pairs] == [("c0", "cn", "given")]
    with pytest.raises(AttributeError):
        model.state_pairs = []  # owned by the model: nothing assigns it from outside


# ---- item 4 / 11: unnamed dims ---------------------------------------------------------------------------------
def test_unnamed_dims_take_their_roles_from_the_graph(tmp_path):
    model = load_model_file(save(anonymous_dims_proto(), tmp_path / "anon.onnx"), seq_len=7, batch=2)
    assert model.roles == {"X[0]": "seq", "X[1]": "batch", "h0[1]": "batch", "c0[1]": "batch"}
    assert model.input_shapes(7, 2) == {"X": (7, 2, 3), "h0": (1, 2, 4), "c0": (1, 2, 4)}


def test_fixed_axes_are_labelled_with_their_real_sizes(tmp_path):
    """A file whose sequence and batch are fixed runs at 7x2: its point says so, not a made-up 16x1."""
    proto = lstm_proto()
    for value, sizes in zip(proto.graph.input, ((7, 2, 3), (1, 2, 4), (1, 2, 4))):
        for dim, size in zip(value.type.tensor_type.shape.dim, sizes):
            dim.Clear()
            dim.dim_value = size
    model = load_model_file(save(proto, tmp_path / "fixed.onnx"))
    assert model.info.fixed_axes == {"seq": 7, "batch": 2}
    assert (model.seq_len, model.batch) == (7, 2) and model.verify_points() == [(7, 2)]
    assert model.input_shapes(7, 2)["X"] == (7, 2, 3)


def test_fixed_input_keeps_its_real_shape(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    model = load_model_file(save(proto, tmp_path / "fixed.onnx"))
    assert model.verify_points() == [(model.seq_len, model.batch)]  # nothing to vary
    assert model.input_shapes(model.seq_len, model.batch) == {"x": (1, 512)}  # what records carry


# ---- item 3: zero-sized dims refused before any runtime ----------------------------------------------------
@pytest.mark.parametrize("text", ["X:5x0x3", "X:0x2x3"])
def test_zero_sized_shapes_are_refused(text):
    with pytest.raises(UserError, match="positive integers .*a zero-sized dim has nothing to run"):
        parse_shapes(text)


def test_zero_sized_arrays_and_points_are_refused(tmp_path):
    path = save(lstm_proto(), tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", X=np.ones((5, 0, 3), np.float32))
    with pytest.raises(UserError, match=r"input 'X' has shape \[5, 0, 3\]; every size must be >= 1"):
        load_model_file(path, inputs_npz=tmp_path / "in.npz")
    with pytest.raises(UserError, match="must be >= 1"):
        load_model_file(path).make_inputs(4, 0, np.random.default_rng(0))


def test_zero_sized_shapes_never_reach_a_runtime(cli, tmp_path):
    """`X:5x0x3` used to abort the process natively (`terminate called without an active exception`)."""
    code, _, err = cli("verify", save(lstm_proto(), tmp_path / "m.onnx"), "--shapes", "X:5x0x3",
                       "--backends", "onnxruntime", "--out", tmp_path)
    assert code == 2 and "Traceback" not in err and "zero-sized" in err


# ---- item 14: valid points and sequence lengths -----------------------------------------------------------
def test_fixed_window_model_keeps_the_points_it_can_run(tmp_path):
    model = load_model_file(save(fixed_window_proto(16), tmp_path / "window.onnx"))
    assert model.seq_varies and model.seq_len == 16
    points = model.verify_points()
    assert points == [(16, 1), (16, 3)]  # 64x1 dropped: the graph takes 16 steps only
    assert model.verify_points() == points
    (note,) = [n for n in model.notes if n.startswith("verify point 64x1 dropped")]
    assert "X:64x1x3" in note and "choose points with --points" in note


def test_sequence_lens_are_lengths_the_sequences_have(tmp_path):
    model = load_model_file(save(lstm_proto(sequence_lens=True), tmp_path / "lens.onnx"))
    assert model.length_inputs == ["lens"]
    lens = model.make_inputs(16, 64, np.random.default_rng(0))["lens"]
    assert lens.dtype == np.int32 and lens.min() >= 1 and lens.max() <= 16 and lens.max() > 4
    assert not model.reference_source.independent  # the oracle ignores sequence_lens


def test_random_integer_inputs_are_named_in_the_error(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"])], "g",
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])], [table])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    model = load_model_file(save(proto, tmp_path / "gather.onnx"))
    assert model.reference_source.independent  # ORT fails on these indices too: the inputs, not the oracle
    with pytest.raises(UserError, match=r"integer input\(s\) idx got random values: give them with --input idx=N"):
        model.reference(model.make_inputs(1, 1, np.random.default_rng(0)))  # indices 2, 3 are out of range
    fixed = load_model_file(save(proto, tmp_path / "gather.onnx"), values={"idx": 1})
    assert fixed.reference(fixed.make_inputs(1, 1, np.random.default_rng(0)))["y"].shape == (8, 3)


# ---- item 12: TorchScript with scalar arguments ---------------------------------------------------------------
class _ScalarArg:
    """Modules whose forward takes a Python int, built in a real file so torch.jit.script can read them."""

    SOURCE = '''
import torch


class MakesItsState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4)

    def forward(self, x, sr: int):
        h = torch.zeros(1, x.size(1), 4, device=x.device)  # the default dtype: float32 unless the caller changes it
        out, _ = self.lstm(x * (sr / 16000), (h, h))
        return out


class Float32Only(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, sr: int):
        return self.lin(x.float()) * sr
'''


@pytest.fixture
def scalar_modules(tmp_path, monkeypatch):
    import importlib
    import sys

    import torch

    (tmp_path / "scalar_mods.py").write_text(_ScalarArg.SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("scalar_mods")
    paths = {}
    for name in ("MakesItsState", "Float32Only"):
        torch.manual_seed(0)
        eager = getattr(module, name)().eval()
        paths[name] = (tmp_path / f"{name}.pt", eager)
        torch.jit.script(eager).save(str(paths[name][0]))
    yield paths
    sys.modules.pop("scalar_mods", None)


def test_torchscript_scalar_argument_runs_in_float64(scalar_modules):
    import torch

    path, eager = scalar_modules["MakesItsState"]
    model = load_model_file(path, shapes="x:6x2x3", values={"sr": 8000})
    assert [(i.name, i.dtype, i.dims) for i in model.inputs] == [("x", "float32", None), ("sr", "int64", [])]
    assert model.reference_source.name == "torchscript-float64-cpu" and model.reference_source.independent
    inputs = model.make_inputs(6, 2, np.random.default_rng(0))
    got = model.reference(inputs)["output0"]
    assert got.dtype == np.float64 and torch.get_default_dtype() == torch.float32  # restored
    torch.set_default_dtype(torch.float64)  # what the eager module needs to run in float64 at all
    try:
        with torch.no_grad():
            want = eager.double()(torch.from_numpy(inputs["x"]).double(), 8000)
    finally:
        torch.set_default_dtype(torch.float32)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-12)


def test_torchscript_that_cannot_run_in_float64_says_so(scalar_modules):
    path, _ = scalar_modules["Float32Only"]
    model = load_model_file(path, shapes="x:6x2x3", values={"sr": 2})
    source = model.reference_source
    assert source.name == "torchscript-float32-cpu" and not source.independent
    assert source.reason.startswith("a float64 reference is impossible for this TorchScript module (")
    assert "\n" not in source.reason and source.reason in model.notes
    out = model.reference(model.make_inputs(6, 2, np.random.default_rng(0)))["output0"]
    assert out.shape == (6, 2, 2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torchscript_backend_casts_the_scalar(scalar_modules, device):
    from lstminfer.backends.torchscript import TorchScriptRunner

    path, _ = scalar_modules["MakesItsState"]
    model = load_model_file(path, shapes="x:6x2x3", values={"sr": 8000})
    inputs = model.make_inputs(6, 2, np.random.default_rng(0))
    with TorchScriptRunner(model, device) as runner:
        got = runner.infer(inputs)["output0"]
    np.testing.assert_allclose(got, model.reference(inputs)["output0"], atol=1e-5)


# ---- item 15: checkpoints and runtime warnings ----------------------------------------------------------------
def test_inspect_does_not_call_a_checkpoint_torchscript(cli, tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    code, _, err = cli("inspect", path)
    assert code == 2 and "is a torch.save checkpoint" in err and "TorchScript:" not in err


def test_oracle_overflow_does_not_warn():
    oracle = Float64Reference(lstm_proto())
    x = np.full((3, 2, 3), 1e4)  # sigmoid's exp() overflows: the answer is still exact
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = oracle.run({"X": x, "h0": np.zeros((1, 2, 4)), "c0": np.zeros((1, 2, 4))})
    assert np.isfinite(out["Y"]).all()


# ---- item 13: ONNX Runtime refusing a file is one line everywhere ---------------------------------------------
@pytest.mark.parametrize("command", ["verify", "bench"])
def test_onnxruntime_refusal_is_one_line(cli, tmp_path, command):
    path = save(lstm_proto(layout=1), tmp_path / "bf.onnx")
    timing = ("--warmup", "0", "--duration", "0", "--iterations", "2") if command == "bench" else ()
    code, out, err = cli(command, path, "--backends", "onnxruntime", *timing, "--out", tmp_path,
                         "--json", tmp_path / "r.json")
    assert "Traceback" not in err and code in (1, 2), err
    refusals = [line for line in (out + err).splitlines() if "ONNX Runtime refuses" in line]
    assert refusals and all("Batchwise recurrent operations (layout == 1) are not supported" in r for r in refusals)
    assert "[E:onnxruntime" not in err  # ORT's own log line is not printed beside ours
    if (tmp_path / "r.json").is_file():
        assert "Batchwise" in json.dumps(json.loads((tmp_path / "r.json").read_text()))
