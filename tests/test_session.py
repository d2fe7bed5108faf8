"""lstminfer.Session: chunked streaming equals one pass over the whole sequence, on every backend that streams here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

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
