"""The resident streaming kernel (kernels/rnn/resident.py, resident_source.py) and its engine, fused-resident.

On the CPU: NVRTC compiles the kernel for sm_90a without spills (LSTM / GRU, fp32 / bf16, 1 and 2 layers);
the plan's sizes and its one-line limits; the packed weights, read the way the kernel reads them (a float64
numpy model of the kernel's rows), equal float64 PyTorch; the engine's refusals through Session and the CLI
(exit 2, one line).  With a GPU (`gpu` marker): chunked streams against a float64 nn.LSTM / nn.GRU over the
whole sequence (mixed chunk lengths, a chunk longer than one command, batch 1 and several, 1 and 2 layers, fp32
and bf16, batch_first), reset and a state set from outside, close and a new session, the idle exit and its
relaunch, NaN propagation, a stalled wait raising KernelStalled, and the CLI.  Speed: benchmarks/stream_gpu.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # as test_cuda_persistent.py: the package's Triton kernels are decorated at import
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")

import lstminfer  # noqa: E402
from lstminfer.errors import UserError  # noqa: E402
from lstminfer.kernels.rnn.resident import ResidentConfig, ResidentWeights, plan_resident  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make(kind, input_size, hidden, layers=1, batch_first=False, seed=0):
    torch.manual_seed(seed)
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    return cls(input_size, hidden, num_layers=layers, batch_first=batch_first).eval()


def reference(module, x, dtype=torch.float32):
    """float64 PyTorch over the whole sequence, zero state; weights rounded to `dtype` first (the kernel's
    weights), inputs and arithmetic in float64: (output, h, c or None) as numpy."""
    import copy

    ref = copy.deepcopy(module).to(dtype).double()
    with torch.no_grad():
        out, hidden = ref(torch.from_numpy(np.asarray(x)).double())
    h, c = hidden if isinstance(hidden, tuple) else (hidden, None)
    return out.numpy(), h.numpy(), None if c is None else c.numpy()


# ---- CPU: compile, plan, packing -----------------------------------------------------------------------------

COMPILE_CASES = {  # kind, input, hidden, layers, batch, elem_bits, bf16
    "lstm-fp32-1l-b1": ("lstm", 128, 128, 1, 1, 32, False),
    "lstm-bf16-2l-b8": ("lstm", 64, 256, 2, 8, 16, True),
    "gru-fp32-2l-b4": ("gru", 40, 128, 2, 4, 32, False),
    "gru-bf16-1l-b16": ("gru", 128, 512, 1, 16, 16, True),
    "lstm-fp32-2l-b16-h512": ("lstm", 512, 512, 2, 16, 32, False),
    "lstm-fp16-1l-b2": ("lstm", 100, 200, 1, 2, 16, False),
}


@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_nvrtc_compiles_the_resident_kernel_for_sm90_without_spills(name):
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install 'lstminfer[dev]')")
    from lstminfer.kernels.rnn.cuda_persistent import available
    from lstminfer.kernels.rnn.resident import compile_resident

    ok, why = available()
    if not ok:
        pytest.skip(why)
    cfg = plan_resident(*COMPILE_CASES[name])
    cubin, log = compile_resident(cfg, "sm_90a")
    assert cubin[:4] == b"\x7fELF"  # a cubin, not PTX
    assert "0 bytes spill stores" in log and "rnn_resident" in log, log
    assert cfg.shared_bytes() <= 227 * 1024


def test_plan_sizes_and_one_line_limits():
    target = plan_resident("lstm", 128, 128, 1, 1)  # issue 15's stream: 32 blocks of 4 units
    assert (target.nb, target.blocks, target.k_in, target.k_max) == (4, 32, 128, 256)
    big = plan_resident("lstm", 512, 512, 2, 16)  # fp32 weights of two layers: 4 units a block, 128 blocks
    assert (big.nb, big.blocks) == (4, 128)
    assert plan_resident("lstm", 512, 512, 2, 16, elem_bits=16, bf16=True).blocks == 64  # 16-bit: half
    assert plan_resident("lstm", 128, 128, 1, 1, nb=1).blocks == 128  # forced: a unit a block
    odd = plan_resident("gru", 7, 100, 3, 2)  # KIN: the widest layer input (100), padded to 8
    assert (odd.k_in, odd.k_max, odd.nb, odd.blocks) == (104, 208, 2, 50)
    with pytest.raises(ValueError, match=r"^batch 17: the resident kernel runs 1 to 16 streams side by side$"):
        plan_resident("lstm", 128, 128, 1, 17)
    with pytest.raises(ValueError, match=r"does not fit the resident kernel: .*limit 227 KiB.*limit 132\)$") as err:
        plan_resident("lstm", 1024, 1024, 2, 16)
    assert "\n" not in str(err.value)


def emulate(cfg: ResidentConfig, wpack, bpack, x, h0, c0):
    """The kernel's arithmetic in float64, reading the packed rows as a block does: block g, layer l, row
    q NB + u (gate q of unit g NB + u), x part at [0, width), h part at [KIN, KIN + H)."""
    w = wpack.double().numpy()
    bias = bpack.double().numpy()
    H, NB, L = cfg.hidden, cfg.nb, cfg.layers
    h = h0.astype(np.float64).copy()
    c = c0.astype(np.float64).copy()
    outs = []
    for t in range(x.shape[0]):
        inp = x[t].astype(np.float64)
        for layer in range(L):
            width = cfg.input_size if layer == 0 else H
            new_h = np.zeros_like(h[layer])
            for g in range(cfg.blocks):
                rows = w[g, layer]
                xs = inp @ rows[:, :width].T + bias[g, layer, :, 0]  # [B, ROWS]
                hs = h[layer] @ rows[:, cfg.k_in:cfg.k_in + H].T + bias[g, layer, :, 1]
                for u in range(NB):
                    n = g * NB + u
                    if n >= H:
                        continue
                    gate = [(xs[:, q * NB + u], hs[:, q * NB + u]) for q in range(cfg.gates)]
                    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
                    if cfg.is_lstm:
                        (ix, ih), (fx, fh), (gx, gh), (ox, oh) = gate
                        c[layer, :, n] = sig(fx + fh) * c[layer, :, n] + sig(ix + ih) * np.tanh(gx + gh)
                        new_h[:, n] = sig(ox + oh) * np.tanh(c[layer, :, n])
                    else:
                        (rx, rh), (zx, zh), (nx, nh) = gate
                        z = sig(zx + zh)
                        new_h[:, n] = (1 - z) * np.tanh(nx + sig(rx + rh) * nh) + z * h[layer, :, n]
            h[layer] = new_h
            inp = new_h
        outs.append(inp.copy())
    return np.stack(outs), h, c


@pytest.mark.parametrize("kind,input_size,hidden,layers,nb", [("lstm", 6, 10, 2, 4), ("gru", 12, 9, 2, 2),
                                                               ("lstm", 5, 16, 1, 1), ("gru", 3, 8, 3, 8)])
def test_packed_rows_read_as_the_kernel_reads_them_equal_float64(kind, input_size, hidden, layers, nb):
    module = make(kind, input_size, hidden, layers)
    cfg0 = plan_resident(kind, input_size, hidden, layers, 3)
    # units a block as given: padded units past the hidden size where nb does not divide it
    cfg = ResidentConfig(cfg0.is_lstm, layers, 3, input_size, hidden, nb, -(-hidden // nb), 32, False)
    weights = ResidentWeights.of(module, torch.float32, "cpu")
    wpack, bpack = weights.packed(cfg)
    assert tuple(wpack.shape) == (cfg.blocks, layers, cfg.gates * nb, cfg.k_max)
    x = np.random.default_rng(0).standard_normal((7, 3, input_size))
    h0 = np.random.default_rng(1).standard_normal((layers, 3, hidden)) * 0.5
    c0 = np.random.default_rng(2).standard_normal((layers, 3, hidden)) * 0.5
    out, h, c = emulate(cfg, wpack, bpack, x, h0, c0)
    ref = module.double()
    with torch.no_grad():
        hx = (torch.from_numpy(h0), torch.from_numpy(c0)) if kind == "lstm" else torch.from_numpy(h0)
        want_out, want = ref(torch.from_numpy(x), hx)
    np.testing.assert_allclose(out, want_out.numpy(), atol=1e-12)
    np.testing.assert_allclose(h, (want[0] if kind == "lstm" else want).numpy(), atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(c, want[1].numpy(), atol=1e-12)


# ---- CPU: the engine's refusals --------------------------------------------------------------------------------

def test_refusals_through_session_are_one_line_and_name_fused_graph():
    cases = [
        (make("lstm", 8, 16), "cpu", r"runs on CUDA only, not cpu: use fused-graph$"),
        (torch.nn.LSTM(8, 16, proj_size=4), "cuda", r"has no projection \(proj_size 4\): use fused-graph$"),
        (torch.nn.LSTM(2048, 2048, num_layers=4), "cuda", r"does not fit the resident kernel: .*: use fused-graph$"),
        (torch.nn.GRU(8, 16, bidirectional=True), "cuda", r"^cannot stream GRU: it is bidirectional"),
    ]
    for module, device, message in cases:
        with pytest.raises(UserError, match=message) as err:
            lstminfer.Session(module, backend="fused-resident", device=device)
        assert "\n" not in str(err.value)
    seq = torch.nn.Sequential(torch.nn.Linear(4, 8))

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.front, self.rnn = seq, torch.nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.rnn(self.front(x))[0]

    with pytest.raises(UserError, match=r"runs a plain nn.LSTM / nn.GRU; .* is a whole model \(Whole\): use "
                                        r"fused-graph$"):
        lstminfer.Session((Whole(), torch.randn(1, 3, 4)), backend="fused-resident", device="cuda")


def test_stream_cli_refuses_in_one_line_and_other_commands_say_stream_only(cli, tmp_path):
    code, out, err = cli("stream", "--model", EXAMPLES / "vad.py:vad", "--chunk", 1, "--backends", "fused-resident")
    assert code == 2, (out, err)
    assert "Traceback" not in err and "use fused-graph" in err
    assert len([line for line in err.splitlines() if "fused-resident" in line]) == 1
    code, _, err = cli("bench", "--backends", "fused-resident")
    assert code == 2 and "Traceback" not in err
    assert "backend fused-resident streams only (lstminfer stream, lstminfer.Session): use fused-graph" in err


# ---- GPU ---------------------------------------------------------------------------------------------------------

def _gpu_ready():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    from lstminfer.kernels.rnn.cuda_persistent import available

    try:
        ok, why = available()
    except Exception as exc:  # noqa: BLE001 - a skip reason
        return str(exc)
    return None if ok else why


gpu = pytest.mark.gpu
CHUNKS = (1, 3, 1, 5, 70, 1, 2)  # 70: longer than one command (max_chunk 64)


def _stream(sess, x, chunks, batch_first=False):
    outs, start = [], 0
    for size in chunks:
        part = x[:, start:start + size] if batch_first else x[start:start + size]
        outs.append(sess.step(part)["output"])
        start += size
    return np.concatenate(outs, axis=1 if batch_first else 0)


@pytest.fixture
def resident():
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    sessions = []

    def open_session(module, precision="fp32", idle_s=None):
        sess = lstminfer.Session(module, backend="fused-resident", precision=precision)
        sess._engine.idle_s = idle_s
        sessions.append(sess)
        return sess

    yield open_session
    for sess in sessions:  # a kernel left resident would hold a device-wide synchronize until its idle exit
        sess.close()


GPU_CASES = [  # kind, input, hidden, layers, batch, precision, batch_first
    ("lstm", 128, 128, 1, 1, "fp32", False),
    ("lstm", 40, 128, 2, 3, "fp32", True),
    ("gru", 128, 128, 1, 1, "fp32", False),
    ("gru", 24, 256, 2, 8, "bf16", False),
    ("lstm", 64, 96, 2, 16, "bf16", True),
    ("lstm", 200, 512, 2, 4, "fp32", False),
    ("gru", 100, 200, 1, 2, "fp16", False),
]


@gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_chunked_stream_equals_float64_over_the_whole_sequence(resident, case):
    kind, input_size, hidden, layers, batch, precision, batch_first = case
    module = make(kind, input_size, hidden, layers, batch_first)
    steps = sum(CHUNKS)
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    want_out, want_h, want_c = reference(module, x, dtype)
    sess = resident(module, precision)
    got = _stream(sess, x, CHUNKS, batch_first)
    atol = 5e-5 if precision == "fp32" else 2e-4  # weights rounded in the reference too; h, c, math in fp32
    np.testing.assert_allclose(got, want_out, atol=atol, err_msg="outputs")
    state = sess.state
    np.testing.assert_allclose(state["rnn.h"], want_h, atol=atol, err_msg="h after the stream")
    if kind == "lstm":
        np.testing.assert_allclose(state["rnn.c"], want_c, atol=atol * 4, err_msg="c after the stream")
    out = sess.step(x[:, :1] if batch_first else x[:1])
    assert set(out) == ({"output", "hn", "cn"} if kind == "lstm" else {"output", "hn"})


@gpu
def test_a_spec_session_feeds_h0_c0_and_returns_only_the_output(resident):
    from lstminfer.model.spec import ModelSpec

    spec = ModelSpec(kind="lstm", input_size=16, hidden_size=32, num_layers=2)
    sess = resident(spec)
    torch_sess = lstminfer.Session(spec, backend="torch", device="cpu")
    x = np.random.default_rng(4).standard_normal((6, 2, 16)).astype(np.float32)
    assert sess.state_inputs == ["h0", "c0"]
    for part in (x[:2], x[2:3], x[3:]):
        got, want = sess.step(part), torch_sess.step(part)
        assert set(got) == {"output"}
        np.testing.assert_allclose(got["output"], want["output"], atol=5e-5)
    for name in ("h0", "c0"):
        np.testing.assert_allclose(sess.state[name], torch_sess.state[name], atol=5e-5)


@gpu
def test_reset_and_a_state_set_from_outside(resident):
    module = make("lstm", 32, 64, 2)
    x = np.random.default_rng(5).standard_normal((9, 2, 32)).astype(np.float32)
    sess = resident(module)
    first = sess.step(x[:3])["output"]
    saved = sess.state
    after = sess.step(x[3:6])["output"]
    sess.step(x[6:])
    sess.state = saved  # back to the state after x[:3]
    np.testing.assert_allclose(sess.step(x[3:6])["output"], after, atol=1e-6)
    sess.reset()  # zeros again
    np.testing.assert_allclose(sess.step(x[:3])["output"], first, atol=1e-6)
    h0 = np.random.default_rng(6).standard_normal((2, 2, 64)).astype(np.float32) * 0.5
    c0 = np.random.default_rng(7).standard_normal((2, 2, 64)).astype(np.float32) * 0.5
    sess.state = {"rnn.h": h0, "rnn.c": c0}
    got = sess.step(x)["output"]
    ref = module.double()
    with torch.no_grad():
        want, _ = ref(torch.from_numpy(x).double(), (torch.from_numpy(h0).double(), torch.from_numpy(c0).double()))
    np.testing.assert_allclose(got, want.numpy(), atol=5e-5)


@gpu
def test_close_then_a_new_session_and_another_batch(resident):
    module = make("gru", 16, 64, 1)
    x = np.random.default_rng(8).standard_normal((5, 3, 16)).astype(np.float32)
    want, _, _ = reference(module, x)
    sess = resident(module)
    np.testing.assert_allclose(sess.step(x)["output"], want, atol=5e-5)
    kernel = sess._engine.kernel
    sess.close()
    sess.close()  # twice is fine
    assert kernel.stream is None and kernel.ctl[33] == 2  # CTL_STATUS: ST_STOPPED, the stream freed
    again = resident(module)
    np.testing.assert_allclose(again.step(x)["output"], want, atol=5e-5)
    again.reset()
    one = x[:, :1]  # another batch after reset: another variant, the first one stopped
    np.testing.assert_allclose(again.step(one)["output"], want[:, :1], atol=5e-5)


@gpu
def test_idle_exit_then_relaunch_from_the_last_state(resident):
    from lstminfer.kernels.rnn.resident import CTL_STATUS, ST_IDLE

    module = make("lstm", 16, 64, 2)
    x = np.random.default_rng(9).standard_normal((6, 1, 16)).astype(np.float32)
    want, _, _ = reference(module, x)
    sess = resident(module, idle_s=0.3)
    got = [sess.step(x[:3])["output"]]
    kernel = sess._engine.kernel
    deadline = time.perf_counter() + 5.0
    while kernel.ctl[CTL_STATUS] != ST_IDLE and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert kernel.ctl[CTL_STATUS] == ST_IDLE, "the kernel did not leave after 0.3 s without a command"
    got.append(sess.step(x[3:])["output"])  # launched again, the state after x[:3] loaded first
    assert kernel.launches == 2
    np.testing.assert_allclose(np.concatenate(got), want, atol=5e-5)


@gpu
def test_nan_in_the_input_propagates_as_pytorch(resident):
    module = make("gru", 8, 32, 2)
    x = np.random.default_rng(10).standard_normal((5, 2, 8)).astype(np.float32)
    x[2, 1, 3] = np.nan  # batch row 1 at step 2
    want, _, _ = reference(module, x)
    sess = resident(module)
    got = np.concatenate([sess.step(x[:2])["output"], sess.step(x[2:])["output"]])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[2:, 1]).all() and not np.isnan(got[:, 0]).any()
    np.testing.assert_allclose(got[:, 0], want[:, 0], atol=5e-5)


@gpu
def test_a_stalled_wait_raises_then_the_next_chunk_runs_from_the_last_state(resident, monkeypatch):
    from lstminfer.kernels.rnn import KernelStalled
    from lstminfer.kernels.rnn.resident import ResidentKernel

    monkeypatch.setattr(ResidentKernel, "spin_s", 0.05)
    module = make("lstm", 16, 64, 1)
    x = np.random.default_rng(11).standard_normal((4, 1, 16)).astype(np.float32)
    want, _, _ = reference(module, x)
    sess = resident(module)
    first = sess.step(x[:2])["output"]
    kernel = sess._engine.kernel
    kernel.xch.zero_()  # every h word loses its tag while the kernel waits for a command (torch's stream)
    torch.cuda.current_stream().synchronize()
    with pytest.raises(KernelStalled, match=r"^resident kernel: block \d+ gave up waiting 0.05 s for layer 0's "
                                            r"previous h at step 0 of the chunk: word \(row 0, unit \d+\)"):
        sess.step(x[2:])
    np.testing.assert_allclose(np.concatenate([first, sess.step(x[2:])["output"]]), want, atol=5e-5)
    assert kernel.launches == 2


@gpu
def test_stream_cli_runs_fused_resident(cli, tmp_path):
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    factory = tmp_path / "lstm.py"
    factory.write_text("import torch\n\ndef lstm():\n    return torch.nn.LSTM(128, 128)\n")
    code, out, err = cli("stream", "--model", f"{factory}:lstm", "--chunk", 1, "--chunks", 50,
                         "--backends", "fused-resident,fused-graph", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "fused-resident" in out and "fused-graph" in out


@gpu
def test_output_names_and_values_follow_the_torch_engine(resident):
    module = make("gru", 8, 16, 1, batch_first=True)
    x = np.random.default_rng(12).standard_normal((2, 3, 8)).astype(np.float32)
    for source in (module, (module, torch.randn(2, 3, 8))):  # output/hn, and a whole-model wrapping's output_0/1
        sess, cpu = resident(source), lstminfer.Session(source, backend="torch", device="cpu")
        got, want = sess.step(x), cpu.step(x)
        assert got.keys() == want.keys()
        for name in got:
            np.testing.assert_allclose(got[name], want[name], atol=5e-5, err_msg=name)
        assert sess.state.keys() == cpu.state.keys()


def test_packed_weights_and_biases_take_the_precision_of_the_module_in_that_dtype():
    module = make("lstm", 8, 16, 1)
    cfg = plan_resident("lstm", 8, 16, 1, 1, elem_bits=16, bf16=True)
    wpack, bpack = ResidentWeights.of(module, torch.bfloat16, "cpu").packed(cfg)
    assert wpack.dtype == torch.bfloat16 and bpack.dtype == torch.float32
    rounded = module.to(torch.bfloat16).float()
    # unit 0's input gate: block 0, row 0 (gate 0, unit 0)
    assert torch.equal(wpack[0, 0, 0, :8].float(), rounded.weight_ih_l0[0])
    assert torch.equal(wpack[0, 0, 0, cfg.k_in:cfg.k_in + 16].float(), rounded.weight_hh_l0[0])
    assert bpack[0, 0, 0, 0] == rounded.bias_ih_l0[0] and bpack[0, 0, 0, 1] == rounded.bias_hh_l0[0]
