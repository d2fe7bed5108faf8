"""GPU streaming (issue 15): on torch-graph and fused-graph a chunk is one CUDA-graph replay that copies the chunk
up from pinned memory and the outputs down into pinned memory itself.  Chunked equals one pass (float64
reference), the state is carried and can be set, a new chunk shape or batch captures a new graph, reset starts
from zero, the returned arrays stay the caller's, fp16 converts inside the graph, and a stalled fused kernel is
raised after a replay.  Speed is measured by benchmarks/stream_gpu.py, not here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import lstminfer

pytestmark = pytest.mark.gpu
GRAPHED = ["torch-graph", "fused-graph"]
CHUNKS = (1, 3, 5, 4)  # uneven on purpose: four chunk shapes, four graphs
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _vad():
    spec = importlib.util.spec_from_file_location("example_vad_gpu", EXAMPLES / "vad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vad()


def _lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(16, 32).eval(), None


def _reference(module, x):
    """float64 on the CPU, the whole sequence in one pass: (output, (h, c) of the LSTM)."""
    module = module.double()
    with torch.no_grad():
        if isinstance(module, torch.nn.LSTM):
            out, (h, c) = module(torch.from_numpy(x).double())
            return out.numpy(), h.numpy(), c.numpy()
        out = module(torch.from_numpy(x).double())
        front = module.front(torch.from_numpy(x).double().transpose(1, 2)).transpose(1, 2)
        _, (h, c) = module.rnn(front)
        return out.numpy(), h.numpy(), c.numpy()


def _chunked(session, x, axis, sizes=CHUNKS):
    outs, start = [], 0
    for size in sizes:
        outs.append(session.step(np.take(x, range(start, start + size), axis=axis))["output"])
        start += size
    return np.concatenate(outs, axis=axis)


@pytest.mark.parametrize("backend", GRAPHED)
@pytest.mark.parametrize("which", ["lstm", "vad"])
def test_graph_streaming_equals_one_pass_with_copies_in_the_graph(backend, which):
    module, example = _vad() if which == "vad" else _lstm()
    source = (module, example) if example is not None else module
    session = lstminfer.Session(source, backend=backend, device="cuda")
    axis, shape = (1, (3, sum(CHUNKS), 40)) if which == "vad" else (0, (sum(CHUNKS), 3, 16))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = _chunked(session, x, axis)
    want, h, c = _reference(module, x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(session.state["rnn.h"], h, atol=1e-4)
    np.testing.assert_allclose(session.state["rnn.c"], c, atol=1e-4)
    engine = session._engine
    assert len(engine.graphs) == len(set(CHUNKS))  # one graph per chunk shape, captured once
    assert all(step.staged for step in engine.graphs.values()), "the copies ran around the graph, not in it"
    session.reset()  # the same graphs replay from the zero state again
    first = session.step(np.take(x, [0], axis=axis))["output"]
    np.testing.assert_allclose(first, np.take(want, [0], axis=axis), atol=1e-4)
    assert len(engine.graphs) == len(set(CHUNKS))


@pytest.mark.parametrize("backend", GRAPHED)
def test_a_new_batch_captures_new_graphs_and_a_set_state_is_replayed(backend):
    module, example = _vad()
    session = lstminfer.Session((module, example), backend=backend, device="cuda")
    rng = np.random.default_rng(1)
    x2 = rng.standard_normal((2, 6, 40)).astype(np.float32)
    session.step(x2[:, :2])
    saved = session.state
    tail = session.step(x2[:, 2:])["output"]
    np.testing.assert_allclose(tail, _reference(module, x2)[0][:, 2:], atol=1e-4)
    session.reset()
    session.step(np.zeros((2, 2, 40), np.float32))  # another stream's start, then its state replaced
    session.state = saved
    np.testing.assert_allclose(session.step(x2[:, 2:])["output"], tail, atol=1e-6)
    session.reset()  # three streams side by side: new state buffers, so the old graphs are dropped
    x3 = rng.standard_normal((3, 5, 40)).astype(np.float32)
    got = _chunked(session, x3, 1, sizes=(2, 3))
    np.testing.assert_allclose(got, _reference(module, x3)[0], atol=1e-4)
    assert sorted(k[0][1] for k in session._engine.graphs) == [(3, 2, 40), (3, 3, 40)]


@pytest.mark.parametrize("backend", GRAPHED + ["torch", "fused"])
def test_returned_arrays_stay_the_callers_after_the_next_replay(backend):
    module, example = _vad()
    session = lstminfer.Session((module, example), backend=backend, device="cuda")
    x = np.random.default_rng(2).standard_normal((1, 3, 40)).astype(np.float32)
    first = session.step(x[:, :1])["output"]
    kept = first.copy()
    second = session.step(x[:, 1:2])["output"]
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    if session._engine.last is not None:
        assert not np.shares_memory(second, session._engine.last.outputs["output"])


def test_fp16_converts_inside_the_graph():
    module, example = _vad()
    session = lstminfer.Session((module, example), backend="fused-graph", device="cuda", precision="fp16")
    x = np.random.default_rng(3).standard_normal((2, 13, 40)).astype(np.float32)
    got = _chunked(session, x, 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(module, x)[0], atol=2e-2)


def test_a_stalled_kernel_is_raised_after_a_replay_not_returned():
    """Hidden 256 runs the persistent kernel, whose error word says a program gave up a wait.  Set by hand
    here (a real stall needs a GPU whose multiprocessors another kernel holds), it must surface as KernelStalled
    at the replay after which the graph copied it down, and the next chunk runs clean."""
    from lstminfer.fused_layers import fused_workspaces
    from lstminfer.kernels.rnn import KernelStalled

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(32, 256).eval()
    session = lstminfer.Session(lstm, backend="fused-graph", device="cuda")
    x = np.random.default_rng(4).standard_normal((3, 1, 32)).astype(np.float32)
    session.step(x[:1])
    step = session._engine.last
    assert step is not None and step.stalls is not None, "hidden 256 should run the persistent kernel"
    (workspace,) = [ws for ws in fused_workspaces(session._engine.module) if "err" in ws]
    workspace["err"].fill_(1)
    torch.cuda.synchronize()
    with pytest.raises(KernelStalled, match="gave up waiting"):
        session.step(x[1:2])
    assert int(workspace["err"].item()) == 0
    session.reset()
    got = np.concatenate([session.step(x[i:i + 1])["output"] for i in range(3)])
    np.testing.assert_allclose(got, _reference(lstm, x)[0], atol=1e-4)
