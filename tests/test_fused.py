"""The fused Triton backend against float64 nn.LSTM / nn.GRU.

Without a CUDA device the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported); with one, the same checks run on the GPU and the `gpu` tests add the CUDA-only paths
(grid barriers, fused-graph replay, fp16/bf16).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lstminfer.backends.fused import FusedGraphRunner, FusedRunner, fused_rnn  # noqa: E402
from lstminfer.errors import UserError  # noqa: E402
from lstminfer.kernels.rnn import pack_rnn, plan_for, rnn_forward  # noqa: E402
from lstminfer.kernels.rnn.persistent import _poll_h  # noqa: E402
from lstminfer.model.base import Model  # noqa: E402
from lstminfer.model.spec import build_module, spec_of_module  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"
FP32_ATOL = 2e-5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make(kind, input_size, hidden, layers, bidirectional, batch_first, bias=True, seed=0):
    torch.manual_seed(seed)
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    return cls(input_size, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
               bias=bias).eval()


def random_inputs(module, seq_len, batch, with_state, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dirs = 2 if module.bidirectional else 1
    shape = (batch, seq_len, module.input_size) if module.batch_first else (seq_len, batch, module.input_size)
    x = torch.randn(shape, generator=gen)
    if not with_state:
        return x, None
    h0 = torch.randn(module.num_layers * dirs, batch, module.hidden_size, generator=gen)
    if isinstance(module, torch.nn.LSTM):
        return x, (h0, torch.randn(module.num_layers * dirs, batch, module.hidden_size, generator=gen))
    return x, h0


def reference(module, x, hx):
    """float64 PyTorch on the CPU, flattened to [output, hn(, cn)]."""
    import copy

    ref = copy.deepcopy(module).double()
    with torch.no_grad():
        hx64 = None if hx is None else (tuple(t.double() for t in hx) if isinstance(hx, tuple) else hx.double())
        out, hidden = ref(x.double(), hx64)
    return [out, *hidden] if isinstance(hidden, tuple) else [out, hidden]


def run_fused(module, x, hx, dtype=torch.float32, device=DEVICE, path=None, **plan_overrides):
    packed = pack_rnn(module, device, dtype)
    seq_len, batch = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    plan = plan_for(packed, seq_len, batch, path=path, **plan_overrides)
    states = [] if hx is None else ([*hx] if isinstance(hx, tuple) else [hx])
    args = [t.to(device, dtype) for t in states] + [None] * (2 - len(states))
    return [t.cpu() for t in rnn_forward(packed, x.to(device, dtype), *args, plan=plan)]


def assert_close(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        err = (g.double() - w).abs().max().item()
        assert err <= atol, f"max abs error {err:.3g} > {atol}"


# kind, input, hidden, layers, bidirectional, batch_first, seq, batch, with_state
CASES = [
    ("lstm", 10, 20, 2, True, False, 1, 3, True),
    ("lstm", 5, 37, 1, False, True, 9, 2, False),
    ("lstm", 3, 7, 3, True, True, 9, 1, True),
    ("lstm", 16, 16, 1, False, False, 9, 5, True),
    ("gru", 6, 37, 2, True, False, 9, 3, True),
    ("gru", 4, 16, 1, False, True, 1, 2, False),
    ("gru", 9, 11, 3, False, False, 9, 2, True),
    ("lstm", 6, 40, 1, False, False, 5, 1, True),  # HP 64, one row: a 2-row tile with a masked padding row
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_float64(case):
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    assert_close(run_fused(module, x, hx), reference(module, x, hx), FP32_ATOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_multi_launch_path_matches(kind):
    module = make(kind, 5, 13, 2, True, False)
    x, hx = random_inputs(module, 4, 3, True)
    assert_close(run_fused(module, x, hx, path="multi-launch"), reference(module, x, hx), FP32_ATOL)


@pytest.mark.parametrize("exact_k", [True, False])
def test_sums_over_padding_or_not_agree(exact_k):
    """exact_k skips the padded k of every sum (hidden 20 of 32, input 10 of 16); both must match float64."""
    module = make("lstm", 10, 20, 2, True, False)
    x, hx = random_inputs(module, 5, 3, True)
    assert_close(run_fused(module, x, hx, exact_k=exact_k), reference(module, x, hx), FP32_ATOL)


def test_projection_per_unit_matches():
    """The one-time-tile plan (each unit projects its own gate columns) at a length where it is not the default."""
    module = make("lstm", 5, 13, 2, True, False)
    x, hx = random_inputs(module, 3, 2, True)
    got = run_fused(module, x, hx, proj_by_unit=True, block_c=32)
    assert_close(got, reference(module, x, hx), FP32_ATOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wide_weights_hold_the_16_bit_values(dtype):
    """fp16/bf16 weights stored wide are the 16-bit values exactly, in float32; the bias stays float32 either way."""
    module = make("gru", 6, 37, 2, True, False)
    wide, narrow = pack_rnn(module, "cpu", dtype, wide_weights=True), pack_rnn(module, "cpu", dtype, wide_weights=False)
    assert wide.dtype == narrow.dtype == dtype
    for name in ("w_ih0", "w_ihr", "w_hh"):
        w, n = getattr(wide, name), getattr(narrow, name)
        assert w.dtype == torch.float32 and n.dtype == dtype
        assert torch.equal(w, n.float()) and torch.equal(w.to(dtype).float(), w)
    assert torch.equal(wide.bias, narrow.bias) and wide.bias.dtype == torch.float32
    # against the module itself: layer 0, forward, reset gate (slot 0 of every unit's four columns)
    hidden = module.hidden_size
    want = module.weight_hh_l0.detach()[:hidden].T.to(dtype).float()
    assert torch.equal(wide.w_hh[0, 0, :hidden, 0:4 * hidden:4], want)


def test_plan_keeps_the_h_poll_to_hidden_128():
    """Triton 3.6 failed to compile the h poll at HP 256; the plan must not ask for it there."""
    small, large = pack_rnn(make("lstm", 4, 100, 1, False, False)), pack_rnn(make("lstm", 4, 200, 1, False, False))
    assert plan_for(small, 9, 1).poll_h and not plan_for(large, 9, 1).poll_h


def as_cuda_plan(monkeypatch):
    """plan_for as it plans for an H200 (132 multiprocessors), on the CPU: the packed weights say cuda."""
    from lstminfer.kernels.rnn import plan as plan_module
    from lstminfer.kernels.rnn.packing import PackedRNN

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(plan_module, "_sm_count", lambda device: 132)
    monkeypatch.setattr(PackedRNN, "device", property(lambda self: torch.device("cuda")))


@pytest.mark.parametrize("hidden,layers,bi,batch,tiles_warps_rows", [
    (64, 1, False, 1, (1, 4, 2)), (64, 1, False, 8, (1, 4, 2)), (64, 1, False, 64, (1, 4, 2)),
    (64, 2, True, 8, (1, 4, 2)), (40, 1, False, 3, (1, 4, 2)), (128, 1, False, 1, (4, 4, 1)),
    (128, 1, False, 8, (4, 4, 1))])
def test_stack_plan_gives_the_cell_a_unit_a_thread_at_hidden_64(monkeypatch, hidden, layers, bi, batch,
                                                                tiles_warps_rows):
    """HP 64 on the stack kernel (seq 100): at most 4 warps, and with h in registers (one row tile) at least one
    cell element a thread; else Triton computed every unit's cell in every thread (sm_90 SASS: 650-1290 MUFU a
    step against 10, docs/fused_kernel.md). One row is padded to a 2-row tile (2 row tiles exchanging h ran 10.7
    us a step on the H200). HP 128 keeps its 4 row tiles on 4 warps."""
    as_cuda_plan(monkeypatch)
    plan = plan_for(pack_rnn(make("lstm", hidden, hidden, layers, bi, False)), 100, batch)
    assert plan.kernel == "stack" and plan.path == "single-launch" and not (plan.relay or plan.pipeline)
    assert (plan.r_tiles, plan.num_warps, plan.block_b) == tiles_warps_rows
    if plan.r_tiles == 1:
        assert plan.block_b * 64 >= 32 * plan.num_warps


def test_pipeline_keeps_8_warps_at_hidden_64(monkeypatch):
    as_cuda_plan(monkeypatch)
    plan = plan_for(pack_rnn(make("lstm", 16, 64, 1, False, False)), 1, 1)
    assert plan.pipeline and (plan.r_tiles, plan.num_warps) == (1, 8)


# kind, input, hidden, layers, bidirectional, batch_first, seq, batch, with_state
PIPELINE_CASES = [
    ("lstm", 10, 20, 3, True, False, 1, 3, True),
    ("lstm", 10, 20, 3, True, True, 3, 3, False),
    ("gru", 6, 13, 2, True, False, 3, 5, True),
    ("gru", 4, 16, 3, False, True, 4, 2, False),
    ("lstm", 6, 50, 2, False, False, 3, 2, True),
]


def run_repeated(module, x, hx, calls=3, device=DEVICE, dtype=torch.float32, **plan_overrides):
    """Several calls on one workspace (the pipeline alternates its two slab sets); each result is checked."""
    packed = pack_rnn(module, device, dtype)
    seq_len, batch = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    plan = plan_for(packed, seq_len, batch, **plan_overrides)
    states = [] if hx is None else ([*hx] if isinstance(hx, tuple) else [hx])
    args = [t.to(device, dtype) for t in states] + [None] * (2 - len(states))
    workspace: dict = {}
    results = [[t.cpu() for t in rnn_forward(packed, x.to(device, dtype), *args, plan=plan, workspace=workspace)]
               for _ in range(calls)]
    return plan, results


def check_repeated_case(case, **plan_overrides):
    """run_repeated on a CASES-style spec; every call checked against float64. Returns the plan."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    plan, results = run_repeated(module, x, hx, **plan_overrides)
    for got in results:
        assert_close(got, reference(module, x, hx), FP32_ATOL)
    return plan


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_pipeline_matches_float64(case):
    """One program per (layer, direction), input polled; under the interpreter programs run in layer order."""
    plan = check_repeated_case(case, pipeline=True)
    layers, bi = case[3], case[4]
    assert plan.pipeline and plan.programs == layers * (2 if bi else 1)


