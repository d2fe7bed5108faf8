"""lstminfer.Session: chunked streaming equals one pass over the whole sequence, on every backend that streams here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lstminfer
from _recurrent_files import FEATURES, HIDDEN, export_vad, lstm_proto, save
from lstminfer.errors import UserError
from lstminfer.model.spec import ModelSpec

SCALARS = {"sr": 16000, "gain": 1.0}
CHUNKS = (1, 3, 5, 4)  # uneven on purpose: 13 steps


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return export_vad(tmp_path_factory.mktemp("vad"))


def _chunked(session, x, axis, sizes=CHUNKS):
    outs, start = [], 0
    for size in sizes:
        outs.append(session.step(np.take(x, range(start, start + size), axis=axis)))
        start += size
    return outs


def _file_sessions(vad):
    onnx_path, pt, _ = vad
    yield "onnxruntime", lstminfer.Session(onnx_path, backend="onnxruntime", inputs=SCALARS)
    yield "torchscript+onnx", lstminfer.Session(pt, backend="torchscript", onnx=onnx_path, inputs=SCALARS)
    yield "torchscript", lstminfer.Session(pt, backend="torchscript", inputs=SCALARS, state=["state:output1"],
                                           shapes=f"state:2x2x{HIDDEN}")


@pytest.mark.parametrize("which", ["onnxruntime", "torchscript+onnx", "torchscript"])
def test_file_streaming_equals_one_pass(vad, which):
    session = dict(_file_sessions(vad))[which]
    x = np.random.default_rng(0).standard_normal((2, sum(CHUNKS), FEATURES)).astype(np.float32)
    prob = "output0" if which == "torchscript" else "prob"
    whole = session.step(x)[prob]
    final_state = session.state["state"]
    session.reset()
    parts = _chunked(session, x, axis=1)
    np.testing.assert_allclose(np.concatenate([p[prob] for p in parts], axis=1), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(session.state["state"], final_state, rtol=0, atol=1e-6)


def test_streaming_matches_the_eager_module(vad):
    """Against PyTorch eager on the whole sequence: independent of every streaming code path."""
    import torch

    session = lstminfer.Session(vad[0], backend="onnxruntime", inputs=SCALARS)
    x = np.random.default_rng(1).standard_normal((1, sum(CHUNKS), FEATURES)).astype(np.float32)
    got = np.concatenate([p["prob"] for p in _chunked(session, x, axis=1)], axis=1)
    with torch.no_grad():
        want, state = vad[2](torch.from_numpy(x), torch.zeros(2, 1, HIDDEN), torch.tensor(16000), torch.tensor(1.0))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(session.state["state"], state.numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_spec_streaming_equals_one_pass(backend, kind):
    session = lstminfer.Session(ModelSpec(kind, 5, 7, num_layers=2), backend=backend)
    x = np.random.default_rng(2).standard_normal((sum(CHUNKS), 3, 5)).astype(np.float32)
    whole = session.step(x)["output"]
    session.reset()
    parts = _chunked(session, x, axis=0)
    np.testing.assert_allclose(np.concatenate([p["output"] for p in parts], axis=0), whole, rtol=0, atol=1e-6)


def test_fused_streaming_when_available():
    from lstminfer.backends.base import BACKENDS, runner_class

    devices = [d for d in runner_class("fused").devices if runner_class("fused").available(d)[0]] \
        if "fused" in BACKENDS else []
    if not devices:
        pytest.skip("the fused backend is not available here (needs a GPU, or TRITON_INTERPRET=1 where supported)")
    device = devices[0]
    session = lstminfer.Session(ModelSpec("lstm", 4, 8), backend="fused", device=device)
    x = np.random.default_rng(3).standard_normal((6, 2, 4)).astype(np.float32)
    whole = session.step(x)["output"]
    session.reset()
    parts = _chunked(session, x, axis=0, sizes=(2, 4))
    np.testing.assert_allclose(np.concatenate([p["output"] for p in parts], axis=0), whole, atol=1e-4)


def test_state_lives_in_the_backend(vad):
    """ONNX Runtime keeps state as OrtValues bound with I/O binding; torch keeps tensors on its device."""
    import torch

    ort_session = lstminfer.Session(vad[0], backend="onnxruntime", inputs=SCALARS)
    ort_session.step(np.zeros((1, 2, FEATURES), np.float32))
    assert type(ort_session._state["state"]).__name__ == "OrtValue"
    torch_session = lstminfer.Session(ModelSpec("lstm", 3, 4), backend="torch")
    torch_session.step(np.zeros((2, 1, 3), np.float32))
    assert all(isinstance(v, torch.Tensor) for v in torch_session._state.values())


def test_state_get_set_and_reset(vad):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 10, FEATURES)).astype(np.float32)
    a = lstminfer.Session(vad[0], backend="onnxruntime", inputs=SCALARS)
    assert a.state is None
    a.step(x[:, :4])
    saved = a.state
    tail = a.step(x[:, 4:])["prob"]
    b = lstminfer.Session(vad[0], backend="onnxruntime", inputs=SCALARS)
    b.state = saved
    np.testing.assert_array_equal(b.step(x[:, 4:])["prob"], tail)
    a.reset()
    fresh = lstminfer.Session(vad[0], backend="onnxruntime", inputs=SCALARS)
    np.testing.assert_array_equal(a.step(x[:, :4])["prob"], fresh.step(x[:, :4])["prob"])
    with pytest.raises(UserError, match="state must have exactly state"):
        a.state = {"h0": saved["state"]}


def test_extra_inputs_per_step(vad):
    x = np.random.default_rng(5).standard_normal((1, 6, FEATURES)).astype(np.float32)
    session = lstminfer.Session(vad[0], backend="onnxruntime")  # sr and gain not fixed
    with pytest.raises(UserError, match="give sr, gain as keyword arguments"):
        session.step(x)
    low = session.step(x, sr=8000, gain=1.0)["prob"]  # the model halves x at 8 kHz
    session.reset()
    halved = session.step(x * 0.5, sr=16000, gain=1.0)["prob"]
    np.testing.assert_allclose(low, halved, atol=1e-6)
    with pytest.raises(UserError, match="has no input volume"):
        session.step(x, volume=3)


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_a_layer_that_needs_the_future_cannot_stream(tmp_path, direction):
    path = save(lstm_proto(direction=direction), tmp_path / "bi.onnx")
    with pytest.raises(UserError, match=f"cannot stream .* runs {direction}, which needs the future"):
        lstminfer.Session(path)
    with pytest.raises(UserError, match="cannot stream .* bidirectional"):
        lstminfer.Session(ModelSpec("gru", 3, 4, bidirectional=True), backend="torch")


def test_state_pairs_given_when_names_do_not_show_them(tmp_path):
    proto = lstm_proto(op="GRU")
    proto.graph.output[1].name = "carry"
    proto.graph.node[0].output[1] = "carry"
    path = save(proto, tmp_path / "gru.onnx")
    with pytest.raises(UserError, match="found no recurrent state .* give the pairs with --state IN:OUT"):
        lstminfer.Session(path)
    with pytest.raises(UserError, match="has no output 'hn'"):
        lstminfer.Session(path, state=["h0:hn"])
    session = lstminfer.Session(path, state=["h0:carry"])
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    whole = session.step(x)["Y"]
    session.reset()
    parts = [session.step(x[:2])["Y"], session.step(x[2:])["Y"]]
    np.testing.assert_allclose(np.concatenate(parts, axis=0), whole, atol=1e-6)


def test_import_lstminfer_stays_light():
    code = ("import sys, lstminfer; heavy = [m for m in ('numpy', 'onnx', 'torch', 'lstminfer.session') "
            "if m in sys.modules]; assert not heavy, heavy; assert lstminfer.Session.__name__ == 'Session'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- PyTorch models: whole models, the state carried by lstminfer or by the forward ---------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eager(module, x, *args):
    with torch.no_grad():
        return module(torch.from_numpy(x), *args)


@pytest.mark.parametrize("sizes", [(1, 3, 5, 4), (13,), (1,) * 13])
def test_whole_model_streaming_carries_each_layers_state(sizes):
    """The VAD calls its LSTM without state: chunked equals one pass, which equals the module's own run."""
    model, example = _example("vad").vad()
    session = lstminfer.Session((model, example), backend="torch")
    assert session.carried and session.state_inputs == ["rnn.h", "rnn.c"]
    x = np.random.default_rng(7).standard_normal((2, 13, 40)).astype(np.float32)
    got = np.concatenate([p["output"] for p in _chunked(session, x, axis=1, sizes=sizes)], axis=1)
    np.testing.assert_allclose(got, _eager(model, x).numpy(), atol=1e-5)
    _, (h, c) = _eager(model.rnn, _eager(model.front, x.transpose(0, 2, 1)).numpy().transpose(0, 2, 1))
    np.testing.assert_allclose(session.state["rnn.h"], h.numpy(), atol=1e-5)
    session.reset()
    np.testing.assert_allclose(session.step(x[:, :4])["output"], _eager(model, x[:, :4]).numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_whole_model_with_its_own_state_streams(backend):
    """forward(frames, (h, c)) -> (prob, (h, c)): the pairs come from the forward, ONNX Runtime exports it."""
    model, example = _example("vad").vad_with_state()
    session = lstminfer.Session((model, example), backend=backend)
    assert session.pairs == [("state_0", "state_0_out"), ("state_1", "state_1_out")] and not session.carried
    x = np.random.default_rng(8).standard_normal((3, 13, 40)).astype(np.float32)
    got = np.concatenate([p["output"] for p in _chunked(session, x, axis=1)], axis=1)
    np.testing.assert_allclose(got, _eager(model, x).numpy(), atol=1e-5)


def test_a_plain_module_carries_its_state_and_refusals_are_one_line():
    gru = torch.nn.GRU(3, 4, num_layers=2).eval()
    session = lstminfer.Session(gru, backend="torch")
    x = np.random.default_rng(9).standard_normal((9, 2, 3)).astype(np.float32)
    got = np.concatenate([p["output"] for p in _chunked(session, x, axis=0, sizes=(4, 5))], axis=0)
    np.testing.assert_allclose(got, _eager(gru, x)[0].numpy(), atol=1e-5)
    crnn, image = _example("crnn").crnn()
    with pytest.raises(UserError, match="cannot stream CRNN: its recurrent layer rnn is bidirectional"):
        lstminfer.Session((crnn, image), backend="torch")
    with pytest.raises(UserError, match="found no recurrent state .* or stream its PyTorch module on torch or fused"):
        lstminfer.Session((gru, torch.randn(5, 2, 3)), backend="openvino")


def test_torchscript_without_outputs_says_so_instead_of_an_empty_list(vad):
    """Issue 14 item 15: a TorchScript file's outputs are unknown before it runs; the message says that."""
    with pytest.raises(UserError, match=r"outputs named once it has run\): give the pairs with --state IN:OUT"):
        lstminfer.Session(vad[1], backend="torchscript", inputs=SCALARS)


def test_fused_streams_a_whole_model_in_chunks():
    """Under Triton's interpreter, in a fresh process: Triton reads TRITON_INTERPRET when it is imported, and an
    export earlier in this process may have imported it already."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    code = f"""
import importlib.util, numpy as np, torch, lstminfer
import lstminfer.kernels.rnn as rnn
calls, real = [], rnn.rnn_forward
rnn.rnn_forward = lambda *a, **k: calls.append(a[1].shape) or real(*a, **k)  # the op imports it at each call
spec = importlib.util.spec_from_file_location("vad", {str(EXAMPLES / "vad.py")!r})
vad = importlib.util.module_from_spec(spec); spec.loader.exec_module(vad)
torch.manual_seed(1)
model = vad.VAD(features=6, hidden=8).eval()
session = lstminfer.Session((model, torch.randn(1, 4, 6)), backend="fused", device="cpu")
x = np.random.default_rng(10).standard_normal((2, 7, 6)).astype(np.float32)
got = np.concatenate([session.step(x[:, a:b])["output"] for a, b in ((0, 1), (1, 3), (3, 7))], axis=1)
with torch.no_grad():
    want = model.double()(torch.from_numpy(x).double()).numpy()
np.testing.assert_allclose(got, want, atol=1e-5)
assert [tuple(c) for c in calls] == [(2, 1, 8), (2, 2, 8), (2, 4, 8)], calls  # the kernel ran every chunk
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- lstminfer stream ------------------------------------------------------------------------------------------
def test_stream_cli_on_a_whole_model_with_streams_side_by_side(cli, tmp_path):
    code, out, err = cli("stream", "--model", EXAMPLES / "vad.py:vad", "--chunk", 2, "--chunks", 3,
                         "--warmup-chunks", 1, "--batch", 3, "--backends", "torch", "--chunk-ms", 64,
                         "--json", tmp_path / "s.json")
    assert code == 0, err
    (record,) = json.loads((tmp_path / "s.json").read_text())
    assert record["chunk_shape"] == [3, 2, 40] and record["state"] == ["rnn.h (carried)", "rnn.c (carried)"]
    assert len(record["times_ms"]) == 3 and record["real_time_factor"] > 0
    code, out, err = cli("stream", "--model", EXAMPLES / "crnn.py:crnn", "--chunk", 4)
    assert code == 2 and err.count("\n") == 1 and "bidirectional" in err


def test_the_files_md_stream_example_runs(cli, tmp_path):
    """docs/files.md: export the VAD with its state as inputs and outputs, then stream the file."""
    code, _, err = cli("export", "--model", EXAMPLES / "vad.py:vad_with_state", "-o", tmp_path / "vad.onnx")
    assert code == 0, err
    code, out, err = cli("stream", tmp_path / "vad.onnx", "--chunk", 1, "--chunks", 5, "--chunk-ms", 32,
                         "--backends", "onnxruntime", "--json", tmp_path / "s.json")
    assert code == 0, err
    (record,) = json.loads((tmp_path / "s.json").read_text())
    assert record["state"] == ["state_0:state_0_out", "state_1:state_1_out"] and record["chunk_shape"] == [1, 1, 40]


def test_seq_axis_for_a_file_whose_dims_do_not_name_it(cli, tmp_path):
    """Issue 14 item 11: fixed dims; the error suggests --seq-axis, which (with --shapes) then streams."""
    proto = lstm_proto()
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_value = 5 if dim.dim_param == "seq" else 2
    path = save(proto, tmp_path / "fixed.onnx")
    code, _, err = cli("stream", path, "--chunk", 5, "--backends", "onnxruntime")
    assert code == 2 and "cannot tell which axis of X [5, 2, 3] is the sequence: give it with --seq-axis X:AXIS" in err
    code, _, err = cli("stream", path, "--chunk", 2, "--seq-axis", "X:0", "--backends", "onnxruntime")
    assert code == 2 and "X axis 0 (the sequence) is fixed at 5 in the graph: use --chunk 5" in err
    code, out, err = cli("stream", path, "--chunk", 5, "--chunks", 3, "--seq-axis", "X:0", "--shapes", "X:5x2x3",
                         "--backends", "onnxruntime", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert json.loads((tmp_path / "s.json").read_text())[0]["chunk_shape"] == [5, 2, 3]


# ---- on the GPU: every streaming backend, chunked equals one pass -------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "torch-graph", "fused", "fused-graph"])
@pytest.mark.parametrize("factory", ["vad", "vad_with_state"])
def test_gpu_streaming_equals_one_pass(backend, factory):
    model, example = getattr(_example("vad"), factory)()
    session = lstminfer.Session((model, example), backend=backend, device="cuda")
    x = np.random.default_rng(11).standard_normal((4, 13, 40)).astype(np.float32)
    got = np.concatenate([p["output"] for p in _chunked(session, x, axis=1)], axis=1)
    np.testing.assert_allclose(got, _eager(model.double(), x.astype(np.float64)).numpy(), atol=1e-4)
    session.reset()  # a graph replays from the zero state again
    np.testing.assert_allclose(session.step(x[:, :1])["output"], got[:, :1], atol=1e-5)
