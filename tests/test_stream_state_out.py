"""Issue 15: fewer nodes in a graphed streaming chunk.  The fused kernel writes a stream's new state straight into
the caller's buffers (rnn_forward's hn_out / cn_out, FusedRNN.forward_into), which a stream keeps in two sets
swapped per step (the kernel must not write the state it reads); the stack kernel's barrier counters and polled
slabs are reset by one copy.  On CPU under Triton's interpreter (a fresh process: Triton reads TRITON_INTERPRET
when it is imported) against float64 PyTorch; on the GPU, the nodes of the VAD's graph."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lstminfer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _interpreted(code: str) -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_rnn_forward_writes_the_state_into_the_callers_buffers():
    _interpreted("""
import pytest, torch
from lstminfer.kernels.rnn import pack_rnn, rnn_forward
torch.manual_seed(0)
for layer in (torch.nn.LSTM(5, 6, num_layers=2), torch.nn.GRU(5, 6, bidirectional=True)):
    lstm = isinstance(layer, torch.nn.LSTM)
    packed = pack_rnn(layer.eval(), torch.device("cpu"), torch.float32)
    x = torch.randn(3, 2, 5)
    shape = (layer.num_layers * (2 if layer.bidirectional else 1), 2, 6)
    h0, c0 = torch.randn(shape), torch.randn(shape) if lstm else None
    hn_out, cn_out = torch.full(shape, float("nan")), torch.full(shape, float("nan")) if lstm else None
    got = rnn_forward(packed, x, h0, c0, hn_out=hn_out, cn_out=cn_out)
    assert got[1] is hn_out and (not lstm or got[2] is cn_out)
    with torch.no_grad():
        want = layer.double()(x.double(), (h0.double(), c0.double()) if lstm else h0.double())
    want_state = want[1] if lstm else (want[1],)
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-4)
    for g, w in zip(got[1:], want_state):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="hn_out shares memory with h0"):
        rnn_forward(packed, x, h0, c0, hn_out=h0, cn_out=cn_out)
    with pytest.raises(ValueError, match=r"hn_out must be a contiguous torch.float32 tensor of shape"):
        rnn_forward(packed, x, h0, c0, hn_out=torch.empty(shape[0], 2, 7), cn_out=cn_out)
    if lstm:
        with pytest.raises(ValueError, match="hn_out shares memory with cn_out"):
            rnn_forward(packed, x, h0, c0, hn_out=hn_out, cn_out=hn_out)
    else:
        with pytest.raises(ValueError, match="cn_out is for an LSTM"):
            rnn_forward(packed, x, h0, None, hn_out=hn_out, cn_out=torch.empty(shape))
""")


def test_forward_into_equals_forward_and_falls_back_by_copying():
    _interpreted("""
import torch, lstminfer
torch.manual_seed(1)
layer = torch.nn.LSTM(4, 5, batch_first=True).eval()
fast = lstminfer.accelerate(layer)
x, h0, c0 = torch.randn(2, 3, 4), torch.randn(1, 2, 5), torch.randn(1, 2, 5)
h_out, c_out = torch.empty(1, 2, 5), torch.empty(1, 2, 5)
with torch.no_grad():
    want, (wh, wc) = layer.double()(x.double(), (h0.double(), c0.double()))
    out, (h, c) = fast.forward_into(x, (h0, c0), h_out, c_out)
    assert h is h_out and c is c_out
    for g, w in ((out, want), (h_out, wh), (c_out, wc)):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)
    # float64 is not the kernel's: the original layer runs and its state is copied into the buffers
    h64, c64 = torch.empty(1, 2, 5, dtype=torch.float64), torch.empty(1, 2, 5, dtype=torch.float64)
    out64, _ = fast.double().forward_into(x.double(), (h0.double(), c0.double()), h64, c64)
    torch.testing.assert_close(out64, want) ; torch.testing.assert_close(h64, wh) ; torch.testing.assert_close(c64, wc)
""")


def test_a_fused_stream_swaps_two_state_sets_and_equals_one_pass():
    """The VAD (its LSTM called without state) and a model that calls one LSTM twice per chunk (the second call
    starts from the state the first left): chunked on fused, the state in two sets swapped per step, equals one
    float64 pass; the torch backend keeps one set, updated in place."""
    _interpreted(f"""
import importlib.util, numpy as np, torch, lstminfer
spec = importlib.util.spec_from_file_location("vad", {str(EXAMPLES / "vad.py")!r})
vad = importlib.util.module_from_spec(spec); spec.loader.exec_module(vad)

class Twice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(6, 6, batch_first=True)
    def forward(self, x):
        return self.rnn(self.rnn(x)[0])[0]