def test_pipeline_plan_is_cuda_only_and_refused_where_it_does_not_fit():
    packed = pack_rnn(make("lstm", 10, 20, 10, True, False))
    assert not plan_for(packed, 1, 3).pipeline  # the interpreter (or CPU) never waits by default
    with pytest.raises(ValueError, match="pipeline"):
        plan_for(pack_rnn(make("lstm", 10, 37, 2, True, False)), 1, 3, pipeline=True)  # 128 + 64 weights


RELAY_CASES = [
    ("lstm", 10, 20, 3, True, False, 7, 3, True),
    ("gru", 5, 13, 2, True, True, 6, 2, False),
    ("lstm", 3, 7, 2, False, False, 5, 2, True),
    ("gru", 9, 11, 1, False, False, 4, 3, True),
]


@pytest.mark.parametrize("case", RELAY_CASES, ids=lambda c: "-".join(map(str, c)))
def test_relay_matches_float64(case):
    """Units and helpers (projection row by row); under the interpreter one program does both, layer by layer.
    Repeated calls alternate the two poisoned sets of the workspace."""
    plan = check_repeated_case(case, relay=True)
    assert plan.relay and plan.num_warps == 1


def test_relay_counters_are_zero_between_calls():
    """Each unit zeroes its layer's arrival counter after the wait (else the next call would start early);
    each program counts its launches, whose parity picks the poisoned set."""
    module = make("lstm", 10, 20, 2, True, False)
    x, hx = random_inputs(module, 5, 3, True)
    packed = pack_rnn(module)
    plan = plan_for(packed, 5, 3, relay=True)
    tiles = -(-3 // plan.block_b)
    ws: dict = {}
    for call in range(1, 4):
        rnn_forward(packed, x, *hx, plan=plan, workspace=ws)
        launches, ready = ws["count"][:tiles * plan.programs], ws["count"][tiles * plan.programs:]
        assert launches.tolist() == [call] * tiles * plan.programs
        assert ready.numel() == tiles * 2 * 2 and not ready.any()  # batch tiles x layers x directions


def test_relay_plan_is_cuda_only_and_refused_where_it_does_not_fit():
    assert not plan_for(pack_rnn(make("lstm", 10, 20, 10, True, False)), 100, 3).relay  # CPU: never by default
    with pytest.raises(ValueError, match="relay kernel does not fit"):
        plan_for(pack_rnn(make("lstm", 10, 37, 2, True, False)), 50, 3, relay=True)  # hidden padded to 64


def test_no_bias():
    module = make("lstm", 4, 9, 2, False, False, bias=False)
    x, hx = random_inputs(module, 5, 2, True)
    assert_close(run_fused(module, x, hx), reference(module, x, hx), FP32_ATOL)


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(["lstm", "gru"]), input_size=st.integers(1, 12), hidden=st.integers(1, 24),
       layers=st.integers(1, 2), bi=st.booleans(), seq_len=st.integers(1, 5), batch=st.integers(1, 4),
       with_state=st.booleans())
