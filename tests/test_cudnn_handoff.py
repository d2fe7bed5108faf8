"""The plan hands the sizes no fused kernel serves well to cuDNN (Plan.kernel "cudnn", kernels/rnn/cudnn.py).

CPU: which sizes are handed off and why (the plan as it plans for an H200, cuDNN said available), the refusals,
and cudnn_forward's numbers on the CPU module against float64 PyTorch. GPU: handed-off calls eager and in a CUDA
graph, and the two plan changes of 2026-12-03 (HP 64 with one row padded to two; HP 128 at batch 64 on the CUDA
kernel instead of one launch a step) against float64.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")

from lstminfer.kernels.rnn import pack_rnn, plan_for, rnn_forward  # noqa: E402
from lstminfer.kernels.rnn import plan as plan_module  # noqa: E402
from lstminfer.kernels.rnn.cudnn import cudnn_forward  # noqa: E402
from lstminfer.kernels.rnn.packing import PackedRNN  # noqa: E402
from test_fused import as_cuda_plan, assert_close, make, random_inputs, reference  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture
def h200_with_cudnn(monkeypatch):
    """plan_for as on an H200 (132 multiprocessors, NVRTC there) with cuDNN available, on this CPU."""
    as_cuda_plan(monkeypatch)
    from lstminfer.kernels.rnn import cuda_persistent

    monkeypatch.setattr(cuda_persistent, "available", lambda: (True, ""))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)


@pytest.mark.parametrize("hidden,bi,batch,dtype", [
    (1024, True, 8, torch.float32),  # bi fp32 at 1024: the CUDA plan does not fit (was the Triton kernel, 0.13x)
    (1024, False, 64, torch.bfloat16),  # batch 64 at hidden 1024: 16-bit slices past shared memory
    (768, True, 64, torch.float32),
])
def test_sizes_no_fused_kernel_fits_go_to_cudnn(h200_with_cudnn, hidden, bi, batch, dtype):
    packed = pack_rnn(make("lstm", hidden, hidden, 1, bi, False), "cpu", dtype)
    plan = plan_for(packed, 100, batch)
    assert plan.kernel == "cudnn" and plan.describe() == {"kernel": "cudnn", "path": "cudnn", "note": plan.note}
    assert "Triton persistent kernel" in plan.note and "cudnn=False" in plan.note
    # cudnn=False, a path, or any plan option keeps the fused kernels
    assert plan_for(packed, 100, batch, cudnn=False).kernel == "persistent"
    assert plan_for(packed, 100, batch, path="per-layer").kernel == "persistent"
    assert plan_for(packed, 100, batch, num_warps=4).kernel == "persistent"


@pytest.mark.parametrize("hidden,bi,batch,dtype,kernel", [
    (512, False, 64, torch.bfloat16, "persistent-cuda"),  # Q: the CUDA kernel fits, it stays ours
    (1024, False, 8, torch.float16, "persistent-cuda"),  # U
    (128, False, 64, torch.float32, "persistent-cuda"),  # was multi-launch (0.53x), now the CUDA kernel
    (128, False, 8, torch.float32, "stack"),
    (64, False, 1, torch.float32, "stack"),
])
def test_sizes_a_fused_kernel_serves_stay_fused(h200_with_cudnn, hidden, bi, batch, dtype, kernel):
    plan = plan_for(pack_rnn(make("lstm", hidden, hidden, 1, bi, False), "cpu", dtype), 100, batch)
    assert plan.kernel == kernel, plan.note


@pytest.mark.parametrize("hidden,layers,batch,dtype", [
    (32, 1, 64, torch.float32),  # the stack kernel measured 0.95x of cuDNN (H200 grid, 2026-12-03)
    (32, 2, 64, torch.float32),  # 0.98x
    (768, 2, 64, torch.bfloat16),  # 0.79x: cuDNN overlaps its two layers
    (768, 3, 50, torch.bfloat16),
    (768, 1, 16, torch.float16),  # V: 0.91x of cuDNN's persistent kernel
])
def test_sizes_measured_faster_on_cudnn_go_to_cudnn(h200_with_cudnn, hidden, layers, batch, dtype):
    """CUDNN_MEASURED: the exact sizes where one H200 run timed cuDNN in a graph faster than our plan and its variants;
    the note says so, and cudnn=False, a path or any plan option keeps ours."""
    packed = pack_rnn(make("lstm", hidden, hidden, layers, False, False), "cpu", dtype)
    plan = plan_for(packed, 100, batch)
    assert plan.kernel == "cudnn" and "measured" in plan.note and "cudnn=False keeps it" in plan.note, plan.note
    ours = plan_for(packed, 100, batch, cudnn=False)
    assert ours.kernel in ("stack", "persistent-cuda") and ours.kernel in plan.note
    assert plan_for(packed, 100, batch, path="per-layer").kernel != "cudnn"


@pytest.mark.parametrize("hidden,layers,bi,batch,dtype", [
    (768, 1, False, 64, torch.bfloat16),  # one layer: ours measured faster (689 against 738.5 us)
    (768, 2, False, 48, torch.bfloat16),  # 3 batch groups: not the measured geometry
    (768, 2, True, 64, torch.bfloat16),
    (768, 2, False, 64, torch.float16),  # not measured
    (32, 1, False, 8, torch.float32),
    (32, 1, True, 64, torch.float32),
    (768, 1, False, 8, torch.float16),  # ours measured faster (1.28x)
    (768, 1, False, 16, torch.bfloat16),
])
def test_sizes_next_to_the_measured_ones_are_not_handed_off_by_the_measurement(h200_with_cudnn, hidden, layers, bi,
                                                                              batch, dtype):
    """(bidirectional 768 at batch 64 goes to cuDNN for another reason: no CUDA plan fits it)"""
    plan = plan_for(pack_rnn(make("lstm", hidden, hidden, layers, bi, False), "cpu", dtype), 100, batch)
    assert "measured" not in plan.note, plan.note


def test_measured_cudnn_sizes_stay_fused_off_hopper(h200_with_cudnn, monkeypatch):
    monkeypatch.setattr(plan_module, "_hopper", lambda device: False)
    plan = plan_for(pack_rnn(make("lstm", 32, 32, 1, False, False), "cpu"), 100, 64)
    assert plan.kernel == "stack"


def test_hidden_512_batch_8_16_bit_takes_8_units_a_block(h200_with_cudnn):
    """CUDA_MEASURED_OPTIONS (session 9): unidirectional hidden 512 at 2-8 rows in 16-bit on 64 blocks of 8 units
    (fp16 174.5 -> 139.2 us, cuDNN's persistent kernel 161.2); bidirectional and 9+ rows keep 4 units."""
    for dtype in (torch.float16, torch.bfloat16):
        uni = plan_for(pack_rnn(make("lstm", 512, 512, 1, False, False), "cpu", dtype), 100, 8)
        assert (uni.kernel, uni.block_n, uni.programs) == ("persistent-cuda", 8, 64)
        assert plan_for(pack_rnn(make("lstm", 512, 512, 1, False, False), "cpu", dtype), 100, 16).block_n == 4
        bi = plan_for(pack_rnn(make("lstm", 512, 512, 1, True, False), "cpu", dtype), 100, 8)
        assert (bi.block_n, bi.programs) == (8, 128)  # 64 blocks a direction either way


def test_hidden_64_one_row_pads_the_batch_tile_instead_of_two_row_tiles(monkeypatch):
    """HP 64, one row: 2 row tiles exchanging h ran 10.7 us a step on the H200 (1070 us at seq 100, against 48-59
    at 8-64 rows on one tile); one tile of 2 rows (a masked padding row) gives the cell one element a thread."""
    as_cuda_plan(monkeypatch)
    plan = plan_for(pack_rnn(make("lstm", 64, 64, 1, False, False)), 100, 1)
    assert (plan.kernel, plan.r_tiles, plan.block_b, plan.num_warps) == ("stack", 1, 2, 4)


def test_multi_launch_goes_to_cudnn_where_no_cuda_plan_fits(h200_with_cudnn, monkeypatch):
    """The stack kernel not resident and no CUDA plan (here: NVRTC missing): cuDNN instead of a launch a step."""
    from lstminfer.kernels.rnn import cuda_persistent

    monkeypatch.setattr(cuda_persistent, "available", lambda: (False, "no NVRTC"))
    packed = pack_rnn(make("lstm", 128, 128, 1, False, False), "cpu")
    plan = plan_for(packed, 100, 64)
    assert plan.kernel == "cudnn" and "one stack launch a step" in plan.note
    assert plan_for(packed, 100, 64, cudnn=False).path == "multi-launch"


def test_cudnn_asked_for_where_it_cannot_run_is_refused_in_one_line():
    packed = pack_rnn(make("gru", 8, 16, 1, False, False), "cpu")
    with pytest.raises(ValueError, match=r"^cannot hand this call to cuDNN: not on a CUDA device$"):
        plan_for(packed, 4, 2, path="cudnn")
    no_source = PackedRNN(**{f: getattr(packed, f) for f in ("kind", "input_size", "hidden_size", "num_layers",
                                                             "num_directions", "batch_first", "hidden_padded",
                                                             "input_padded", "dtype", "w_ih0", "w_ihr", "w_hh",
                                                             "bias")})
    assert plan_module.cudnn_unavailable(no_source) != ""


@pytest.mark.parametrize("kind,bi,bf,with_state,bias", [("lstm", True, False, True, True),
                                                        ("gru", False, True, False, True),
                                                        ("lstm", False, True, False, False),
                                                        ("gru", True, False, True, False)])
def test_cudnn_forward_matches_float64_and_writes_the_state_buffers(kind, bi, bf, with_state, bias):
    """The handed-off call on PyTorch's own weights (b_ih, b_hh apart) and module, on the CPU here: the numbers
    are the module's; hn / cn land in the caller's buffers (a stream's state)."""
    module = make(kind, 7, 12, 2, bi, bf, bias=bias)
    x, hx = random_inputs(module, 5, 3, with_state)
    packed = pack_rnn(module, "cpu")
    h0, c0 = (hx if kind == "lstm" else (hx, None)) if with_state else (None, None)
    state_shape = (2 * (2 if bi else 1), 3, 12)
    hn_out = torch.full(state_shape, 9.0)
    cn_out = torch.full(state_shape, 9.0) if kind == "lstm" else None
    got = cudnn_forward(packed, x, h0, c0, hn_out, cn_out)
    assert_close(list(got), reference(module, x, hx), 1e-5)
    assert got[1] is hn_out and (kind != "lstm" or got[2] is cn_out)
    assert packed.cudnn_module is not None and cudnn_forward(packed, x, h0, c0)[0].equal(got[0])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_handed_off_calls_match_float64_eager_and_in_a_graph(precision):
    module = make("lstm", 64, 1024, 1, True, False)  # bi at 1024: handed off at fp32 (and bf16 at batch 64)
    batch = 8 if precision == "fp32" else 64
    x, hx = random_inputs(module, 12, batch, True)
    dtype = DTYPES[precision]
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, 12, batch)
    assert plan.kernel == "cudnn", plan.describe()
    args = [t.cuda().to(dtype) for t in (x, *hx)]
    eager = rnn_forward(packed, *args)
    atol = 2e-5 if precision == "fp32" else 3e-2
    assert_close([t.cpu() for t in eager], reference(module, x, hx), atol)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        rnn_forward(packed, *args)  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            captured = rnn_forward(packed, *args)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind,hidden,batch,layers,bi", [("lstm", 64, 1, 2, False), ("gru", 64, 1, 1, True),
                                                         ("lstm", 128, 64, 2, True), ("gru", 128, 64, 1, False),
                                                         ("lstm", 100, 37, 1, False)])
