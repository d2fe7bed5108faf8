"""lstminfer.accelerate: recurrent layers swapped for the fused kernel's drop-in, checked against float64 PyTorch.

On a CPU machine the kernel runs under Triton's interpreter, switched on by the `device` fixture for the test
only (Triton reads TRITON_INTERPRET when a kernel is defined, so the kernels must not be imported before)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstminfer


def _interpreter_usable() -> bool:
    """Triton reads TRITON_INTERPRET when it is imported: too late once it was imported without it."""
    if "triton" not in sys.modules:
        return True
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


@pytest.fixture
def device(monkeypatch):
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return "cuda"
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if not _interpreter_usable():
        pytest.skip("triton was imported without TRITON_INTERPRET=1: test_in_a_fresh_process runs this test")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


def test_in_a_fresh_process():
    """Where an earlier test imported Triton without the interpreter, this file's CPU tests run in a new process."""
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None or _interpreter_usable():
        pytest.skip("the tests of this file run in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", __file__],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times the fused kernel ran (the custom op imports rnn_forward at each call)."""
    import lstminfer.kernels.rnn as rnn

    calls = []
    real = rnn.rnn_forward
    monkeypatch.setattr(rnn, "rnn_forward", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    return calls


class Encoder(nn.Module):
    """A front end, a batch_first 2-layer LSTM (state given or not), a bidirectional GRU, a head."""

    def __init__(self):
        super().__init__()
        self.front = nn.Linear(3, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 4, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x, hx=None):
        y, (h, c) = self.lstm(torch.relu(self.front(x)), hx)
        z, g = self.gru(y.transpose(0, 1))
        return self.head(z), h, c, g


def _float64(model, *args):
    with torch.no_grad():
        return model.double()(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])


def _close(got, want, atol=1e-5):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == torch.float32
        torch.testing.assert_close(g.double().cpu(), w, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("batch,seq", [(1, 1), (3, 7), (2, 20)])
@pytest.mark.parametrize("with_state", [False, True])
def test_accelerated_equals_float64(device, kernel_calls, batch, seq, with_state):
    torch.manual_seed(batch * 10 + seq)
    model = Encoder().eval()
    fast = lstminfer.accelerate(model).to(device)
    x = torch.randn(batch, seq, 3)
    hx = (torch.randn(2, batch, 5), torch.randn(2, batch, 5)) if with_state else None
    with torch.inference_mode():
        got = fast(x.to(device), tuple(t.to(device) for t in hx) if hx else None)
    want = _float64(copy.deepcopy(model), x, tuple(t.double() for t in hx) if hx else None)
    _close(got, want)
    assert len(kernel_calls) == 2  # both layers ran the kernel, none fell back


def test_summary_and_what_stays(device):
    class MyLSTM(nn.LSTM):
        pass

    model = nn.ModuleDict({"a": nn.LSTM(3, 4), "b": MyLSTM(3, 4), "c": nn.LSTM(3, 4, proj_size=2),
                           "d": nn.GRU(3, 4), "e": nn.Linear(3, 3)})
    fast = lstminfer.accelerate(model)
    summary = fast.lstminfer_summary
    assert summary.replaced == ["a", "d"]
    text = str(summary)
    assert "2 of 4 recurrent layers run the fused kernel" in text
    assert "b: MyLSTM(3, 4, num_layers=1) -> kept: MyLSTM subclasses LSTM (its forward may differ)" in text
    assert "c: LSTM(3, 4, num_layers=1) -> kept: proj_size" in text
    assert type(model["a"]) is nn.LSTM and type(fast["a"]).__name__ == "FusedRNN"  # the original is not touched
    assert (fast["a"].hidden_size, fast["a"].batch_first, fast["d"].mode) == (4, False, "GRU")
    assert fast.state_dict().keys() == model.state_dict().keys()
    assert fast["e"] is not model["e"] and torch.equal(fast["e"].weight, model["e"].weight)
    assert str(lstminfer.accelerate(nn.Linear(2, 2)).lstminfer_summary).endswith("nothing replaced")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        lstminfer.accelerate(model, precision="fp8")


def test_packed_sequence_falls_back_to_the_original_layer(device, kernel_calls):
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 4, batch_first=True).eval()
    fast = lstminfer.accelerate(lstm).to(device)
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 4, 2])
    with torch.inference_mode():
        out, (h, _) = fast(pack_padded_sequence(x.to(device), lengths, batch_first=True))
        got, _ = pad_packed_sequence(out, batch_first=True)
        packed64 = pack_padded_sequence(x.double(), lengths, batch_first=True)
        want_out, (want_h, _) = copy.deepcopy(lstm).double()(packed64)
    torch.testing.assert_close(got.double().cpu(), pad_packed_sequence(want_out, batch_first=True)[0], atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(h.double().cpu(), want_h, atol=1e-5, rtol=1e-4)
    assert kernel_calls == []  # the original layer ran


def test_new_weights_are_packed_again(device):
    torch.manual_seed(2)
    gru, other = nn.GRU(3, 4).eval(), nn.GRU(3, 4).eval()
    fast = lstminfer.accelerate(gru).to(device)
    fast.load_state_dict(other.state_dict())
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        got = fast(x.to(device))
    _close(got, _float64(other, x))


def test_fp16_computes_in_half_and_returns_the_input_dtype(device):
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 8).eval()
    fast = lstminfer.accelerate(lstm, precision="fp16").to(device)
    x = torch.randn(4, 2, 4)
    with torch.inference_mode():
        out, (h, c) = fast(x.to(device))
    want_out, (want_h, want_c) = _float64(lstm, x)
    _close([out, h, c], [want_out, want_h, want_c], atol=5e-3)


def test_torch_compile_treats_the_layer_as_an_opaque_op(device, kernel_calls):
    torch.manual_seed(4)
    model = Encoder().eval()
    fast = lstminfer.accelerate(model).to(device)
    compiled = torch.compile(fast, backend="aot_eager" if device == "cpu" else "inductor", fullgraph=True)
    x = torch.randn(2, 5, 3)
    with torch.inference_mode():
        got = compiled(x.to(device))
    _close(got, _float64(copy.deepcopy(model), x, None))
    assert kernel_calls  # the compiled graph called the kernel through lstminfer::fused_rnn


@pytest.mark.gpu
def test_a_cuda_graph_captures_the_accelerated_model():
    torch.manual_seed(5)
    model = Encoder().eval()
    fast = lstminfer.accelerate(model).cuda()
    static_x = torch.randn(2, 9, 3, device="cuda")
    stream = torch.cuda.Stream()
    with torch.inference_mode(), torch.cuda.stream(stream):
        fast(static_x)  # warm-up outside the capture (compilation, scratch buffers)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            static_out = fast(static_x)
        x = torch.randn(2, 9, 3)
        static_x.copy_(x.cuda())
        graph.replay()
        stream.synchronize()
    _close(static_out, _float64(copy.deepcopy(model), x, None))


def test_the_fused_backend_runs_a_whole_model(device):
    """The `fused` runner accelerates a whole model's layers (what verify and bench use)."""
    import numpy as np

    from lstminfer.backends.base import runner_class
    from lstminfer.model.whole import whole_model

    torch.manual_seed(6)
    model = whole_model(Encoder().eval(), torch.randn(2, 5, 3), name="encoder")
    with runner_class("fused")(model, device=device) as runner:
        assert runner.describe()["fused_layers"] == ["lstm", "gru"]
        for seq_len, batch in model.verify_points():
            inputs = model.make_inputs(seq_len, batch, np.random.default_rng(seq_len))
            want, got = model.reference(inputs), runner.infer(inputs)
            for name in model.output_names:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_fused_graph_replays_a_whole_model():
    import numpy as np

    from lstminfer.backends.base import runner_class
    from lstminfer.model.whole import whole_model

    torch.manual_seed(7)
    model = whole_model(Encoder().eval(), torch.randn(2, 5, 3), name="encoder")
    with runner_class("fused-graph")(model, device="cuda") as runner:
        for seq_len, batch in model.verify_points() * 2:  # the second round replays the captured graphs
            inputs = model.make_inputs(seq_len, batch, np.random.default_rng(seq_len))
            want, got = model.reference(inputs), runner.infer(inputs)
            for name in model.output_names:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_fused_graph_raises_a_whole_models_stalled_layer_after_a_replay():
    """A whole model's fused layers keep their own workspaces: the graph runner must read their error words
    after a replay (set by hand here; a real stall needs another kernel holding the multiprocessors)."""
    import numpy as np

    from lstminfer.backends.base import runner_class
    from lstminfer.fused_layers import fused_workspaces
    from lstminfer.kernels.rnn import KernelStalled
    from lstminfer.model.whole import whole_model

    class Wide(nn.Module):  # hidden 256: the persistent kernel, which has an error word
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 256, batch_first=True)
            self.head = nn.Linear(256, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    torch.manual_seed(8)
    model = whole_model(Wide().eval(), torch.randn(2, 5, 8), name="wide")
    inputs = model.make_inputs(5, 2, np.random.default_rng(0))
    with runner_class("fused-graph")(model, device="cuda") as runner:
        runner.infer(inputs)
        (workspace,) = [ws for ws in fused_workspaces(runner.whole) if "err" in ws]
        workspace["err"].fill_(1)
        torch.cuda.synchronize()
        with pytest.raises(KernelStalled, match="gave up waiting"):
            runner.infer(inputs)
        got, want = runner.infer(inputs), model.reference(inputs)  # the word was cleared: the next call is clean
        for name in model.output_names:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-4)