def one_pass_twice(model, x):  # the same layer twice per chunk, each call from its own carried state
    h = c = torch.zeros(1, x.shape[0], 6, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        y, (h, c) = model.rnn(x[:, t:t + 1], (h, c))
        z, (h, c) = model.rnn(y, (h, c))
        outs.append(z)
    return torch.cat(outs, 1)

torch.manual_seed(2)
for model in (vad.VAD(features=6, hidden=8).eval(), Twice().eval()):
    session = lstminfer.Session((model, torch.randn(1, 4, 6)), backend="fused", device="cpu")
    engine = session._engine
    x = np.random.default_rng(3).standard_normal((2, 5, 6)).astype(np.float32)
    sets = []
    got = []
    for t in range(5):
        got.append(session.step(x[:, t:t + 1])["output"])
        sets.append(engine.buffers)
    assert engine.swapping and sets[0] is sets[2] and sets[1] is sets[3] and sets[0] is not sets[1]
    assert sets[0]["rnn.h"].data_ptr() != sets[1]["rnn.h"].data_ptr()
    with torch.no_grad():
        model = model.double()
        xd = torch.from_numpy(x).double()
        want = model(xd) if isinstance(model, vad.VAD) else one_pass_twice(model, xd)
    np.testing.assert_allclose(np.concatenate(got, 1), want.numpy(), atol=1e-5)
    torch_session = lstminfer.Session((model.float(), torch.randn(1, 4, 6)), backend="torch", device="cpu")
    torch_got = np.concatenate([torch_session.step(x[:, t:t + 1])["output"] for t in range(5)], 1)
    np.testing.assert_allclose(torch_got, want.numpy(), atol=1e-5)
    assert not torch_session._engine.swapping
    assert torch_session._engine.sets[0] is torch_session._engine.sets[1]
    np.testing.assert_allclose(session.state["rnn.h"], torch_session.state["rnn.h"], atol=1e-5)
""")


def test_one_copy_resets_the_barrier_counters_and_the_polled_slabs():
    pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")
    from lstminfer.kernels.rnn.launch import RESET_COPY_MAX_WORDS, _reset_sync_and_seq, _sync_and_seq

    ws = _sync_and_seq(6, 100, True, torch.device("cpu"))
    assert ws["sync"].shape == (6,) and ws["seq"].shape == (100,) and ws["seq"].dtype == torch.float32
    assert (ws["seq"].data_ptr() - ws["sync"].data_ptr()) % 128 == 0
    ws["sync"].fill_(7)
    ws["seq"].fill_(1.5)
    _reset_sync_and_seq(ws, grid_sync=True, poll_h=True)
    assert ws["sync"].tolist() == [0] * 6 and ws["seq"].view(torch.int32).tolist() == [-1] * 100
    big = _sync_and_seq(6, RESET_COPY_MAX_WORDS + 1, True, torch.device("cpu"))  # too big to copy: memset + fill
    assert "reset" not in big
    big["sync"].fill_(3)
    _reset_sync_and_seq(big, grid_sync=True, poll_h=True)
    assert big["sync"].tolist() == [0] * 6 and bool((big["seq"].view(torch.int32) == -1).all())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-graph", "fused-graph"])
def test_the_vad_graph_has_no_state_copies(backend, capsys):
    """The nodes of the VAD's graphed one-frame chunk (printed), and where each copy node writes.  fused-graph: the
    stack kernel once and no copy into a state buffer of either set (before: hn and cn copied into the state,
    and a memset and a fill kernel resetting the kernel's counters and slabs, which a one-step chunk of one layer
    no longer needs).  Its three copies are the chunk up, the head's bias and the output down: nn.Linear(128, 1)
    on one row is PyTorch's addmm without cuBLASLt (a matrix with one row or column), which copies the bias
    broadcast into the result before a gemv adds the product, as eager PyTorch does.  torch-graph copies hn and
    cn into the state (two copies into state buffers: the check finds them).  Chunked still equals one pass."""
    from lstminfer.measure.stream_engines import ModuleEngine, graph_nodes, memcpy_nodes

    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install 'lstminfer[gpu]')")
    spec = importlib.util.spec_from_file_location("example_vad_nodes", EXAMPLES / "vad.py")
    vad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vad)
    model, example = vad.vad()
    session = lstminfer.Session((model, example), backend=backend, device="cuda")
    engine = session._engine
    assert isinstance(engine, ModuleEngine)
    engine.keep_graphs = True
    x = np.random.default_rng(5).standard_normal((1, 4, 40)).astype(np.float32)
    got = np.concatenate([session.step(x[:, t:t + 1])["output"] for t in range(4)], 1)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    nodes = graph_nodes(engine.last.graph)
    copies = memcpy_nodes(engine.last.graph)
    with capsys.disabled():
        print(f"\n{backend}: {len(nodes)} nodes: " + ", ".join(f"{k}:{n[:40]}" if n else k for k, n in nodes))
        print(f"{backend}: copies (dst, src, bytes): " + ", ".join(f"{d:#x}<-{s:#x} {b}" for d, s, b in copies))
    assert len(copies) == [k for k, _ in nodes].count("memcpy"), (copies, nodes)
    sets = engine.sets[:1 + engine.swapping]  # two sets on fused-graph, one on torch-graph
    states = [(t.data_ptr(), t.data_ptr() + t.nbytes) for buffers in sets for t in buffers.values()]
    assert len(states) == 2 * len(sets), states  # rnn.h and rnn.c in each set

    def into_state(dst: int, nbytes: int) -> bool:
        return any(dst < end and dst + nbytes > begin for begin, end in states)

    state_copies = [c for c in copies if into_state(c[0], c[2])]
    bias = engine.module.head.bias
    from_bias = [c for c in copies if c[1] == bias.data_ptr() and c[2] == bias.nbytes]
    if backend == "torch-graph":
        assert len(state_copies) == 2, copies  # hn and cn after cuDNN's layer
        return
    assert sum("_rnn_stack_kernel" in n for _, n in nodes) == 1, nodes
    assert state_copies == [], copies
    assert len(from_bias) == 1 and len(copies) == 3, (copies, nodes)  # chunk up, the head's bias, output down


def test_a_model_that_returns_its_state_gets_it_written_by_the_kernel():
    """vad_with_state (forward(frames, (h, c)) -> (prob, (h, c))) on fused: the kernel writes h and c into the
    other state set itself (no copy); a model that returns them swapped, (c, h), still streams like torch."""
    _interpreted(f"""
import importlib.util, numpy as np, torch, lstminfer
import lstminfer.kernels.rnn as rnn
direct, real = [], rnn.rnn_forward
rnn.rnn_forward = lambda *a, **k: direct.append(k.get("hn_out") is not None) or real(*a, **k)
spec = importlib.util.spec_from_file_location("vad", {str(EXAMPLES / "vad.py")!r})
vad = importlib.util.module_from_spec(spec); spec.loader.exec_module(vad)

class Swapped(vad.VAD):
    def forward(self, frames, state):
        prob, (h, c) = super().forward(frames, state)
        return prob, (c, h)

torch.manual_seed(4)
x = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float32)
zeros = (torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))
for cls in (vad.VAD, Swapped):
    model = cls(features=6, hidden=8).eval()
    example = (torch.randn(1, 4, 6), zeros)
    runs = {{}}
    for backend in ("fused", "torch"):
        direct.clear()
        session = lstminfer.Session((model, example), backend=backend, device="cpu")
        assert session.pairs and not session.carried
        runs[backend] = np.concatenate([session.step(x[:, t:t + 2])["output"] for t in (0, 2, 4)], 1)
        if backend == "fused":
            assert session._engine.swapping and direct == [True] * 3, direct
    np.testing.assert_allclose(runs["fused"], runs["torch"], atol=1e-5)
    if cls is vad.VAD:
        with torch.no_grad():
            want = model.double()(torch.from_numpy(x).double()).numpy()
        np.testing.assert_allclose(runs["fused"], want, atol=1e-5)
        model.float()