def test_gpu_new_default_plans_match_float64(kind, hidden, batch, layers, bi, precision):
    """HP 64 at one row (one padded tile) and HP 128 at batch 37-64 (the CUDA kernel), the plans' defaults."""
    module = make(kind, 32, hidden, layers, bi, False)
    x, hx = random_inputs(module, 30, batch, True)
    dtype = DTYPES[precision]
    plan = plan_for(pack_rnn(module, "cuda", dtype), 30, batch)
    assert plan.kernel == ("stack" if batch == 1 else "persistent-cuda"), plan.describe()
    packed = pack_rnn(module, "cuda", dtype)
    states = [*hx] if isinstance(hx, tuple) else [hx, None]
    got = rnn_forward(packed, *[None if t is None else t.cuda().to(dtype) for t in (x, *states)])
    atol = {"fp32": 2e-5, "bf16": 2e-2, "fp16": 4e-3}[precision]
    assert_close([t.float().cpu() for t in got], reference(module, x, hx), atol)


def test_flatten_rnn_leaves_cpu_modules_as_they_are_and_says_so():
    from lstminfer.cudnn_rnn import flatten_rnn, in_one_chunk

    module = make("lstm", 4, 8, 2, True, False).to(torch.bfloat16)
    before = [w.data_ptr() for w in module._flat_weights]
    assert flatten_rnn(module) is False and not in_one_chunk(module)
    assert [w.data_ptr() for w in module._flat_weights] == before


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind,bias,bi", [("lstm", True, True), ("gru", False, False)])
def test_gpu_flatten_rnn_puts_bf16_weights_in_one_buffer_and_cudnn_stops_compacting(kind, bias, bi):
    """flatten_parameters() skips bf16 (torch.backends.cudnn.CUDNN_TENSOR_DTYPES), so cuDNN compacted the weights
    on every call and warned; flatten_rnn flattens them, the warning goes and the numbers stay the same."""
    import warnings

    from lstminfer.cudnn_rnn import flatten_rnn, in_one_chunk

    module = make(kind, 16, 32, 2, bi, False, bias=bias).to("cuda", torch.bfloat16)
    x = torch.randn(5, 3, 16, device="cuda", dtype=torch.bfloat16)
    module.flatten_parameters()
    assert not in_one_chunk(module)  # what PyTorch leaves (if this fails, PyTorch now flattens bf16 itself)
    with torch.no_grad(), warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        want = module(x)[0]
    assert any("contiguous chunk" in str(w.message) for w in before)
    assert flatten_rnn(module) and in_one_chunk(module)
    with torch.no_grad(), warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        got = module(x)[0]
    assert not any("contiguous chunk" in str(w.message) for w in after)
    assert torch.equal(got, want)


@pytest.mark.parametrize("batch,relay", [(8, True), (44, True), (45, False), (64, False)])
def test_relay_is_the_default_only_with_two_helpers_a_tile(monkeypatch, batch, relay):
    """HP 32, seq 100: at batch 64 the relay kernel had one helper a tile and lost to the stack kernel's one-warp
    plan (H200: 58.5 against 41.1 us); from 2 helpers a tile (132 // batch - 1 >= 2, batch <= 44) it stays."""
    as_cuda_plan(monkeypatch)
    packed = pack_rnn(make("lstm", 32, 32, 1, False, False))
    plan = plan_for(packed, 100, batch)
    assert (plan.kernel, plan.num_warps, plan.block_b) == ("relay" if relay else "stack", 1, 1)
    assert plan_for(packed, 100, batch, relay=True).relay  # asked for, it still runs where it fits