def test_random_specs(kind, input_size, hidden, layers, bi, seq_len, batch, with_state):
    module = make(kind, input_size, hidden, layers, bi, False)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    assert_close(run_fused(module, x, hx), reference(module, x, hx), FP32_ATOL)


def test_fp16_looser():
    module = make("lstm", 6, 12, 2, True, False)
    x, hx = random_inputs(module, 5, 2, True)
    assert_close(run_fused(module, x, hx, dtype=torch.float16), reference(module, x, hx), 5e-3)


def test_nan_propagates_like_pytorch():
    module = make("lstm", 4, 8, 2, True, False)
    x, hx = random_inputs(module, 4, 3, True)
    x[1, 0, 2] = float("nan")  # batch row 0 only: the other rows stay finite
    got, want = run_fused(module, x, hx), reference(module, x, hx)
    for g, w in zip(got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        finite = ~torch.isnan(w)
        assert (g.double()[finite] - w[finite]).abs().max().item() <= FP32_ATOL


def test_fused_rnn_has_the_module_contract():
    module = make("lstm", 5, 9, 2, True, True)
    x, (h0, c0) = random_inputs(module, 3, 2, True)
    out, (hn, cn) = fused_rnn(module, x.to(DEVICE), (h0.to(DEVICE), c0.to(DEVICE)))
    assert_close([out.cpu(), hn.cpu(), cn.cpu()], reference(module, x, (h0, c0)), FP32_ATOL)
    gru = make("gru", 5, 9, 1, False, False)
    x, h0 = random_inputs(gru, 3, 2, True)
    out, hn = fused_rnn(gru, x.to(DEVICE), h0.to(DEVICE))
    assert_close([out.cpu(), hn.cpu()], reference(gru, x, h0), FP32_ATOL)
    with pytest.raises(TypeError, match="plain nn.LSTM"):
        fused_rnn(torch.nn.Linear(3, 3), x)


def model_for(module, seq_len=4, batch=2, with_state=True):
    spec = spec_of_module(module)
    return Model(name="test", spec=spec, module=module, seq_len=seq_len, batch=batch, with_state=with_state)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_runner_matches_reference(kind, with_state):
    from lstminfer.model.spec import ModelSpec

    spec = ModelSpec(kind, 6, 11, 2, bidirectional=True, batch_first=True)
    model = Model(name="t", spec=spec, module=build_module(spec), seq_len=5, batch=3, with_state=with_state)
    inputs = model.make_inputs(5, 3, np.random.default_rng(0))
    with FusedRunner(model, device=DEVICE) as runner:
        got = runner.infer(inputs)
        assert runner.describe()["tf32"] is False
    want = model.reference(inputs)
    assert list(got) == model.output_names
    for name in model.output_names:
        assert got[name].dtype == np.float32
        assert np.abs(got[name] - want[name]).max() <= FP32_ATOL


def test_cli_run_verifies_and_benchmarks_the_fused_backend(cli, tmp_path, monkeypatch):
    """`lstminfer run --backends fused`: every point and output checked against float64, then timed, with the
    kernel that ran named in the record (the CPU suite's one run of this backend through the CLI)."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the cli fixture runs as a user's CPU, without it
    code, _, err = cli("run", "--kind", "gru", "--input-size", "4", "--hidden-size", "6", "--num-layers", "2",
                       "--backends", "fused", "--device", DEVICE, "--points", "1x3,9x2", "--out", tmp_path / "out",
                       "--json", tmp_path / "r.json", "--warmup", "0", "--duration", "0.05", "--iterations", "3")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    checked = {(r["seq_len"], r["batch"], r["output"]) for r in results["verify"]
               if r["backend"] == "fused" and r["device"] == DEVICE and r["passed"]}
    assert checked == {(s, b, o) for s, b in ((1, 3), (9, 2)) for o in ("output", "hn")}
    (timed,) = [r for r in results["bench"] if r["backend"] == "fused"]
    assert (timed["seq_len"], timed["batch"], timed["device"]) == (1, 3, DEVICE)
    assert timed["kernel"] and len(timed["times_ms"]) == timed["queries"] >= 3


def test_proj_size_is_refused_by_name():
    module = torch.nn.LSTM(4, 8, proj_size=3)
    runner = FusedRunner(model_for(module), device=DEVICE)
    ok, why = runner.supports()
    assert not ok and "proj_size" in why
    with pytest.raises(UserError, match="proj_size"):
        runner.prepare()


def test_wrapped_module_runs_through_its_layers_and_a_model_without_one_is_refused():
    """A model that wraps an nn.GRU runs (lstminfer.accelerate swaps its layers: tests/test_accelerate.py);
    one with no LSTM/GRU layer the kernel could take is refused by name."""
    class Wrapper(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, h=None):
            return self.rnn(x, h)

    assert FusedRunner(model_for(Wrapper(torch.nn.GRU(3, 4))), device=DEVICE).supports() == (True, "")
    runner = FusedRunner(model_for(Wrapper(torch.nn.LSTM(3, 4, proj_size=2))), device=DEVICE)
    with pytest.raises(UserError, match="proj_size|fused kernel"):
        runner.prepare()


def test_cpu_availability_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = FusedRunner.available("cpu")
    assert not ok and "TRITON_INTERPRET=1" in why
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert FusedRunner.available("cpu") == (True, "")
    assert FusedGraphRunner.available("cpu")[0] is False  # graphs are CUDA-only


def test_cuda_availability_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = FusedRunner.available("cuda")
    assert not ok and "CUDA" in why


def test_backend_module_imports_without_triton():
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None; import lstminfer.backends.fused as f; "
            "print(f.FusedRunner.available('cuda'))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "False" in out.stdout


# ---- CUDA only ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_matches_float64(case):
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    assert_close(run_fused(module, x, hx, device="cuda"), reference(module, x, hx), FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,bi,batch", [("lstm", False, 1), ("gru", True, 1), ("lstm", True, 8)])
def test_gpu_hidden_64_plans(kind, bi, batch):
    """HP 64 since the 4-warp rule: one row tile of at least 2 rows (one batch row padded), h in registers."""
    module = make(kind, 24, 64, 2, bi, False)
    x, hx = random_inputs(module, 20, batch, True)
    plan = plan_for(pack_rnn(module, "cuda"), 20, batch)
    assert (plan.r_tiles, plan.num_warps, plan.block_b) == (1, 4, 2)
    assert_close(run_fused(module, x, hx, device="cuda"), reference(module, x, hx), FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,hidden,poll_h", [("lstm", 128, True), ("gru", 128, True), ("lstm", 128, False),
                                                ("lstm", 200, False), ("gru", 200, False)])
def test_gpu_grid_barrier_paths(kind, hidden, poll_h):
    """Directions split over several programs: h polled over poisoned words, or a counter barrier per step."""
    module = make(kind, 33, hidden, 2, True, False)
    x, hx = random_inputs(module, 12, 3, True)
    path = "single-launch"  # hidden 200 (padded to 256) runs the persistent kernel by default
    plan = plan_for(pack_rnn(module, "cuda"), 12, 3, path=path, poll_h=poll_h)
    assert plan.r_tiles > 1 and plan.kernel == "stack"
    assert_close(run_fused(module, x, hx, device="cuda", path=path, poll_h=poll_h), reference(module, x, hx), 5e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("relay", [True, False])
@pytest.mark.parametrize("kind,hidden,rows", [("lstm", 20, 1), ("gru", 20, 1), ("lstm", 11, 2), ("gru", 7, 2)])
def test_gpu_one_warp_per_row_plan(kind, hidden, rows, relay):
    """Long sequences at HP <= 32: one warp per (batch tile, direction), 32 // HP rows a tile (workload B's plan);
    by default with the relay kernel, else the stack kernel's shared projection and grid barriers."""
    module = make(kind, 10, hidden, 3, True, kind == "gru")
    x, hx = random_inputs(module, 40, 3, True)
    plan = plan_for(pack_rnn(module, "cuda"), 40, 3, relay=relay)
    assert (plan.num_warps, plan.block_b, plan.pipeline, plan.relay) == (1, rows, False, relay)
    assert plan_for(pack_rnn(module, "cuda"), 5, 3).num_warps != 1  # a unit projecting alone: more warps
    assert_close(run_fused(module, x, hx, device="cuda", relay=relay), reference(module, x, hx), FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("kind,seq_len", [("lstm", 100), ("lstm", 25), ("gru", 24), ("lstm", 300)])
def test_gpu_relay_seed_model(kind, seq_len, with_state):
    """The seed model (10-layer bi-LSTM 10->20, batch 3) and a GRU twin on the relay kernel, repeated calls."""
    module = make(kind, 10, 20, 10, True, False, seed=seq_len)
    x, hx = random_inputs(module, seq_len, 3, with_state, seed=seq_len + 7)
    plan, results = run_repeated(module, x, hx, calls=4, device="cuda", relay=True)
    assert plan.relay
    assert plan_for(pack_rnn(module, "cuda"), seq_len, 3).relay  # the default at every length past 16
    for got in results:
        assert_close(got, reference(module, x, hx), FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("case", RELAY_CASES + [("lstm", 4, 9, 2, False, True, 1, 5, True),
                                                ("gru", 6, 16, 3, False, False, 2, 4, False)],
                         ids=lambda c: "-".join(map(str, c)))
def test_gpu_relay_matches_float64(case):
    """The interpreter's relay cases on the GPU, where units and helpers run at once and wait for each other:
    one direction (a helper then trails the only unit), batch_first, 2-row tiles, 1 and 2 steps."""
    assert check_repeated_case(case, device="cuda", relay=True).relay


@pytest.mark.gpu
@pytest.mark.parametrize("kind,hidden", [("lstm", 1024), ("gru", 300)])
def test_gpu_large_hidden_multi_launch(kind, hidden):
    """The one-launch-per-step fallback, still there for sizes the persistent kernel does not fit."""
    module = make(kind, 20, hidden, 2, True, False)
    x, hx = random_inputs(module, 3, 3, True)
    assert plan_for(pack_rnn(module, "cuda"), 3, 3).path == "per-layer"
    assert_close(run_fused(module, x, hx, device="cuda", path="multi-launch"), reference(module, x, hx), 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,dtype,atol", [("fp16", "float16", 5e-3), ("bf16", "bfloat16", 3e-2)])
def test_gpu_half_precisions(precision, dtype, atol):
    module = make("lstm", 10, 20, 10, True, False)
    x, hx = random_inputs(module, 7, 3, True)
    got = run_fused(module, x, hx, dtype=getattr(torch, dtype), device="cuda")
    assert all(g.dtype == getattr(torch, dtype) for g in got)
    assert_close(got, reference(module, x, hx), atol)


@pytest.mark.gpu
def test_gpu_graph_replays_equal_eager():
    from lstminfer.model.spec import preset

    p = preset("seed")
    model = Model(name="seed", spec=p.spec, module=build_module(p.spec), seq_len=p.seq_len, batch=p.batch)
    rng = np.random.default_rng(3)
    with FusedRunner(model, device="cuda") as eager, FusedGraphRunner(model, device="cuda") as graphed:
        for seq_len in (1, 6, 1):  # a new shape captures a new graph; an old one replays
            inputs = model.make_inputs(seq_len, p.batch, rng)
            want = model.reference(inputs)
            a, b = eager.infer(inputs), graphed.infer(inputs)
            for name in model.output_names:
                np.testing.assert_array_equal(a[name], b[name])
                assert np.abs(b[name] - want[name]).max() <= FP32_ATOL
        assert len(graphed.graphs) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("kind,seq_len", [("lstm", 1), ("lstm", 3), ("gru", 1), ("gru", 3)])
def test_gpu_pipeline_seed_model(kind, seq_len, with_state):
    """The seed model (10-layer bi-LSTM 10->20, batch 3) and a GRU twin on the layer pipeline, repeated calls."""
    module = make(kind, 10, 20, 10, True, False, seed=seq_len)
    x, hx = random_inputs(module, seq_len, 3, with_state, seed=seq_len + 7)
    plan, results = run_repeated(module, x, hx, calls=4, device="cuda", pipeline=True)
    assert plan.pipeline
    for got in results:
        assert_close(got, reference(module, x, hx), FP32_ATOL)
    if seq_len == 1:
        assert plan_for(pack_rnn(module, "cuda"), 1, 3).pipeline  # the default plan for workload A


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gpu_pipeline_never_reads_a_poisoned_word(kind):
    """Many short runs of repeated calls: with the padding of its input skipped, 5-8 % of such calls returned
    NaN (a poisoned word read after its poll), so the pipeline sums the padding; none may be NaN."""
    module = make(kind, 10, 20, 10, True, False, seed=1)
    x, hx = random_inputs(module, 1, 3, False, seed=8)
    want = reference(module, x, hx)
    for _ in range(15):
        plan, results = run_repeated(module, x, hx, calls=4, device="cuda", pipeline=True)
        for got in results:
            assert_close(got, want, FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("block_b", [1, 2])
@pytest.mark.parametrize("kind,seq_len,with_state", [("lstm", 1, True), ("gru", 3, False)])
def test_gpu_pipeline_batch_tiles(kind, seq_len, with_state, block_b):
    """Fewer batch rows per program (more programs): each program's step is shorter."""
    module = make(kind, 10, 20, 10, True, False, seed=block_b)
    x, hx = random_inputs(module, seq_len, 3, with_state, seed=block_b + 3)
    plan, results = run_repeated(module, x, hx, calls=3, device="cuda", pipeline=True, block_b=block_b)
    assert plan.pipeline and plan.block_b == block_b
    for got in results:
        assert_close(got, reference(module, x, hx), FP32_ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("seq_len", [1, 40])
def test_gpu_cached_launcher_matches_a_fresh_launch(seq_len):
    """Eager calls on one workspace reuse the compiled kernel's launcher; their results equal a first launch's."""
    module = make("lstm", 10, 20, 3, True, False)
    packed = pack_rnn(module, "cuda")
    x, (h0, c0) = random_inputs(module, seq_len, 3, True)
    args = [t.cuda() for t in (x, h0, c0)]
    fresh = rnn_forward(packed, *args)
    ws: dict = {}
    for _ in range(3):
        for got, want in zip(rnn_forward(packed, *args, workspace=ws), fresh):
            assert torch.equal(got, want)
    assert len(ws["launchers"]) == 1
    odd = torch.randn(seq_len * 3 * 10 + 1, device="cuda")[1:].view(seq_len, 3, 10)  # not 16-byte aligned
    odd.copy_(args[0])
    for got, want in zip(rnn_forward(packed, odd, *args[1:], workspace=ws), fresh):
        assert torch.equal(got, want)
    assert len(ws["launchers"]) == 2  # another specialization, another launcher


@pytest.mark.gpu
@pytest.mark.parametrize("seq_len,kernel", [(1, "pipeline"), (30, "relay")])
def test_gpu_graph_replays_of_the_polling_kernels(seq_len, kernel):
    """Replays of a captured layer-pipeline or relay launch (no fill between them: their two poisoned sets
    alternate) give the eager result every time."""
    module = make("lstm", 10, 20, 10, True, False)
    packed = pack_rnn(module, "cuda")
    assert getattr(plan_for(packed, seq_len, 3), kernel)  # the default plan at this length
    ws: dict = {}
    x, (h0, c0) = random_inputs(module, seq_len, 3, True)
    xd, h0d, c0d = x.cuda(), h0.cuda(), c0.cuda()
    want = reference(module, x, (h0, c0))
    eager = [t.clone() for t in rnn_forward(packed, xd, h0d, c0d, workspace=ws)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = rnn_forward(packed, xd, h0d, c0d, workspace=ws)
    for _ in range(5):
        for t in static:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for g, e in zip(static, eager):
            assert torch.equal(g, e)
    assert_close([t.cpu() for t in static], want, FP32_ATOL)


# ---- the persistent kernel (per-layer path: a GEMM and one persistent launch per layer) ----------------------

# hidden 40 and 17 leave whole tiles of padding (units no program computes), batch 9 multiplies with tl.dot
PERSISTENT_CASES = [
    ("lstm", 5, 20, 2, True, False, 4, 3, True),
    ("gru", 7, 40, 2, True, True, 3, 2, False),
    ("lstm", 3, 40, 1, False, True, 5, 1, False),
    ("gru", 4, 17, 3, False, False, 3, 9, True),
    ("lstm", 4, 17, 1, True, False, 3, 9, True),
]


@pytest.mark.parametrize("case", PERSISTENT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_persistent_matches_float64(case):
    """Under the interpreter one program runs every unit's step in turn, reading h through the poisoned slab."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    assert_close(run_fused(module, x, hx, path="per-layer"), reference(module, x, hx), FP32_ATOL)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, FP32_ATOL), (torch.float16, 5e-3)])
def test_persistent_streamed_weights_match_float64(dtype, atol):
    """W_hh^T read in block_k chunks every step (the plan's choice for fp32 past 8 rows) instead of kept; one layer
    (each layer's launch reads W_hh the same way, and the persistent cases above stack layers)."""
    module = make("gru", 6, 40, 1, True, False)
    x, hx = random_inputs(module, 3, 2, True)
    plan = plan_for(pack_rnn(module, DEVICE, dtype), 3, 2, path="per-layer", resident=False)
    assert plan.path == "per-layer" and not plan.resident
    got = run_fused(module, x, hx, dtype=dtype, path="per-layer", resident=False)
    assert_close(got, reference(module, x, hx), atol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_persistent_wide_fp16_matches_float64(kind):
    """fp16 weights widened to fp32 and h exchanged in fp32 (the fp32 kernel), for few batch rows."""
    module = make(kind, 5, 20, 2, True, False)
    x, hx = random_inputs(module, 4, 2, True)
    packed = pack_rnn(module, DEVICE, torch.float16)
    plan = plan_for(packed, 4, 2, path="per-layer", wide=True)
    assert plan.wide and plan.block_b == 2 and plan.resident
    got = run_fused(module, x, hx, dtype=torch.float16, path="per-layer", wide=True)
    assert all(g.dtype == torch.float16 for g in got)
    assert_close(got, reference(module, x, hx), 5e-3)


def test_persistent_fp16_matches_float64():
    module = make("lstm", 5, 20, 2, True, False)
    x, hx = random_inputs(module, 4, 3, True)
    assert_close(run_fused(module, x, hx, dtype=torch.float16, path="per-layer"), reference(module, x, hx), 5e-3)


def test_persistent_plan_fits_the_multiprocessors_and_names_its_kernel():
    from lstminfer.kernels.rnn.plan import _persistent_plan

    def plan(hidden, bi, batch, dtype=torch.float32, sms=132, num_warps=None):
        packed = pack_rnn(make("lstm", 8, hidden, 1, bi, False), "cpu", dtype)
        return _persistent_plan(packed, batch, sms, False, num_warps)

    p = plan(1024, False, 8, torch.float16)  # U: 128 programs of 8 units, batch padded to 16 rows for tl.dot
    assert (p.kernel, p.block_n, p.r_tiles, p.programs, p.block_b) == ("persistent", 8, 128, 128, 16)
    assert p.resident and p.k_split == p.num_warps == 4
    assert plan(512, False, 64, torch.float16).num_warps == 8  # Q: 64 rows x HP 512 of h would spill at 4
    assert not plan(512, False, 64).resident  # fp32 with tl.dot streams its weights
    p = plan(512, True, 8)  # S: fp32 with 8 rows multiplies without tl.dot, on the real rows
    assert (p.block_n, p.r_tiles, p.programs, p.block_b) == (8, 64, 128, 8)
    assert plan(768, False, 16, torch.float16).r_tiles * 8 == 768  # V: no program for the padding to 1024
    # one warp a program, several a multiprocessor; tiles cover whole 16-wide k chunks
    p1 = plan(300, False, 1, num_warps=1)
    assert (p1.num_warps, p1.block_n, p1.r_tiles * p1.block_n) == (1, 2, 304)
    assert plan(1024, False, 1, num_warps=1).programs == 1024  # R: 1024 one-warp programs, 128 weights a lane
    # fewer multiprocessors: 64 programs of 16 units and 16 warps instead
    assert plan(1024, False, 1, sms=80, num_warps=1).num_warps == 16
    assert plan(1024, True, 320) is None  # 5 batch groups x 2 directions x 16 tiles of 64 > 132
    big = plan(1024, True, 256, torch.bfloat16)  # 4 groups x 2 x 16 tiles of 64 units: too many weights to keep
    assert (big.programs, big.block_n, big.resident) == (128, 64, False)
    assert p.describe()["kernel"] == "persistent" and p.describe()["block_n"] == 8
    assert plan_for(pack_rnn(make("lstm", 8, 20, 1, False, False), "cpu"), 4, 2).describe()["kernel"] == "stack"


@triton.jit
def _poll_test_kernel(words_ptr, err_ptr, B, KH, spin_limit, ON_GPU: tl.constexpr):
    _poll_h(words_ptr, 0, B, 64, KH, spin_limit, err_ptr, 4, 64, 2, ON_GPU)


@pytest.mark.parametrize("poisoned", [True, False])
def test_poll_gives_up_on_poison_and_says_so(poisoned):
    """A wait that never ends (a word left poisoned) stops after spin_limit polls and sets the error word."""
    words = torch.zeros(3, 64, dtype=torch.int32, device=DEVICE)
    if poisoned:
        words[2, 39] = -1
    words[:, 40:] = -1  # past KH: never read
    err = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _poll_test_kernel[(1,)](words, err, 3, 40, 1000, ON_GPU=DEVICE == "cuda")
    assert err.item() == int(poisoned)


def test_a_stalled_launch_raises_and_clears_its_error_word():
    from lstminfer.kernels.rnn import KernelStalled, raise_if_stalled

    ws = {"err": torch.ones(1, dtype=torch.int32, device=DEVICE)}
    with pytest.raises(KernelStalled, match="resident"):
        raise_if_stalled(ws)
    raise_if_stalled(ws)  # cleared: the next call is judged on its own


def test_runner_describes_the_kernel_and_plan_that_serve_it():
    module = make("lstm", 3, 5, 1, False, False)
    with FusedRunner(model_for(module), device=DEVICE) as runner:
        # per point where the runner says so (a sweep's points may take different kernels)
        info = runner.describe_at(4, 2) if hasattr(runner, "describe_at") else runner.describe()
    assert info["kernel"] in ("stack", "pipeline", "relay", "persistent", "persistent-cuda") and "programs" in info


def test_fused_rnn_is_a_public_entry_point():
    import lstminfer.kernels as kernels

    assert kernels.fused_rnn is not None and kernels.pack_rnn is pack_rnn


# hidden 256-1024, the shapes cut short: (kind, input, hidden, layers, bi, batch_first, seq, batch, state)
GPU_PERSISTENT_CASES = [
    ("lstm", 256, 512, 1, False, False, 30, 1, True),
    ("lstm", 80, 512, 2, True, True, 20, 8, True),
    ("gru", 64, 300, 2, True, False, 10, 5, False),
    ("lstm", 128, 1024, 1, False, False, 20, 8, False),
    ("gru", 128, 768, 1, False, True, 12, 16, True),
    ("lstm", 32, 256, 1, False, False, 10, 64, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("fp16", 1e-2), ("bf16", 8e-2)])
@pytest.mark.parametrize("case", GPU_PERSISTENT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_persistent_matches_float64(case, precision, atol):
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    # the Triton kernel (cuda=False); tests/test_cuda_persistent.py runs the same cases on the CUDA one
    assert plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch, cuda=False).kernel == "persistent"
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", cuda=False)
    assert all(g.dtype == dtype for g in got)
    assert_close(got, reference(module, x, hx), atol)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,atol", [("fp16", 1e-2), ("bf16", 8e-2)])
@pytest.mark.parametrize("case", [c for c in GPU_PERSISTENT_CASES if c[7] <= 8], ids=lambda c: "-".join(map(str, c)))
def test_gpu_persistent_wide_matches_float64(case, precision, atol):
    """fp16/bf16 on the fp32 kernel (plan option wide)."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", path="per-layer", wide=True)
    assert all(g.dtype == dtype for g in got)
    assert_close(got, reference(module, x, hx), atol)


def _benchmark_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_vs_cudnn.py"
    spec = importlib.util.spec_from_file_location("fused_vs_cudnn", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_loop_summaries_count_the_instructions_a_backward_branch_spans():
    """The benchmark's --sass report: one line per loop, predicated instructions counted by their opcode."""
    listing = "\n".join(f"        /*{addr:04x}*/   {text} ;   /* 0x0000 */" for addr, text in [
        (0x00, "MOV R1, c[0x0][0x28]"),
        (0x10, "@P0 BRA 0x60"),  # forward: not a loop
        (0x20, "LDS.128 R4, [UR4]"),
        (0x30, "FFMA R8, R4, R5, R8"),
        (0x40, "@!P1 FFMA R9, R6, R7, R9"),
        (0x50, "MUFU.EX2 R10, R8"),
        (0x60, "BAR.SYNC.DEFER_BLOCKING 0x0"),
        (0x70, "@P2 STG.E desc[UR6][R2.64], R10"),
        (0x80, "@P3 BRA 0x20"),
        (0x90, "EXIT"),
    ])
    lines = _benchmark_module().loop_summaries(listing, shortest=2)
    assert lines == ["loop of 7: BAR 1 FFMA 2 MUFU 1 LDS 1 STG 1"]


def test_the_grid_counts_16bit_points_slower_than_their_fp32_twin():
    """Issue 12's "fp16/bf16 never slower than fp32", as the grid prints it: pairs by point, 2 % of noise allowed,
    points without an fp32 twin left out."""
    bench = _benchmark_module()
    slower, pairs, worst = bench.count_16bit_slower([
        ("grid h512 b1 1L uni fp32", 98.5), ("grid h512 b1 1L uni bf16", 102.3),  # P's 3.9 %: counted
        ("grid h512 b8 1L uni fp32", 264.0), ("grid h512 b8 1L uni bf16", 137.4), ("grid h512 b8 1L uni fp16", 139.2),
        ("grid h32 b1 1L uni fp32", 28.3), ("grid h32 b1 1L uni bf16", 28.8),  # 1.8 %: noise
        ("grid h64 b64 2L bi bf16", 50.0),  # no fp32 twin
    ])
    assert slower == ["grid h512 b1 1L uni bf16"] and pairs == 4
    assert worst[1] == "grid h512 b1 1L uni bf16" and worst[0] == pytest.approx(102.3 / 98.5)
    assert bench.count_16bit_slower([])[:2] == ([], 0)