""")


def test_a_one_step_chunk_of_one_layer_runs_without_grid_barriers():
    """One step of one layer, each row tile projecting its own columns (the VAD's streamed chunk on the GPU:
    hidden 128 in 4 row tiles): no program reads another's output, so the launch has no grid barrier and
    nothing to reset before it.  Under the interpreter (programs one after another, where a barrier would
    wait forever) 4 row tiles give float64's numbers."""
    _interpreted('''
import torch
from lstminfer.kernels.rnn import pack_rnn, plan_for, rnn_forward
from lstminfer.kernels.rnn.launch import _reset_sync_and_seq
torch.manual_seed(6)
layer = torch.nn.LSTM(8, 64).eval()
packed = pack_rnn(layer, torch.device("cpu"), torch.float32)
x, h0, c0 = torch.randn(1, 2, 8), torch.randn(1, 2, 64), torch.randn(1, 2, 64)
plan = plan_for(packed, 1, 2, path="single-launch", r_tiles=4, programs=4, proj_by_unit=True, block_c=64)
ws = {}
out, hn, cn = rnn_forward(packed, x, h0, c0, plan=plan, workspace=ws)
with torch.no_grad():
    want, (wh, wc) = layer.double()(x.double(), (h0.double(), c0.double()))
for g, w in ((out, want), (hn, wh), (cn, wc)):
    torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-4)
assert "reset" not in ws  # nothing is polled, so no slab to poison
''')
