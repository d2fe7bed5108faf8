"""The CUDA C++ persistent kernel (kernels/rnn/cuda_source.py, compiled by NVRTC).

On the CPU: every kind of variant compiles for sm_90 without errors or spills (NVRTC runs without a GPU), and
the plan picks the CUDA kernel or says why not. The slab algorithm both persistent kernels share is checked
against float64 under Triton's interpreter in test_fused.py (test_persistent_*). With a GPU (`gpu` marker):
the kernel itself against float64 PyTorch, CUDA-graph replay, NaN propagation, and a stalled wait raising.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'lstminfer[gpu]')")

from lstminfer.kernels.rnn import KernelStalled, pack_rnn, plan_for, rnn_forward  # noqa: E402
from lstminfer.kernels.rnn.plan import (  # noqa: E402
    CUDA_MEASURED_OPTIONS,
    _cuda_choice,
    _cuda_plan,
    _refuse_cuda_options,
)
from test_fused import (  # noqa: E402
    DTYPES,
    GPU_PERSISTENT_CASES,
    as_cuda_plan,
    assert_close,
    make,
    random_inputs,
    reference,
    run_fused,
)


def packed_of(hidden, bi, dtype=torch.float32, kind="lstm", layers=1):
    return pack_rnn(make(kind, 8, hidden, layers, bi, False), "cpu", dtype)


# ---- CPU: the plan ------------------------------------------------------------------------------------------

def test_every_measured_option_takes_effect_at_both_ends_of_its_batch_range():
    """CUDA_MEASURED_OPTIONS: a size its options do not fit falls back to the plain plan without a word (by design,
    _cuda_plan), so an entry that never fits would be a default in the table and nowhere else. Each entry's options
    are in the plan at the first and the last batch of its range (hidden sizes of the key, LSTM, on 132 SMs)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    checked = 0
    for (precision, hidden, dirs), entries in CUDA_MEASURED_OPTIONS.items():
        first = 1
        for largest, options in entries:
            for batch in {first, largest}:
                plan = _cuda_plan(packed_of(hidden, dirs == 2, dtypes[precision]), batch, 132)
                fields = dict(cuda_nb=plan.block_n, cuda_kpt=plan.r_tiles * plan.block_n // plan.k_split)
                got = {name: fields[name] if name in fields else getattr(plan, name) for name in options}
                assert got == options, (precision, hidden, dirs, batch, plan)
                checked += bool(options)
            first = largest + 1
    assert checked >= 30


def test_cuda_plan_fits_the_multiprocessors_and_names_its_kernel():
    p = _cuda_plan(packed_of(1024, False, torch.float16), 8, 132)  # U: 128 blocks of 8 units, 16 rows, mma
    assert (p.kernel, p.block_n, p.r_tiles, p.programs, p.block_b, p.mma) == ("persistent-cuda", 8, 128, 128, 16,
                                                                             True)
    # the measured defaults (plan.py, POLL_FRAG_MIN_HIDDEN): from hidden 512 h polled into register fragments,
    # a warp per k slice, the first read of a wait 500 ns into the step
    assert (p.mma_regs, p.poll_frag, p.poll_delay, p.num_warps, p.k_split) == (True, True, 500, 8, 8)
    q = _cuda_plan(packed_of(512, False, torch.bfloat16), 64, 132)  # Q: 4 groups of 16 rows x 32 blocks
    assert (q.block_b, q.block_n, q.programs, q.mma_regs, q.poll_frag, q.poll_delay) == (16, 16, 128, True, True, 500)
    # below hidden 512: mma_regs, h via shared memory (the plain plan: the measured default there is a cluster, v20)
    m = _cuda_plan(packed_of(256, False, torch.bfloat16), 8, 132, measured=False)
    assert (m.mma_regs, m.poll_frag, m.poll_delay) == (True, False, 0)
    shared_w = _cuda_plan(packed_of(512, False, torch.bfloat16), 64, 132, mma_regs=False)  # asked: W^T in shared
    assert (shared_w.mma_regs, shared_w.k_split, shared_w.num_warps) == (False, 1, 8)  # a warp per 8-column tile
    big = _cuda_plan(packed_of(1024, False, torch.float16), 32, 132)  # fragments past the registers: W^T shared
    assert big is not None and big.mma and not big.mma_regs and big.poll_delay == 0
    r = _cuda_plan(packed_of(1024, False), 1, 132, measured=False)  # R fp32: FFMA, one row, 128 k a thread
    assert (r.mma, r.block_b, r.block_n, r.num_warps, r.k_split) == (False, 1, 8, 8, 8)
    r = _cuda_plan(packed_of(1024, False), 1, 132)  # measured (v21): 2 columns and 64 k a thread, 256 threads
    assert (r.mma, r.block_b, r.block_n, r.num_warps, r.k_split, r.ffma_cols) == (False, 1, 8, 8, 16, 2)
    s = _cuda_plan(packed_of(512, True), 8, 132)  # S fp32: 64 blocks a direction
    assert (s.programs, s.block_n, s.block_b) == (128, 8, 8)
    v = _cuda_plan(packed_of(768, False, torch.float16), 16, 132)  # V: no block for the padding to 1024
    assert v.r_tiles * v.block_n == 768 and v.programs == 96
    odd = _cuda_plan(packed_of(300, False), 5, 132)  # units computed: 300 rounded up to a multiple of 64
    assert odd.r_tiles * odd.block_n == 320
    assert _cuda_plan(packed_of(1024, True), 64, 132) is None  # fp32 W_hh^T slices past the registers
    assert _cuda_plan(packed_of(768, True), 8, 132, w_shared=False) is None  # 16 units x 768 k: past the registers
    shared = _cuda_plan(packed_of(768, True), 8, 132)  # so by default W^T in shared memory instead
    assert (shared.w_shared, shared.block_n, shared.programs, shared.num_warps) == (True, 16, 96, 6)
    assert _cuda_plan(packed_of(768, True), 8, 132, w_shared=True) == shared
    assert not _cuda_plan(packed_of(512, True), 8, 132).w_shared  # S fp32: the registers hold it (1585 vs 1598 us)
    assert not _cuda_plan(packed_of(512, False, torch.float16), 8, 132, w_shared=True).w_shared  # mma: no use
    regs = _cuda_plan(packed_of(1024, False, torch.float16), 8, 132, mma_regs=True)  # a warp per k slice
    assert (regs.mma_regs, regs.num_warps, regs.k_split, regs.programs) == (True, 8, 8, 128)
    assert _cuda_plan(packed_of(1024, False, torch.bfloat16), 64, 132, mma_regs=True) is None  # 16 tiles x 8 chunks
    frag = _cuda_plan(packed_of(768, False, torch.float16), 16, 132, poll_frag=True)  # V: implies mma_regs
    assert (frag.poll_frag, frag.mma_regs, frag.num_warps, frag.k_split, frag.programs) == (True, True, 8, 8, 96)
    odd = _cuda_plan(packed_of(300, True, torch.float16), 5, 132, poll_frag=True)  # 20 k chunks: 2 slices of 10
    assert (odd.poll_frag, odd.k_split, odd.num_warps) == (True, 2, 2)
    assert _cuda_plan(packed_of(300, True, torch.float16), 5, 132, mma_regs=True).k_split == 4  # 5 chunks a warp
    assert not _cuda_plan(packed_of(512, False), 8, 132, poll_frag=True).poll_frag  # fp32: FFMA, no fragments
    assert frag.describe()["poll_frag"] is True
    wider = _cuda_plan(packed_of(768, False, torch.float16), 16, 132, poll_frag=True, cuda_nb=16)  # fewer blocks
    assert (wider.block_n, wider.r_tiles, wider.programs, wider.k_split) == (16, 48, 48, 8)
    assert _cuda_plan(packed_of(1024, False, torch.float16), 8, 132, mma_regs=True, cuda_nb=16) is None  # registers
    assert not _cuda_plan(packed_of(512, False, torch.float16), 1, 132).mma  # 16-bit, one row: FFMA
    assert _cuda_plan(packed_of(512, False, torch.float16), 1, 132, mma=True).mma
    assert not _cuda_plan(packed_of(512, False, torch.float16), 8, 132, mma=False).mma
    d = p.describe()
    assert d["kernel"] == "persistent-cuda" and d["mma"] is True and "note" not in d


def test_cuda_choice_says_why_not():
    packed = packed_of(512, False)
    assert _cuda_choice(packed, 1, 132, True, False, None, None) == (None, "cuda=False")
    assert _cuda_choice(packed, 1, 132, False, None, None, None) == (None, "no CUDA device")
    assert _cuda_choice(packed, 1, 132, True, None, None, True)[1] == "wide plans run on the Triton kernel"
    from lstminfer.kernels.rnn.cuda_persistent import available

    ok, why = available()
    plan, reason = _cuda_choice(packed, 1, 132, True, None, None, None)
    if ok:
        assert plan.kernel == "persistent-cuda" and reason == ""
        big = packed_of(1024, True)
        assert _cuda_choice(big, 64, 132, True, None, None, None) == (
            None, "the size does not fit the CUDA kernel (blocks, registers or shared memory)")
    else:
        assert plan is None and reason == why and ("cuda-bindings" in why or "NVRTC" in why)


def test_cuda_kpt_sets_the_ffma_products_k_a_thread_or_refuses_in_one_line():
    """cuda_kpt (asked only, v20): k a thread of the FFMA product, so threads = 4 x units x k / cuda_kpt. Hidden 128
    batch 64 in fp32 (the grid's CUDA loss): one warp of 64 k a thread by default, 4 warps at 16; also on clusters.
    Where it does not fit (threads past the registers) or the plan is mma, a one-line ValueError."""
    h128 = packed_of(128, False)
    default = _cuda_plan(h128, 64, 132, measured=False)  # the plain plan (v20's measured default: clusters of 8)
    assert (default.block_b, default.block_n, default.programs, default.num_warps, default.k_split) == (16, 4, 128, 1,
                                                                                                        2)
    for kpt, warps in ((64, 1), (32, 2), (16, 4), (8, 8)):
        p = _cuda_plan(h128, 64, 132, cuda_kpt=kpt)
        assert (p.num_warps, p.k_split, p.block_n, p.programs, p.mma) == (warps, 128 // kpt, 4, 128, False)
    c8 = _cuda_plan(h128, 64, 132, cluster=8, cuda_kpt=32)  # 64 columns x 128 k / 32: 8 warps
    assert (c8.cluster, c8.block_n, c8.num_warps, c8.k_split) == (8, 16, 8, 4)
    assert _cuda_plan(packed_of(512, False), 1, 132, cuda_kpt=32).num_warps == 8  # P fp32: 16 x 512 / 32 threads
    with pytest.raises(ValueError, match=r"^cuda_kpt=32 does not fit hidden 512 batch 64 in float32: no block") as e:
        _cuda_plan(packed_of(512, False), 64, 132, cuda_kpt=32)  # 1024 threads of 122+ registers
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^cuda_kpt=16 does not fit .* bfloat16: this plan multiplies with mma"):
        _cuda_plan(packed_of(256, False, torch.bfloat16), 64, 132, cuda_kpt=16)
    assert not _cuda_plan(packed_of(256, False, torch.bfloat16), 64, 132, cuda_kpt=16, mma=False).mma
    with pytest.raises(ValueError, match=r"^cuda_kpt must be one of \(8, 16"):
        _cuda_plan(h128, 64, 132, cuda_kpt=12)


def test_ffma_cols_gives_a_thread_several_columns_or_refuses_in_one_line():
    """ffma_cols (v21): the FFMA product with FFMA_COLS columns a thread and ~128 registers of W (k a thread = 128 /
    ffma_cols), so threads = 4 x units / ffma_cols x k slices. Where the plan is mma, keeps W in shared memory, or
    no block fits: a one-line ValueError."""
    q = _cuda_plan(packed_of(512, False), 64, 132, ffma_cols=2)  # Q fp32: 64 columns / 2 x 512 / 64 k
    assert (q.ffma_cols, q.k_split, q.num_warps, q.block_b, q.block_n, q.programs, q.mma) == (2, 8, 8, 16, 16, 128,
                                                                                               False)
    q4 = _cuda_plan(packed_of(512, False), 64, 132, ffma_cols=4)
    assert (q4.ffma_cols, q4.k_split, q4.num_warps) == (4, 16, 8)
    s = _cuda_plan(packed_of(512, True), 8, 132, ffma_cols=2)  # S fp32: 32 columns / 2 x 8 k slices, 2 directions
    assert (s.ffma_cols, s.k_split, s.num_warps, s.programs) == (2, 8, 4, 128)
    p = _cuda_plan(packed_of(512, False, torch.bfloat16), 1, 132, ffma_cols=2)  # 16-bit at one row: FFMA
    assert (p.ffma_cols, p.mma) == (2, False)
    assert "ffma_cols" in p.describe()
    with pytest.raises(ValueError, match=r"^ffma_cols=2 needs the FFMA product .* bfloat16 its plan multiplies with "
                                         r"mma.sync \(add mma=False\); leave ffma_cols out$") as e:
        _cuda_plan(packed_of(512, False, torch.bfloat16), 8, 132, ffma_cols=2)
    assert "\n" not in str(e.value)
    assert _cuda_plan(packed_of(512, False, torch.bfloat16), 8, 132, ffma_cols=2, mma=False).ffma_cols == 2
    with pytest.raises(ValueError, match=r"^ffma_cols must be one of \(1, 2, 4\)"):
        _cuda_plan(packed_of(512, False), 64, 132, ffma_cols=3)
    with pytest.raises(ValueError, match=r"^ffma_cols=2 needs .* keeps W_hh\^T in shared memory"):
        _cuda_plan(packed_of(768, True), 8, 132, ffma_cols=2)  # bidirectional fp32 768: w_shared (X)
    assert _cuda_plan(packed_of(512, False), 64, 132, ffma_cols=1) == _cuda_plan(packed_of(512, False), 64, 132,
                                                                                  measured=False)
    # and k a thread as asked: h512 b8 (16 columns a block) on 4 warps of 32 k instead of 2 of 64
    k32 = _cuda_plan(packed_of(512, False), 8, 132, ffma_cols=2, cuda_kpt=32)
    assert (k32.ffma_cols, k32.k_split, k32.num_warps) == (2, 16, 4)
    with pytest.raises(ValueError, match=r"^ffma_cols=2 does not fit hidden 512 batch 64 in float32"):
        _cuda_plan(packed_of(512, False), 64, 132, ffma_cols=2, cuda_kpt=32)  # 512 threads of 154+ registers
    # v22: the FFMA plans' first-read delay, 400 ns at padded hidden 1024 in 16-bit; none on mma without poll_frag
    assert _cuda_plan(packed_of(512, False), 1, 132).poll_delay == 250
    assert _cuda_plan(packed_of(1024, False, torch.bfloat16), 1, 132).poll_delay == 400
    assert _cuda_plan(packed_of(1024, False), 1, 132).poll_delay == 250
    assert _cuda_plan(packed_of(256, False, torch.bfloat16), 64, 132, measured=False).poll_delay == 0
    # session 10's measured Plan fields (CUDA_MEASURED_OPTIONS, MEASURED_PLAN_FIELDS): T's 1000 ns at hidden 1024
    # bf16 batch 9-16 only, the adapted spin at batch 33-64 of four sizes only, 250 ns at hidden 256 uni 16-bit batch
    # 33-64, on the plan built without them
    for hidden, bi, dtype, batch, want in [
            (1024, False, torch.bfloat16, 16, (1000, 0)), (1024, False, torch.bfloat16, 8, (500, 0)),
            (1024, False, torch.float16, 16, (500, 0)), (768, False, torch.float16, 64, (0, 2)),
            (768, False, torch.bfloat16, 33, (0, 2)), (768, False, torch.bfloat16, 32, (500, 0)),
            (768, True, torch.bfloat16, 1, (0, 0)), (256, True, torch.bfloat16, 64, (0, 2)),
            (256, True, torch.float16, 64, (0, 0)), (128, True, torch.float32, 64, (250, 2)),
            (128, False, torch.float32, 64, (0, 0)), (256, False, torch.bfloat16, 64, (250, 0)),
            (256, False, torch.float16, 33, (250, 0)), (256, False, torch.bfloat16, 32, (0, 0))]:
        got = _cuda_plan(packed_of(hidden, bi, dtype), batch, 132)
        plain = _cuda_plan(packed_of(hidden, bi, dtype), batch, 132, measured=False)
        assert (got.poll_delay, got.poll_spin) == want, (hidden, bi, dtype, batch, got)
        if want != (plain.poll_delay, plain.poll_spin) and not got.cluster:  # the measured fields alone
            assert dataclasses.replace(got, poll_delay=plain.poll_delay, poll_spin=plain.poll_spin) == plain
    # the measured defaults (CUDA_MEASURED_OPTIONS, v21): Q and S fp32 on 2 columns a thread, fp32 h512 b8 not
    assert _cuda_plan(packed_of(512, False), 64, 132).ffma_cols == 2
    assert _cuda_plan(packed_of(512, True), 8, 132).ffma_cols == 2
    assert _cuda_plan(packed_of(512, False), 8, 132).ffma_cols == 0
    assert _cuda_plan(packed_of(512, False), 64, 132, measured=False).ffma_cols == 0


def test_measured_options_are_the_default_only_where_listed_and_asked_options_win(monkeypatch):
    """CUDA_MEASURED_OPTIONS (v20's rule): an entry makes its options the default plan of its (precision, padded
    hidden, directions) up to its batch; any asked CUDA option (cluster=False too) plans as asked; options that do not
    fit the size leave the plain plan."""
    from lstminfer.kernels.rnn import plan as plan_module

    plain = _cuda_plan(packed_of(256, False), 8, 132, measured=False)
    monkeypatch.setattr(plan_module, "CUDA_MEASURED_OPTIONS", {("fp32", 256, 1): ((8, dict(cluster=8)),),
                                                               ("fp32", 512, 1): ((64, dict(cuda_kpt=32)),)})
    c8 = _cuda_plan(packed_of(256, False), 8, 132)
    assert (c8.cluster, c8.block_n) == (8, 32)
    assert _cuda_plan(packed_of(256, False), 9, 132).cluster == 0  # past the entry's batch: the plain plan
    assert _cuda_plan(packed_of(256, False), 8, 132, cluster=False) == plain  # asked: no cluster
    assert _cuda_plan(packed_of(256, True), 8, 132).cluster == 0  # another key (bidirectional)
    assert _cuda_plan(packed_of(256, False, torch.bfloat16), 8, 132).cluster == 0  # another precision
    q = _cuda_plan(packed_of(512, False), 64, 132)  # cuda_kpt=32 does not fit Q fp32: the plain plan, no error
    assert q.k_split == 4 and q.num_warps == 8


def test_the_measured_defaults_are_the_d_sweeps_winners_at_its_sizes_only():
    """CUDA_MEASURED_OPTIONS as v20's D sweep chose them (docs/fused_kernel.md "v20 measured"): clusters of 8 at hidden
    256 fp32 (uni batch 1-64, bi 2-8) and hidden 128 fp32 uni (batch 9-64), 16-bit hidden 256 uni batch 2-8 on
    clusters of 8 with FFMA, 2 FFMA columns a thread at hidden 512 fp32 uni batch 1 (session 10); the plain plan
    everywhere else (other batches, directions, precisions, hidden sizes of the same padded size), off Hopper
    (measured=False) and where anything is asked."""
    def plain(hidden, bi, dtype, batch):
        return _cuda_plan(packed_of(hidden, bi, dtype), batch, 132, measured=False)

    for hidden, bi, dtype, batch in [(256, False, torch.float32, 1), (256, False, torch.float32, 8),
                                     (256, False, torch.float32, 64), (256, True, torch.float32, 5),
                                     (256, True, torch.float32, 8), (128, False, torch.float32, 64),
                                     (128, False, torch.float32, 16)]:
        got = _cuda_plan(packed_of(hidden, bi, dtype), batch, 132)
        assert (got.cluster, got.mma) == (8, False), (hidden, bi, batch)
        assert plain(hidden, bi, dtype, batch).cluster == 0
    c8 = _cuda_plan(packed_of(128, False), 64, 132)  # the timed plan: 13 clusters of 5 rows, 4 warps
    assert (c8.block_b, c8.block_n, c8.programs, c8.num_warps) == (5, 16, 104, 4)
    for dtype in (torch.float16, torch.bfloat16):
        for batch in (2, 8):
            got = _cuda_plan(packed_of(256, False, dtype), batch, 132)
            assert (got.cluster, got.mma, got.block_b, got.programs) == (8, False, 1, 8 * batch)
        for batch in (1, 9, 32):  # b1: 2.3 % (under the rule's 3 %); b64: the clusters lost (session 10: 250 ns)
            assert _cuda_plan(packed_of(256, False, dtype), batch, 132) == plain(256, False, dtype, batch)
    # 16-bit with 8 units a block where it was slower than fp32 (the final grid's re-timing, 2026-12-03 ~14:25 UTC)
    for hidden, bi, dtype, batch in [(128, False, torch.bfloat16, 64), (128, False, torch.float16, 40),
                                     (256, True, torch.bfloat16, 8), (384, False, torch.bfloat16, 1),
                                     (512, False, torch.bfloat16, 1)]:
        got = _cuda_plan(packed_of(hidden, bi, dtype), batch, 132)
        assert (got.block_n, got.cluster) == (8, 0) and plain(hidden, bi, dtype, batch).block_n == 4, (hidden, dtype)
    p = _cuda_plan(packed_of(512, False), 1, 132)  # P fp32 (session 10): 2 columns a thread, 128 blocks of 4 units
    assert (p.block_n, p.programs, p.cluster, p.ffma_cols) == (4, 128, 0, 2), p
    assert plain(512, False, torch.float32, 1).ffma_cols == 0
    for hidden, bi, dtype, batch in [(256, True, torch.float32, 1), (256, True, torch.float32, 16),
                                     (256, False, torch.float32, 65), (128, False, torch.float32, 8),
                                     (128, True, torch.float32, 32), (512, False, torch.float32, 2),
                                     (512, True, torch.float32, 1), (512, False, torch.float16, 1),
                                     (256, True, torch.float16, 8), (256, True, torch.bfloat16, 16),
                                     (384, False, torch.float32, 1), (200, False, torch.float32, 8),
                                     (1024, False, torch.float16, 8)]:
        assert _cuda_plan(packed_of(hidden, bi, dtype), batch, 132) == plain(hidden, bi, dtype, batch), (hidden, bi,
                                                                                                     dtype, batch)
    asked = _cuda_plan(packed_of(256, False, torch.float16), 8, 132, mma=True)  # anything asked: as asked
    assert asked == plain(256, False, torch.float16, 8) and asked.mma and not asked.cluster
    assert _cuda_plan(packed_of(256, False), 8, 132, cluster=16).cluster == 16


def test_cuda_only_options_are_refused_where_they_do_not_apply():
    """poll_sentinel, sentinel_last, stamps and poll_spin: a one-line ValueError naming the option where the plan
    runs another kernel (here the CPU's: the Triton persistent and the stack kernel), poll_sentinel where its
    sentinels would be all of h (one batch row a block, one 16-byte chunk a producer block), poll_spin outside 0-2
    or on a cluster plan (no polls)."""
    for option in ("poll_sentinel", "sentinel_last", "stamps", "poll_spin", "mma_swap", "wide_h"):
        with pytest.raises(ValueError, match=f"^{option} is an option of the CUDA persistent kernel, and this "
                                             f"call's plan runs the persistent kernel") as err:
            plan_for(packed_of(20, False), 4, 3, path="per-layer", **{option: True})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^stamps is an option of the CUDA persistent kernel.* runs the stack kernel"):
        plan_for(packed_of(20, False), 4, 3, stamps=True)
    with pytest.raises(ValueError, match=r"^stamps=5 is not one of False, True .*, 3 .* or 4 \(when h is stored\)$"):
        _refuse_cuda_options(dataclasses.replace(_cuda_plan(packed_of(512, False), 1, 132), stamps=5),
                             torch.float32, 1)
    with pytest.raises(ValueError, match=r"^poll_spin=3 is not one of 0 .*, 1 .* or 2 \(spun and adapted .*\)$"):
        _refuse_cuda_options(dataclasses.replace(_cuda_plan(packed_of(512, False), 1, 132), poll_spin=3),
                             torch.float32, 1)
    # group_rows on a plan without clusters: its grid has one batch group a block_b rows, so fewer rows a group
    # than the batch would leave rows to nobody (wrong numbers); all of the batch in one group is U's 8 real rows
    u_plan = _cuda_plan(packed_of(1024, False, torch.bfloat16), 8, 132)  # 16 padded rows a group
    _refuse_cuda_options(dataclasses.replace(u_plan, group_rows=8), torch.bfloat16, 8)
    swapped = dataclasses.replace(u_plan, mma_swap=True, group_rows=8)  # mma_swap: <= 8 rows, h into B fragments
    _refuse_cuda_options(swapped, torch.bfloat16, 8)
    assert swapped.describe()["mma_swap"] is True
    with pytest.raises(ValueError, match=r"^mma_swap does not fit 9 batch rows \(h is the mma's 8-column operand\): "
                                         r"leave mma_swap out$"):
        _refuse_cuda_options(dataclasses.replace(swapped, group_rows=16), torch.bfloat16, 9)
    with pytest.raises(ValueError, match=r"^mma_swap does not fit a plan without h polled into mma fragments"):
        _refuse_cuda_options(dataclasses.replace(_cuda_plan(packed_of(256, False, torch.bfloat16), 8, 132,
                                                            cluster=False), mma_swap=True), torch.bfloat16, 8)
    with pytest.raises(ValueError, match=r"^mma_swap does not fit sentinels"):
        _refuse_cuda_options(dataclasses.replace(swapped, poll_sentinel=True), torch.bfloat16, 8)
    p_bf16_plain = _cuda_plan(packed_of(512, False, torch.bfloat16), 1, 132, ffma_cols=2)  # P fp32's plan, in bf16
    _refuse_cuda_options(dataclasses.replace(p_bf16_plain, wide_h=True), torch.bfloat16, 1)
    assert dataclasses.replace(p_bf16_plain, wide_h=True).describe()["wide_h"] is True
    for plan, dtype, why in ((_cuda_plan(packed_of(512, False), 1, 132), torch.float32,
                              r"fp32 \(its h is fp32 words already\)"),
                             (u_plan, torch.bfloat16, r"a plan that multiplies with mma.sync \(add mma=False\)"),
                             (_cuda_plan(packed_of(256, False, torch.bfloat16), 8, 132), torch.bfloat16,
                              r"a cluster plan \(h through shared memory\)")):
        with pytest.raises(ValueError, match=f"^wide_h does not fit {why}"):
            _refuse_cuda_options(dataclasses.replace(plan, wide_h=True), dtype, 8)
    with pytest.raises(ValueError, match=r"^group_rows=8 is fewer than the batch \(12\) on a plan of 16-row batch "
                                         r"groups: ask for group_rows >= 12, or leave it out$"):
        _refuse_cuda_options(dataclasses.replace(u_plan, group_rows=8), torch.bfloat16, 12)
    with pytest.raises(ValueError, match="^poll_spin does not apply to a cluster plan"):
        _refuse_cuda_options(dataclasses.replace(_cuda_plan(packed_of(256, False), 8, 132), poll_spin=2),
                             torch.float32, 8)
    p_fp32 = _cuda_plan(packed_of(512, False), 1, 132, measured=False)  # P fp32's plain plan: 4 units (16 bytes)
    with pytest.raises(ValueError, match="^poll_sentinel does not apply .* cuda_nb=8 or more"):
        _refuse_cuda_options(dataclasses.replace(p_fp32, poll_sentinel=True), torch.float32, 1)
    wider = _cuda_plan(packed_of(512, False), 1, 132, cuda_nb=8)  # 32 bytes a producer: the sentinel is half
    _refuse_cuda_options(dataclasses.replace(wider, poll_sentinel=True), torch.float32, 1)
    p_bf16 = _cuda_plan(packed_of(512, False, torch.bfloat16), 1, 132, cuda_nb=8)  # 16 bytes a producer in 16-bit
    with pytest.raises(ValueError, match="cuda_nb=16 or more"):
        _refuse_cuda_options(dataclasses.replace(p_bf16, poll_sentinel=True), torch.bfloat16, 1)
    mma_one_row = _cuda_plan(packed_of(512, False, torch.bfloat16), 1, 132, mma=True)  # 16 padded rows, 1 real
    with pytest.raises(ValueError, match="poll_sentinel does not apply"):
        _refuse_cuda_options(dataclasses.replace(mma_one_row, poll_sentinel=True), torch.bfloat16, 1)
    u = dataclasses.replace(_cuda_plan(packed_of(1024, False, torch.float16), 8, 132), poll_sentinel=True,
                            sentinel_last=True, stamps=True)  # U: 8 rows
    _refuse_cuda_options(u, torch.float16, 8)
    assert {k: u.describe()[k] for k in ("poll_sentinel", "sentinel_last", "stamps")} == dict(
        poll_sentinel=True, sentinel_last=True, stamps=True)


def test_cuda_config_compiles_the_v18_options_in_only_when_asked():
    from lstminfer.kernels.rnn.cuda_persistent import CudaConfig

    base = CudaConfig(True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, False, True, mma_regs=True, poll_frag=True)
    assert all(f"#define {name} 0\n" in base.defines() for name in ("POLL_SENTINEL", "SENTINEL_LAST", "STAMPS"))
    last = dataclasses.replace(base, sentinel_last=True, stamps=True).defines()  # sentinel_last implies the poll
    assert all(f"#define {name} 1\n" in last for name in ("POLL_SENTINEL", "SENTINEL_LAST", "STAMPS"))


def test_plan_without_a_gpu_keeps_the_triton_kernel():
    """On the CPU (the interpreter) the per-layer path is the Triton kernel, which the interpreter can run."""
    plan = plan_for(packed_of(20, False), 4, 3, path="per-layer")
    assert plan.kernel == "persistent" and not plan.cuda and plan.note == ""


# ---- CPU: NVRTC compiles every kind of variant for sm_90 ------------------------------------------------------

def _variants():
    from lstminfer.kernels.rnn.cuda_persistent import CudaConfig

    # (is_lstm, D, HP, KH, NB, TILES, BB, NT, KSL, MMA, ELEM_BITS, BF16, HAS_STATE): the shapes
    return {
        "P fp32 lstm ffma": CudaConfig(True, 1, 512, 512, 4, 128, 1, 128, 8, False, 32, False, True),
        "S fp32 gru bi ffma no state": CudaConfig(False, 2, 512, 512, 8, 64, 8, 256, 8, False, 32, False, False),
        "R fp32 lstm ffma 128 k a thread": CudaConfig(True, 1, 1024, 1024, 8, 128, 1, 256, 8, False, 32, False, True),
        "U fp16 lstm mma": CudaConfig(True, 1, 1024, 1024, 8, 128, 16, 256, 2, True, 16, False, False),
        "Q bf16 gru mma": CudaConfig(False, 1, 512, 512, 16, 32, 16, 256, 1, True, 16, True, True),
        "P bf16 lstm ffma": CudaConfig(True, 1, 512, 512, 4, 128, 1, 128, 8, False, 16, True, True),
        "V fp16 lstm mma, sleep in the wait": CudaConfig(True, 1, 1024, 768, 8, 96, 16, 256, 2, True, 16, False,
                                                         True, poll_sleep=64),
        "fp32 bi 768 W in shared memory": CudaConfig(True, 2, 1024, 768, 16, 48, 8, 192, 3, False, 32, False, True,
                                                     w_shared=True),
        "U fp16 mma, W fragments in registers": CudaConfig(True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, False,
                                                           True, mma_regs=True),
        "V fp16 mma, h polled into A fragments": CudaConfig(True, 1, 1024, 768, 8, 96, 16, 256, 8, True, 16, False,
                                                            True, mma_regs=True, poll_frag=True),
        "U fp16 h polled into A fragments, a sleep before the first read": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, False, True, poll_sleep=256, mma_regs=True,
            poll_frag=True, poll_delay=500),
        "bi bf16 gru, h polled into A fragments, 2 k slices": CudaConfig(False, 2, 512, 320, 8, 40, 16, 64, 2, True,
                                                                         16, True, False, mma_regs=True,
                                                                         poll_frag=True),
        # poll_sentinel (one chunk a producer polled before the whole slice), sentinel_last and stamps on each path
        "U fp16 h polled into A fragments after the sentinels, a delay": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, False, True, mma_regs=True, poll_frag=True,
            poll_delay=150, poll_sentinel=True),
        "U fp16 A fragments, sentinel row stored last, stamps": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, False, True, mma_regs=True, poll_frag=True,
            poll_sentinel=True, sentinel_last=True, stamps=True),
        "bi bf16 gru A fragments, 2 k slices, sentinels, stamps": CudaConfig(
            False, 2, 512, 320, 8, 40, 16, 64, 2, True, 16, True, False, mma_regs=True, poll_frag=True,
            poll_sentinel=True, stamps=True),
        "Q bf16 gru W fragments in registers, sentinels": CudaConfig(False, 1, 512, 512, 16, 32, 16, 256, 8, True, 16,
                                                                     True, True, mma_regs=True, poll_sentinel=True),
        "U fp16 mma, sentinels, sentinel row last, a sleep": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 2, True, 16, False, False, poll_sleep=64, poll_sentinel=True,
            sentinel_last=True),
        "S fp32 gru bi ffma, sentinels, stamps": CudaConfig(False, 2, 512, 512, 8, 64, 8, 256, 8, False, 32, False,
                                                            False, poll_sentinel=True, stamps=True),
        "R fp32 ffma 128 k a thread, sentinels": CudaConfig(True, 1, 1024, 1024, 8, 128, 1, 256, 8, False, 32, False,
                                                            True, poll_sentinel=True),
        "Q fp32 ffma 16 rows, sentinel row last": CudaConfig(True, 1, 512, 512, 16, 32, 16, 256, 4, False, 32, False,
                                                             True, sentinel_last=True),
        "P bf16 ffma 8 units, sentinels": CudaConfig(True, 1, 512, 512, 8, 64, 1, 256, 8, False, 16, True, True,
                                                     poll_sentinel=True),
        "fp32 bi 768 W in shared memory, sentinels, stamps": CudaConfig(
            True, 2, 1024, 768, 16, 48, 8, 192, 3, False, 32, False, True, w_shared=True, poll_sentinel=True,
            stamps=True),
        # cuda_kpt (v20): hidden 128 batch 64 at 16 and 8 k a thread (4 and 8 warps), P fp32 at 32
        "h128 b64 fp32 lstm ffma 16 k a thread": CudaConfig(True, 1, 128, 128, 4, 32, 16, 128, 8, False, 32, False,
                                                            True),
        "h128 b64 fp32 gru ffma 8 k a thread, no state": CudaConfig(False, 1, 128, 128, 4, 32, 16, 256, 16, False, 32,
                                                                    False, False),
        "P fp32 ffma 32 k a thread": CudaConfig(True, 1, 512, 512, 4, 128, 1, 256, 16, False, 32, False, True),
        # ffma_cols (v21): 2 columns a thread at Q fp32 (64 k), S fp32 GRU bidirectional, 16-bit at one row
        "Q fp32 ffma 2 columns a thread": CudaConfig(True, 1, 512, 512, 16, 32, 16, 256, 8, False, 32, False, True,
                                                     ffma_cols=2),
        "S fp32 gru bi ffma 2 columns a thread, no state": CudaConfig(False, 2, 512, 512, 8, 64, 8, 128, 8, False, 32,
                                                                      False, False, ffma_cols=2),
        "P bf16 ffma 2 columns a thread": CudaConfig(True, 1, 512, 512, 8, 64, 1, 128, 8, False, 16, True, True,
                                                     ffma_cols=2),
        # poll_spin (v23): the first-read delay spun on clock64, adapted (A fragments, FFMA through shared memory)
        "T bf16 h polled into A fragments, adapted spin delay": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, True, True, mma_regs=True, poll_frag=True,
            poll_delay=500, poll_spin=2),
        "R fp32 ffma 2 columns a thread, spun delay": CudaConfig(True, 1, 1024, 1024, 8, 128, 1, 256, 16, False, 32,
                                                                 False, True, poll_delay=250, ffma_cols=2, poll_spin=1),
        # stamps 2 / 3 / 4 (v24, clock64 cycles): the third stamp when the product is done (A fragments) / past
        # barrier 2 (FFMA) / when h is stored (h through shared memory, mma)
        "T bf16 h polled into A fragments, stamps at the product's end": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, True, True, mma_regs=True, poll_frag=True,
            poll_delay=1000, stamps=2),
        "R fp32 ffma 2 columns a thread, stamps past barrier 2": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 1, 256, 16, False, 32, False, True, poll_delay=250, ffma_cols=2, stamps=3),
        "h256 b64 bf16 mma_regs, stamps in cycles at the h stores": CudaConfig(
            True, 1, 256, 256, 8, 32, 16, 256, 8, True, 16, True, True, mma_regs=True, poll_delay=250, stamps=4),
        # wide_h (v27): 16-bit FFMA plans exchanging h as fp32 words (P bf16 on P fp32's plan; GRU; sentinels)
        "P bf16 ffma 2 columns a thread, h as fp32 words": CudaConfig(
            True, 1, 512, 512, 4, 128, 1, 64, 8, False, 16, True, True, poll_delay=250, ffma_cols=2, slab_bits=32),
        "R fp16 gru ffma, h as fp32 words": CudaConfig(False, 1, 1024, 1024, 8, 128, 1, 256, 8, False, 16, False,
                                                        False, slab_bits=32),
        "S fp16 bi ffma 8 rows, sentinels stored last, h as fp32 words": CudaConfig(
            True, 2, 512, 512, 8, 64, 8, 256, 8, False, 16, False, True, sentinel_last=True, slab_bits=32),
        # mma_swap (v26): W^T as the mma's A operand and h as B at <= 8 rows (U; S's two directions; GRU in fp16)
        "U bf16 h polled into B fragments (mma_swap)": CudaConfig(
            True, 1, 1024, 1024, 8, 128, 16, 256, 8, True, 16, True, True, mma_regs=True, poll_frag=True,
            poll_delay=500, group_rows=8, mma_swap=True),
        "S bf16 bi h polled into B fragments (mma_swap)": CudaConfig(
            True, 2, 512, 512, 8, 64, 16, 256, 8, True, 16, True, True, mma_regs=True, poll_frag=True,
            poll_delay=500, group_rows=8, mma_swap=True),
        "h768 fp16 gru h polled into B fragments (mma_swap), spun delay": CudaConfig(
            False, 1, 768, 768, 8, 96, 16, 256, 8, True, 16, False, False, mma_regs=True, poll_frag=True,
            poll_delay=500, group_rows=8, mma_swap=True, poll_spin=2),
    }


def assert_compiles_without_spills(cfg):
    """NVRTC compiles the variant for sm_90a to a cubin (not PTX) and ptxas reports no spills; skips without NVRTC."""
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install 'lstminfer[dev]')")
    from lstminfer.kernels.rnn.cuda_persistent import available, compile_cubin

    ok, why = available()
    if not ok:
        pytest.skip(why)
    cubin, log = compile_cubin(cfg, "sm_90a")
    assert cubin[:4] == b"\x7fELF"
    assert "0 bytes spill stores" in log and "rnn_persistent_cuda" in log, log


@pytest.mark.parametrize("name", list(_variants()))
def test_nvrtc_compiles_each_variant_for_sm90_without_spills(name):
    assert_compiles_without_spills(_variants()[name])


# ---- clusters (v19): the plan and NVRTC on the CPU -------------------------------------------------------------

def test_cluster_plan_holds_a_direction_and_batch_group_in_one_cluster():
    """cluster=True: the largest cluster (16, 8, 4 blocks) whose blocks hold the W_hh^T slices; a block's units are
    whole 16-byte groups of h (8 units of 16-bit, 4 of fp32); clusters of (batch group, direction)."""
    q = _cuda_plan(packed_of(512, False, torch.bfloat16), 64, 132, cluster=True)  # Q: 4 clusters of 16 rows
    assert (q.kernel, q.cluster, q.r_tiles, q.block_n, q.block_b, q.programs, q.mma, q.group_rows) == (
        "persistent-cuda", 16, 16, 32, 16, 64, True, 0)
    assert not q.mma_regs and not q.poll_frag and q.poll_delay == 0  # 16 tiles x 4 chunks: past the registers
    # so W^T in shared memory, a warp per 4 column tiles and a k slice: 16 warps, each A fragment read 4 times
    assert (q.tiles_per_warp, q.k_split, q.num_warps) == (4, 4, 16)
    assert {k: q.describe()[k] for k in ("cluster", "group_rows", "tiles_per_warp")} == {
        "cluster": 16, "group_rows": 0, "tiles_per_warp": 4}
    one = _cuda_plan(packed_of(512, False, torch.bfloat16), 64, 132, cluster=True, tiles_per_warp=1)  # asked: v16's
    assert (one.tiles_per_warp, one.k_split, one.num_warps) == (0, 1, 16)
    eight = _cuda_plan(packed_of(512, False, torch.bfloat16), 64, 132, cluster=16, cluster_rows=8)  # 8 of 8 rows
    assert (eight.programs, eight.block_b, eight.group_rows) == (128, 16, 8)
    s = _cuda_plan(packed_of(512, True, torch.bfloat16), 8, 132, cluster=True)  # S bf16: a cluster a direction
    assert (s.cluster, s.programs) == (16, 32)
    # fp32 hidden 512 (256 KiB a block): FFMA with the slice split between registers and shared memory; the rows a
    # cluster such that every cluster runs at once (CLUSTER_ACTIVE: 7 of 16 blocks)
    p = _cuda_plan(packed_of(512, False), 1, 132, cluster=True)
    assert (p.mma, p.w_regs, p.k_split, p.num_warps, p.programs) == (False, 160, 2, 8, 16)
    assert _cuda_plan(packed_of(512, False, torch.bfloat16), 1, 132, cluster=True).w_regs == 160  # 16-bit, one row
    q32 = _cuda_plan(packed_of(512, False), 64, 132, cluster=True)  # 7 clusters of 10 rows (the last 4)
    assert (q32.block_b, q32.programs, q32.w_regs) == (10, 112, 132)
    s32 = _cuda_plan(packed_of(512, True), 8, 132, cluster=True)  # 3 clusters of 3 rows a direction
    assert (s32.block_b, s32.programs, s32.w_regs) == (3, 96, 156)
    m = _cuda_plan(packed_of(256, False), 1, 132, cluster=True)  # M fp32: FFMA, W^T in registers
    assert (m.mma, m.w_shared, m.w_regs, m.cluster, m.block_n, m.block_b, m.programs) == (False, False, 0, 16, 16,
                                                                                          1, 16)
    regs = _cuda_plan(packed_of(256, False, torch.float16), 8, 132, cluster=True)  # fragments fit: mma_regs
    assert (regs.mma_regs, regs.cluster, regs.block_n) == (True, 16, 16)
    c8 = _cuda_plan(packed_of(256, True, torch.float16), 8, 132, cluster=8)
    assert (c8.cluster, c8.r_tiles, c8.block_n, c8.programs) == (8, 8, 32, 16)
    c4 = _cuda_plan(packed_of(256, False, torch.float16), 8, 132, cluster=4, mma_regs=False)
    assert (c4.cluster, c4.block_n, c4.num_warps, c4.k_split, c4.tiles_per_warp) == (4, 64, 16, 2, 4)
    f384 = _cuda_plan(packed_of(384, False), 16, 132, cluster=True)  # fp32 hidden 384: 24 units, 128 k a thread
    assert (f384.block_n, f384.k_split, f384.num_warps, f384.w_shared) == (24, 3, 9, False)
    assert _cuda_plan(packed_of(384, False), 16, 132, cluster=True, w_shared=True).w_shared
    odd = _cuda_plan(packed_of(300, True, torch.bfloat16), 5, 132, cluster=True)  # 300 units: 16 blocks of 24
    assert (odd.block_n * odd.r_tiles, odd.programs) == (384, 32)
    rows64 = _cuda_plan(packed_of(256, False), 64, 132, cluster=True, cluster_rows=8)  # fp32: 8 real rows a block
    assert (rows64.block_b, rows64.programs, rows64.group_rows) == (8, 128, 0)
    assert _cuda_plan(packed_of(256, False), 64, 132, cluster=True).block_b == 10  # 7 clusters at once


def test_cluster_plan_refuses_in_one_line():
    for packed, batch, size in ((packed_of(1024, False), 8, "1024 KiB"), (packed_of(1024, False, torch.bfloat16), 8,
                                                                            "512 KiB")):
        with pytest.raises(ValueError, match=f"^cluster=True does not fit hidden {packed.hidden_size} in "
                                             f".*W_hh\\^T slice \\({size} at 16 blocks\\).*leave cluster out$"):
            _cuda_plan(packed, batch, 132, cluster=True)
    with pytest.raises(ValueError, match="^cluster=8 does not fit hidden 512 in bfloat16"):
        _cuda_plan(packed_of(512, False, torch.bfloat16), 8, 132, cluster=8)  # 256 KiB a block
    with pytest.raises(ValueError, match="^cluster must be True or a cluster size from 2 to 16 blocks, got 32"):
        _cuda_plan(packed_of(256, False), 8, 132, cluster=32)
    for option in ("cluster_rows", "tiles_per_warp"):
        with pytest.raises(ValueError, match=f"^{option} is an option of cluster plans"):
            _cuda_plan(packed_of(256, False), 8, 132, **{option: 4})
    with pytest.raises(ValueError, match="^cluster_rows=32 does not fit a block"):
        _cuda_plan(packed_of(256, False), 64, 132, cluster=True, cluster_rows=32)
    with pytest.raises(ValueError, match="^cluster does not combine with poll_frag"):
        _cuda_plan(packed_of(256, False, torch.float16), 8, 132, cluster=True, poll_frag=True)
    # on the CPU (no CUDA device) the CUDA kernel cannot run at all
    with pytest.raises(ValueError, match=r"^cluster is an option of the CUDA persistent kernel, which cannot run "
                                         r"this call \(no CUDA device\)"):
        plan_for(packed_of(256, False), 10, 8, cluster=True)


def test_plan_for_takes_cluster_as_an_option(monkeypatch):
    """plan_for as on an H200 (on the CPU): cluster=True / cluster=C plans the per-layer CUDA kernel with clusters,
    also below PERSISTENT_MIN_HIDDEN; the poll options and another kernel are refused in one line."""
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed (pip install 'lstminfer[dev]')")
    from lstminfer.kernels.rnn.cuda_persistent import available

    if not available()[0]:
        pytest.skip(available()[1])
    as_cuda_plan(monkeypatch)
    packed = pack_rnn(make("lstm", 256, 512, 1, False, False), "cpu", torch.bfloat16)
    plan = plan_for(packed, 100, 64, cluster=True)
    assert (plan.kernel, plan.path, plan.cluster, plan.programs) == ("persistent-cuda", "per-layer", 16, 64)
    assert plan_for(packed, 100, 64).cluster == 0  # not the default here: clusters lost at hidden 512 (v19)
    small = plan_for(pack_rnn(make("gru", 16, 128, 1, False, False), "cpu", torch.float32), 100, 8, cluster=8)
    assert (small.kernel, small.cluster, small.block_n) == ("persistent-cuda", 8, 16)
    h128 = pack_rnn(make("lstm", 16, 128, 1, False, False), "cpu", torch.float32)  # cuda_kpt reaches the plan too
    kpt = plan_for(h128, 100, 64, cuda_kpt=16)  # asked: no cluster (the default there is clusters of 8, v20)
    assert (kpt.num_warps, kpt.cluster, plan_for(h128, 100, 64).cluster) == (4, 0, 8)
    for option in ("stamps", "poll_sentinel"):
        with pytest.raises(ValueError, match=f"^{option} does not apply to a cluster plan"):
            plan_for(packed, 100, 64, cluster=True, **{option: True})
    with pytest.raises(ValueError, match="^cluster is an option of the CUDA persistent kernel, and this call's plan "
                                         "runs the stack kernel"):
        plan_for(packed, 100, 64, path="single-launch", cluster=16)
    with pytest.raises(ValueError, match="^cluster=True does not fit hidden 1024 in float32"):
        plan_for(pack_rnn(make("lstm", 256, 1024, 1, False, False), "cpu", torch.float32), 100, 8, cluster=True)


def _cluster_config(kind, hidden, bi, dtype, batch, has_state, **options):
    """The CudaConfig launch.py builds for the cluster plan of these sizes (so the plan and the kernel agree)."""
    from lstminfer.kernels.rnn.cuda_persistent import PLAN_OPTIONS, CudaConfig

    packed = packed_of(hidden, bi, dtype, kind)
    plan = _cuda_plan(packed, batch, 132, **options)
    assert plan.cluster
    return CudaConfig(kind == "lstm", packed.num_directions, packed.hidden_padded, plan.r_tiles * plan.block_n,
                      plan.block_n, plan.r_tiles, plan.block_b, 32 * plan.num_warps, plan.k_split, plan.mma,
                      8 * dtype.itemsize, dtype == torch.bfloat16, has_state,
                      **{name: getattr(plan, name) for name in PLAN_OPTIONS})


CLUSTER_VARIANTS = {  # (kind, hidden, bi, dtype, batch, h0/c0, options)
    "Q bf16 mma 512, 16 blocks": ("lstm", 512, False, torch.bfloat16, 64, True, dict(cluster=16)),
    "fp16 gru bi 512, 16 blocks of 8 rows, no state": ("gru", 512, True, torch.float16, 16, False,
                                                      dict(cluster=16, cluster_rows=8)),
    "bf16 256 W fragments in registers, 16 blocks": ("lstm", 256, False, torch.bfloat16, 8, True, dict(cluster=16)),
    "bf16 gru bi 256, 8 blocks": ("gru", 256, True, torch.bfloat16, 8, False, dict(cluster=8)),
    "fp16 256 W^T in shared memory, 8 blocks": ("lstm", 256, False, torch.float16, 8, True,
                                                dict(cluster=8, mma_regs=False)),
    "fp32 256 FFMA one row": ("lstm", 256, False, torch.float32, 1, True, dict(cluster=True)),
    "fp32 gru bi 256 FFMA 16 rows": ("gru", 256, True, torch.float32, 16, False, dict(cluster=True)),
    "fp32 384 FFMA 128 k a thread": ("lstm", 384, False, torch.float32, 8, True, dict(cluster=True)),
    "fp32 384 W^T in shared memory": ("lstm", 384, False, torch.float32, 16, True, dict(cluster=True, w_shared=True)),
    "Q bf16 one tile a warp": ("lstm", 512, False, torch.bfloat16, 64, True, dict(cluster=True, tiles_per_warp=1)),
    "P fp32 split slice, one row": ("lstm", 512, False, torch.float32, 1, True, dict(cluster=True)),
    "Q fp32 split slice, 10 rows": ("lstm", 512, False, torch.float32, 64, True, dict(cluster=True)),
    "Q fp32 split slice, 16 rows": ("lstm", 512, False, torch.float32, 64, True, dict(cluster=True, cluster_rows=16)),
    "S fp32 gru bi split slice, 3 rows, no state": ("gru", 512, True, torch.float32, 8, False, dict(cluster=True)),
    "P bf16 split slice": ("lstm", 512, False, torch.bfloat16, 1, True, dict(cluster=True)),
    "fp32 128 FFMA 5 rows, 8 blocks": ("lstm", 128, False, torch.float32, 64, True, dict(cluster=8)),
    "fp32 gru 128 FFMA 8 blocks, 32 k a thread": ("gru", 128, False, torch.float32, 64, False,
                                                  dict(cluster=8, cuda_kpt=32)),
    "fp16 256 FFMA one row a cluster, 8 blocks": ("lstm", 256, False, torch.float16, 8, True,
                                                  dict(cluster=8, mma=False)),
}


@pytest.mark.parametrize("name", list(CLUSTER_VARIANTS))
def test_nvrtc_compiles_each_cluster_variant_for_sm90_without_spills(name):
    *sizes, options = CLUSTER_VARIANTS[name]
    cfg = _cluster_config(*sizes, **options)
    assert "#define CLUSTER " + str(cfg.cluster) + "\n" in cfg.defines()
    assert_compiles_without_spills(cfg)


# ---- GPU: the kernel against float64 ---------------------------------------------------------------------------

# the Triton persistent kernel's cases (test_fused.py) and two more:
# (kind, input, hidden, layers, bi, batch_first, seq, batch, state)
GPU_CASES = GPU_PERSISTENT_CASES + [
    ("gru", 64, 1024, 1, False, False, 8, 1, True),
    ("lstm", 48, 512, 1, False, False, 6, 37, False),
]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sentinel_options(batch, dtype):
    """poll_sentinel, with enough hidden units a block at one batch row for it to apply (plan_for refuses it where
    a producer writes one 16-byte chunk of h), and without a cluster (where CUDA_MEASURED_OPTIONS would take one, h
    goes through distributed shared memory: no poll for a sentinel to shorten, and plan_for refuses the pair)."""
    return dict(poll_sentinel=True, cuda_nb=32 // dtype.itemsize if batch == 1 else None, cluster=False)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["default", "sentinel"])
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-4), ("fp16", 1e-2), ("bf16", 8e-2)])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_matches_float64(case, precision, atol, variant):
    """The default plan of each case, and the same with poll_sentinel (the wait polls one chunk a producer block
    first: poll_frag at hidden >= 768 in 16-bit, h through shared memory elsewhere)."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, **(sentinel_options(batch, dtype) if variant == "sentinel" else {}))
    if variant == "sentinel" and batch == 1 and hidden > 512 and precision != "fp32":
        # 16 units a block at hidden 1024 and one row fit no CUDA plan (FFMA registers): refused, not ignored
        with pytest.raises(ValueError, match="^poll_sentinel is an option of the CUDA persistent kernel"):
            plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch, **overrides)
        return
    plan = plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.poll_sentinel == (variant == "sentinel"), plan.note
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", **overrides)
    assert all(g.dtype == dtype for g in got)
    assert_close(got, reference(module, x, hx), atol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mma", [False, True])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[7] <= 8], ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_both_products_on_16_bit_match_float64(case, precision, mma):
    """16-bit weights and h on either product: FFMA on the real rows (h widened in shared memory; the default
    at one row) or mma.sync over 16 padded rows."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, path="per-layer", mma=mma)
    assert plan.kernel == "persistent-cuda" and plan.mma == mma
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", path="per-layer", mma=mma)
    assert_close(got, reference(module, x, hx), 1e-2 if precision == "fp16" else 8e-2)


W_SHARED_CASES = [
    ("lstm", 64, 768, 1, True, False, 8, 8, True),
    ("gru", 32, 300, 2, False, True, 6, 5, False),
    ("lstm", 16, 512, 1, False, False, 10, 1, True),
]


FFMA_COLS_CASES = [  # (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precision, ffma_cols)
    ("lstm", 32, 512, 1, False, False, 12, 64, True, "fp32", 2),
    ("lstm", 32, 512, 1, False, False, 12, 37, True, "fp32", 4),
    ("gru", 24, 512, 2, True, True, 10, 8, False, "fp32", 2),
    ("lstm", 16, 300, 2, True, False, 9, 5, True, "fp32", 4),
    ("gru", 16, 1024, 1, False, True, 8, 1, True, "fp32", 2),
    ("lstm", 16, 512, 1, False, False, 10, 1, True, "bf16", 2),
    ("lstm", 16, 256, 1, True, False, 10, 3, False, "fp16", 4),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", FFMA_COLS_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_ffma_cols_matches_float64(case):
    """ffma_cols (v21): 2 or 4 columns a thread of the FFMA product against float64: fp32 at 1-64 rows (Q, S's shapes,
    hidden 300 and 1024), LSTM and GRU, bidirectional, batch first, and 16-bit on the FFMA product."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state, precision, cols = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, ffma_cols=cols, mma=False)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.ffma_cols == cols and not plan.mma, plan
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), {"fp32": 1e-4, "fp16": 1e-2}.get(precision, 8e-2))


KPT_CASES = [  # (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, cuda_kpt)
    ("lstm", 32, 128, 1, False, False, 12, 64, True, 16),
    ("gru", 32, 128, 2, True, True, 10, 37, False, 8),
    ("lstm", 16, 512, 1, False, False, 10, 1, True, 32),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", KPT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_cuda_kpt_matches_float64(case):
    """cuda_kpt (v20, asked only): the FFMA product with fewer k a thread (more threads, more k slices summed in
    shared memory) against float64: hidden 128 at batch 37-64 (the grid's fp32 loss) and P's one row."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state, kpt = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, cuda_kpt=kpt)
    plan = plan_for(pack_rnn(module, "cuda", torch.float32), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.k_split * kpt == plan.r_tiles * plan.block_n, plan
    got = run_fused(module, x, hx, dtype=torch.float32, device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), 1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("case", W_SHARED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_w_in_shared_memory_matches_float64(case, precision):
    """The FFMA product with W_hh^T in shared memory (w_shared=True; the default where the registers cannot hold
    the slice, such as bidirectional hidden 768 in fp32), asked for here on sizes of every kind."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, w_shared=True, mma=False)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.w_shared, plan.note
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), 1e-4 if precision == "fp32" else 8e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("sentinel_last", [False, True], ids=["", "sentinel_last"])
@pytest.mark.parametrize("poll_frag", [False, True])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[7] > 1], ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_mma_fragments_in_registers_match_float64(case, precision, poll_frag, sentinel_last):
    """mma with a warp per k slice and W_hh^T fragments in registers (mma_regs=True), and with each warp polling
    its k slice of h straight into its A fragments (poll_frag=True: one block barrier a step, k permuted inside
    the slice); each also with the sentinel poll and the producers storing the sentinel row last (sentinel_last)."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, mma_regs=True, poll_frag=poll_frag, sentinel_last=sentinel_last)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.mma_regs and plan.poll_frag == poll_frag, plan.note
    assert plan.poll_sentinel == plan.sentinel_last == sentinel_last
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), 1e-2 if precision == "fp16" else 8e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("case", [c for c in GPU_CASES if c[2] in (512, 768) and c[7] > 1],
                         ids=lambda c: "-".join(map(str, c)))
def test_gpu_cuda_persistent_fragments_polled_by_wider_blocks_match_float64(case, precision):
    """poll_frag with 16 hidden units a block (cuda_nb=16: half the blocks, each with twice the columns)."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, poll_frag=True, cuda_nb=16)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.poll_frag and plan.block_n >= 16, plan.note
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), 1e-2 if precision == "fp16" else 8e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,options", [("fp16", dict(poll_frag=True, poll_delay=500, poll_sleep=256)),
                                               ("fp32", dict(poll_delay=500, poll_sleep=256)),
                                               ("fp16", dict(poll_frag=True, poll_delay=150, poll_sentinel=True)),
                                               ("fp32", dict(poll_delay=300, poll_sleep=256, poll_sentinel=True))],
                         ids=["fp16", "fp32", "fp16-sentinel", "fp32-sentinel"])
def test_gpu_cuda_persistent_sleeps_in_the_wait_match_float64(precision, options):
    """A sleep before the first read of a wait (poll_delay) and between two reads (poll_sleep), also with the
    sentinel poll: the same numbers."""
    module = make("lstm", 128, 1024, 1, False, False)
    x, hx = random_inputs(module, 12, 8, True)
    overrides = dict(path="per-layer", cuda=True, **options)
    plan = plan_for(pack_rnn(module, "cuda", DTYPES[precision]), 12, 8, **overrides)
    assert plan.kernel == "persistent-cuda" and all(getattr(plan, k) == v for k, v in options.items()), plan.note
    got = run_fused(module, x, hx, dtype=DTYPES[precision], device="cuda", **overrides)
    assert_close(got, reference(module, x, hx), 1e-2 if precision == "fp16" else 1e-4)



def replays_equal_eager(packed, args, plan):
    """The call eager, then captured in a CUDA graph on a side stream and replayed 3 times: every replay equals the
    eager result bit for bit, NaN where eager has NaN. Returns the graph's static outputs."""
    eager = rnn_forward(packed, *args, plan=plan)
    ws: dict = {}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        rnn_forward(packed, *args, plan=plan, workspace=ws)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        static = rnn_forward(packed, *args, plan=plan, workspace=ws, check=False)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for g, e in zip(static, eager):
            assert torch.equal(torch.isnan(g), torch.isnan(e))
            assert torch.equal(torch.nan_to_num(g), torch.nan_to_num(e))
    return static


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,kernel", [("fp32", "persistent-cuda"), ("bf16", "persistent-cuda"),
                                              ("fp32", "persistent")])
def test_gpu_persistent_graph_replays_equal_eager_and_nan_propagates(precision, kernel):
    """Both persistent kernels (CUDA C++ by default; Triton's with cuda=False) under graph replay: the same
    numbers as eager, and a NaN in one batch row stays in that row, as in PyTorch."""
    module = make("lstm", 80, 512, 2, True, False)
    x, hx = random_inputs(module, 16, 4, True)
    x[3, 1, 5] = float("nan")  # batch row 1 only
    dtype = DTYPES[precision]
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, 16, 4, **({} if kernel == "persistent-cuda" else {"cuda": False}))
    assert plan.kernel == kernel, plan.note
    static = replays_equal_eager(packed, [t.cuda().to(dtype) for t in (x, *hx)], plan)
    want = reference(module, x, hx)
    for g, w in zip(static, want):
        assert torch.equal(torch.isnan(g.cpu()), torch.isnan(w))
    finite = [torch.nan_to_num(g.cpu().double(), nan=0.0) for g in static]
    assert_close(finite, [torch.nan_to_num(w, nan=0.0) for w in want], 1e-4 if precision == "fp32" else 8e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,options", [("fp32", {}), ("fp16", {"poll_frag": True}),
                                               ("fp32", {"poll_sentinel": True}),
                                               ("fp16", {"poll_frag": True, "poll_sentinel": True})],
                         ids=["fp32", "fp16-poll_frag", "fp32-sentinel", "fp16-poll_frag-sentinel"])
def test_gpu_cuda_persistent_stall_raises(monkeypatch, precision, options):
    """One block short of the plan (its units' h never written): the others give up their waits after the spin
    limit and the call raises KernelStalled instead of returning numbers (poll_frag: the block leaves after the
    product's barrier, not the poll's; poll_sentinel: the wait gives up on the missing block's sentinel)."""
    from lstminfer.kernels.rnn import launch as launch_module

    monkeypatch.setattr(launch_module, "SPIN_LIMIT", 20000)
    module = make("lstm", 16, 512, 1, False, False)
    x, hx = random_inputs(module, 5, 2, True)
    dtype = DTYPES[precision]
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, 5, 2, **options)
    assert plan.kernel == "persistent-cuda" and all(getattr(plan, k) == v for k, v in options.items()), plan.note
    short = dataclasses.replace(plan, programs=plan.programs - 1)
    args = [t.cuda().to(dtype) for t in (x, *hx)]
    with pytest.raises(KernelStalled, match="resident"):
        rnn_forward(packed, *args, plan=short)
    assert_close([t.cpu() for t in rnn_forward(packed, *args, plan=plan)], reference(module, x, hx),
                 1e-4 if precision == "fp32" else 1e-2)  # the error word was cleared: the next call is judged alone


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision,case,options", [
    ("fp16", ("lstm", 128, 1024, 1, False, False, 20, 8, True), dict(poll_sentinel=True)),  # poll_frag
    ("fp32", ("gru", 80, 512, 2, True, False, 12, 5, False), dict(sentinel_last=True)),  # FFMA, h in shared memory
    ("bf16", ("lstm", 64, 512, 1, False, True, 16, 37, True), {}),  # mma_regs, three row groups
    ("fp16", ("lstm", 128, 1024, 1, False, False, 20, 8, True), dict(stamps=2)),  # (c): the product done
    ("fp32", ("gru", 80, 1024, 1, False, False, 12, 1, True), dict(stamps=3)),  # (c): past barrier 2, FFMA
    ("bf16", ("lstm", 64, 512, 1, False, True, 16, 37, True), dict(stamps=4)),  # (c): h stored, in cycles
], ids=["fp16-poll_frag", "fp32-bi-gru", "bf16-37-rows", "fp16-product-done", "fp32-past-barrier-2",
        "bf16-stored-cycles"])
def test_gpu_cuda_persistent_stamps_are_ordered_and_change_nothing(precision, case, options):
    """stamps=True: every block's globaltimer stamps of every step are written and ordered (a: the wait starts, b:
    the block's h is complete, c: its h stores are issued; a_s <= b_s <= c_s <= b_s+1, b_s <= a_s+1, each
    non-decreasing), and the numbers equal the same plan's without stamps bit for bit; so in clock64 cycles (exact
    inside a block) with (c) taken when the product is done (stamps=2), past the barrier after it (3) or when h is
    stored (4)."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, seq_len, batch, path="per-layer", cuda=True, **{"stamps": True, **options})
    assert plan.kernel == "persistent-cuda" and plan.stamps, plan.note
    args = [t.to("cuda", dtype) for t in ([*hx] if isinstance(hx, tuple) else [hx] if hx is not None else [])]
    x_dev = x.to("cuda", dtype)
    ws: dict = {}
    stamped = rnn_forward(packed, x_dev, *args, plan=plan, workspace=ws)
    plain = rnn_forward(packed, x_dev, *args, plan=dataclasses.replace(plan, stamps=False))
    for s, p in zip(stamped, plain):
        assert torch.equal(s, p)
    st = ws["stamps"].cpu()
    assert tuple(st.shape) == (layers, plan.programs, seq_len, 3)
    a, b, c = st.unbind(-1)
    assert bool((a > 0).all())
    assert bool((a <= b).all() and (b <= c).all())
    assert bool((c[..., :-1] <= b[..., 1:]).all() and (b[..., :-1] <= a[..., 1:]).all())
    for stamp in (a, b, c):
        assert bool((stamp[..., 1:] >= stamp[..., :-1]).all())
    assert_close([t.cpu() for t in stamped], reference(module, x, hx), 1e-4 if precision == "fp32" else 8e-2)


def test_the_plan_options_reach_the_kernel_config_by_name():
    # launch.py builds CudaConfig's options from the Plan fields of the same names: a renamed field fails here
    from lstminfer.kernels.rnn.cuda_persistent import PLAN_OPTIONS, CudaConfig
    from lstminfer.kernels.rnn.plan import Plan

    config, plan = ({f.name for f in dataclasses.fields(c)} for c in (CudaConfig, Plan))
    assert set(PLAN_OPTIONS) <= config & plan


# ---- GPU: clusters (v19) -----------------------------------------------------------------------------------------

# (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precisions, plan options)
CLUSTER_CASES = [
    ("lstm", 256, 512, 1, False, False, 30, 1, True, ("fp32", "bf16"), dict(cluster=True)),  # P: the split slice
    ("lstm", 256, 512, 1, False, False, 30, 1, True, ("fp16",), dict(cluster=True, mma=True)),  # mma at one row
    ("lstm", 80, 512, 2, True, True, 20, 8, True, ("fp32", "bf16"), dict(cluster=True)),  # S
    ("lstm", 64, 512, 1, False, False, 12, 64, True, ("fp32", "fp16", "bf16"), dict(cluster=True)),  # Q
    ("gru", 64, 512, 1, False, True, 12, 16, True, ("bf16",), dict(cluster=True, tiles_per_warp=1)),
    ("gru", 64, 512, 1, False, False, 12, 37, False, ("bf16",), dict(cluster=16, cluster_rows=8)),  # 5 of 8 rows
    ("gru", 64, 300, 2, True, False, 10, 5, False, ("fp32", "fp16", "bf16"), dict(cluster=True)),  # 24 units
    ("lstm", 32, 256, 1, False, False, 10, 64, True, ("fp32", "bf16"), dict(cluster=True)),
    ("lstm", 32, 256, 2, True, True, 10, 16, False, ("fp32", "fp16"), dict(cluster=8)),
    ("gru", 48, 256, 1, False, True, 9, 8, True, ("bf16",), dict(cluster=4, mma_regs=False)),
    ("lstm", 48, 256, 1, False, False, 40, 1, True, ("fp32", "bf16"), dict(cluster=True)),  # M, FFMA on the row
    ("lstm", 64, 384, 1, False, False, 12, 16, True, ("fp32",), dict(cluster=True)),
    ("gru", 64, 384, 1, True, False, 12, 8, False, ("fp32",), dict(cluster=True, w_shared=True)),
    # v20's sweep: hidden 128 batch 64 (5 rows a cluster of 8), 16-bit FFMA clusters of one row
    ("lstm", 32, 128, 1, False, False, 12, 64, True, ("fp32",), dict(cluster=8)),
    ("gru", 32, 128, 2, False, True, 10, 37, False, ("fp32",), dict(cluster=8, cuda_kpt=32)),
    ("lstm", 32, 256, 1, False, False, 10, 8, True, ("fp16", "bf16"), dict(cluster=8, mma=False)),
]
CLUSTER_GPU = [(c[:9], p, c[10]) for c in CLUSTER_CASES for p in c[9]]
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 8e-2}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case,precision,options", CLUSTER_GPU,
                         ids=[f"{'-'.join(map(str, c))}-{p}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for c, p, o in CLUSTER_GPU])
def test_gpu_cuda_persistent_cluster_matches_float64(case, precision, options):
    """Cluster plans (h through distributed shared memory, the cluster barrier instead of polls) against float64:
    LSTM and GRU, 1-2 layers, bidirectional, batch_first, with and without h0/c0, hidden 256/300/384/512, batch
    1-64, each cluster size and row choice, FFMA and both mma products."""
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = case
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    overrides = dict(path="per-layer", cuda=True, **options)
    plan = plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch, **overrides)
    assert plan.kernel == "persistent-cuda" and plan.cluster, plan.note
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", **overrides)
    assert all(g.dtype == dtype for g in got)
    assert_close(got, reference(module, x, hx), TOLERANCE[precision])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_cuda_persistent_cluster_graph_replays_equal_eager(precision):
    """A cluster launch (cuLaunchKernelEx with a cluster dimension) captured in a CUDA graph: replays equal eager
    bit for bit, a NaN stays in its batch row."""
    hidden = 256 if precision == "fp32" else 512
    module = make("lstm", 80, hidden, 2, True, False)
    x, hx = random_inputs(module, 16, 4, True)
    x[3, 1, 5] = float("nan")
    dtype = DTYPES[precision]
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, 16, 4, cluster=True)
    assert plan.kernel == "persistent-cuda" and plan.cluster == 16, plan.note
    static = replays_equal_eager(packed, [t.cuda().to(dtype) for t in (x, *hx)], plan)
    want = reference(module, x, hx)
    finite = [torch.nan_to_num(g.cpu().double(), nan=0.0) for g in static]
    assert_close(finite, [torch.nan_to_num(w, nan=0.0) for w in want], TOLERANCE[precision] if precision == "fp32"
                 else 8e-2)


@pytest.mark.gpu
@gpu
def test_gpu_cluster_occupancy_meets_the_plans_assumption():
    """The plan sizes FFMA clusters so that all of them run at once, assuming CLUSTER_ACTIVE[C] clusters of C blocks
    fit the device (a cluster lives in one GPC); cuOccupancyMaxActiveClusters of the Q fp32 (16 blocks, 1 a
    multiprocessor), 8- and 4-block variants must reach it, else the plan's rows are wrong (the message gives every
    count; the H200 of 2026-12-03 ran 15 clusters of 8, where v19 had assumed 16)."""
    from lstminfer.kernels.rnn.cuda_persistent import loaded
    from lstminfer.kernels.rnn.plan import CLUSTER_ACTIVE

    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("CLUSTER_ACTIVE is the 132-multiprocessor H100 / H200's")
    active = {}
    for sizes, options in ((("lstm", 512, False, torch.float32, 64, True), dict(cluster=16)),
                           (("lstm", 256, False, torch.float32, 64, True), dict(cluster=8)),
                           (("lstm", 256, False, torch.float32, 64, True), dict(cluster=4))):
        cfg = _cluster_config(*sizes, **options)
        active[cfg.cluster] = loaded(cfg, 0).max_clusters
    short = {size: n for size, n in active.items() if n < CLUSTER_ACTIVE[size]}
    assert not short, f"clusters that run at once (size: count) {active}, CLUSTER_ACTIVE assumes {CLUSTER_ACTIVE}"


# v20's measured defaults (CUDA_MEASURED_OPTIONS): the default plan of each of its sizes, with no option asked
# (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precision, the plan's (cluster, block_n, mma))
MEASURED_DEFAULT_CASES = [
    ("lstm", 32, 128, 2, False, False, 10, 64, True, "fp32", (8, 16, False)),
    ("gru", 48, 256, 1, False, True, 12, 1, False, "fp32", (8, 32, False)),
    ("lstm", 32, 256, 1, False, False, 8, 37, True, "fp32", (8, 32, False)),
    ("lstm", 32, 256, 2, True, False, 9, 5, True, "fp32", (8, 32, False)),
    ("lstm", 32, 256, 1, False, False, 10, 8, True, "fp16", (8, 32, False)),
    ("gru", 32, 256, 2, False, True, 10, 3, True, "bf16", (8, 32, False)),
    ("lstm", 256, 512, 1, False, False, 20, 1, True, "fp32", (0, 4, False)),  # P: 2 columns a thread (ffma_cols)
    ("lstm", 256, 512, 1, False, False, 20, 1, True, "bf16", (0, 8, False)),  # P bf16 (16-bit FFMA at one row)
    ("gru", 32, 128, 2, False, False, 10, 64, True, "bf16", (0, 8, True)),
    ("lstm", 32, 128, 1, False, True, 10, 40, False, "fp16", (0, 8, True)),
    ("lstm", 32, 256, 1, True, False, 10, 8, True, "bf16", (0, 8, True)),
    ("lstm", 64, 384, 2, False, False, 10, 1, True, "bf16", (0, 8, False)),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", MEASURED_DEFAULT_CASES, ids=lambda c: "-".join(map(str, c[:10])))
def test_gpu_measured_defaults_match_float64(case):
    """The default plans CUDA_MEASURED_OPTIONS makes (clusters of 8, 8 units a block at P) against float64."""
    *sizes, precision, want = case
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = sizes
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the measured defaults are Hopper's (sm_90)")
    plan = plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch)
    assert (plan.kernel, (plan.cluster, plan.block_n, plan.mma)) == ("persistent-cuda", want), plan.note
    got = run_fused(module, x, hx, dtype=dtype, device="cuda")
    assert_close(got, reference(module, x, hx), TOLERANCE[precision])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_measured_default_cluster_one_step_writes_the_callers_state_and_replays(precision):
    """A stream's one-step call (seq 1) on the measured default cluster plan (hidden 256 batch 8), hn/cn written into
    the caller's buffers (hn_out / cn_out, as fused_layers' stream path does), chained over 4 calls equal to one
    pass of 4 steps in float64, and a CUDA-graph replay of the same call equal to eager bit for bit."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the measured defaults are Hopper's (sm_90)")
    dtype = DTYPES[precision]
    module = make("lstm", 32, 256, 1, False, False)
    x, hx = random_inputs(module, 4, 8, True)
    packed = pack_rnn(module, "cuda", dtype)
    plan = plan_for(packed, 1, 8)
    assert plan.cluster == 8 and not plan.mma, plan.note
    h, c = (t.to("cuda", dtype).contiguous() for t in hx)
    hn, cn = torch.empty_like(h), torch.empty_like(c)
    outs = []
    for t in range(4):
        out, *_ = rnn_forward(packed, x[t:t + 1].to("cuda", dtype), h, c, plan=plan, hn_out=hn, cn_out=cn)
        outs.append(out.cpu())
        h, hn, c, cn = hn, h, cn, c  # the written state is the next call's input (two sets, as a stream swaps)
    want = reference(module, x, hx)
    assert_close([torch.cat(outs), h.cpu(), c.cpu()], want, TOLERANCE[precision])
    args = [x[:1].to("cuda", dtype), h, c]
    eager = [t.clone() for t in rnn_forward(packed, *args, plan=plan, hn_out=hn, cn_out=cn)]
    ws: dict = {}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        rnn_forward(packed, *args, plan=plan, workspace=ws, hn_out=hn, cn_out=cn)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        static = rnn_forward(packed, *args, plan=plan, workspace=ws, check=False, hn_out=hn, cn_out=cn)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for g, e in zip(static, eager):
            assert torch.equal(g, e)


# poll_spin (v23) and session 10's measured first-read delays: (kind, input, hidden, layers, bi, batch_first, seq,
# batch, h0/c0, precision, overrides, the plan's (poll_delay, poll_spin))
POLL_SPIN_CASES = [
    ("lstm", 64, 1024, 2, False, False, 24, 16, True, "bf16", {}, (1000, 0)),  # T's 1000 ns (poll_frag)
    ("gru", 32, 256, 1, True, False, 30, 64, True, "bf16", {}, (0, 2)),  # adapted: mma, h through shared memory
    ("lstm", 32, 128, 2, True, True, 30, 40, False, "fp32", {}, (250, 2)),  # adapted: FFMA
    ("lstm", 48, 768, 1, False, False, 30, 64, True, "fp16", {}, (0, 2)),
    ("gru", 32, 256, 2, False, False, 30, 48, True, "bf16", {}, (250, 0)),  # 250 ns on mma without poll_frag
    ("lstm", 80, 512, 1, True, False, 30, 8, True, "fp32", dict(poll_spin=1), (250, 1)),  # spun: 2 FFMA columns
    ("gru", 64, 1024, 1, False, False, 30, 8, False, "fp16", dict(poll_spin=2), (500, 2)),  # adapted: A fragments
    ("lstm", 32, 512, 1, False, False, 30, 1, True, "bf16", dict(poll_spin=2), (250, 2)),  # 16-bit FFMA, one row
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", POLL_SPIN_CASES, ids=lambda c: "-".join(map(str, c[:10] + (c[10] or "default",))))
def test_gpu_poll_spin_and_measured_delays_match_float64(case):
    """The first-read delay spun on clock64 (poll_spin=1), adapted every step (2), asked for or as the measured
    default, and T's 1000 ns default: the plan as expected (on Hopper), its outputs against float64, and a
    CUDA-graph replay equal to eager bit for bit."""
    *sizes, precision, overrides, want = case
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = sizes
    if not overrides and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the measured defaults are Hopper's (sm_90)")
    dtype = DTYPES[precision]
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    plan = plan_for(pack_rnn(module, "cuda", dtype), seq_len, batch, cudnn=False, **overrides)
    assert (plan.kernel, (plan.poll_delay, plan.poll_spin)) == ("persistent-cuda", want), plan
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", cudnn=False, **overrides)
    assert_close(got, reference(module, x, hx), TOLERANCE[precision])
    # timing decides the delays only: a graph replay equals the eager call bit for bit
    packed = pack_rnn(module, "cuda", dtype)
    states = [] if hx is None else [*hx] if isinstance(hx, tuple) else [hx]
    args = [x.to("cuda", dtype)] + [t.to("cuda", dtype).contiguous() for t in states]
    replays_equal_eager(packed, args, plan)



# the option cases below: (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precision, overrides)
def option_case(case):
    """A case's module, inputs and CUDA pack: (module, x, hx, packed, seq_len, batch, precision, overrides)."""
    *sizes, precision, overrides = case
    kind, input_size, hidden, layers, bi, bf, seq_len, batch, with_state = sizes
    module = make(kind, input_size, hidden, layers, bi, bf)
    x, hx = random_inputs(module, seq_len, batch, with_state)
    return module, x, hx, pack_rnn(module, "cuda", DTYPES[precision]), seq_len, batch, precision, overrides


def replay_case(packed, x, hx, plan):
    """replays_equal_eager on a case's inputs, in the pack's dtype."""
    states = [] if hx is None else [*hx] if isinstance(hx, tuple) else [hx]
    args = [x.to("cuda", packed.dtype)] + [t.to("cuda", packed.dtype).contiguous() for t in states]
    replays_equal_eager(packed, args, plan)


# mma_swap (v26, asked for): W^T as the mma's A operand, h polled into its B fragments, at <= 8 batch rows:
# (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precision, overrides)
MMA_SWAP_CASES = [
    ("lstm", 128, 1024, 2, False, False, 24, 8, True, "bf16", {}),  # U's sizes, two layers
    ("lstm", 80, 512, 2, True, False, 30, 5, True, "bf16", {}),  # S's: bidirectional, 5 of 8 rows
    ("gru", 64, 768, 1, False, True, 20, 8, False, "fp16", dict(poll_spin=2)),  # batch_first, no state
    ("lstm", 32, 1024, 1, False, False, 16, 1, True, "fp16", dict(mma=True, poll_frag=True)),  # one row on mma
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", MMA_SWAP_CASES, ids=lambda c: "-".join(map(str, c[:10] + (c[10] or "",))))
def test_gpu_mma_swap_matches_float64_and_the_unswapped_plan(case):
    """h as the mma's B operand (8 columns: the batch), W^T as A: outputs against float64 and close to the same plan
    without the swap (the tensor cores sum the same products, perhaps in another order), the plan with its one group
    of 8 rows, and a CUDA-graph replay equal to eager."""
    module, x, hx, packed, seq_len, batch, precision, overrides = option_case(case)
    dtype = DTYPES[precision]
    plan = plan_for(packed, seq_len, batch, cudnn=False, mma_swap=True, **overrides)
    assert (plan.kernel, plan.mma_swap, plan.poll_frag, plan.group_rows) == ("persistent-cuda", True, True, 8), plan
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", cudnn=False, mma_swap=True, **overrides)
    assert_close(got, reference(module, x, hx), TOLERANCE[precision])
    plain = run_fused(module, x, hx, dtype=dtype, device="cuda", cudnn=False, **overrides)
    assert_close(got, [p.double() for p in plain], TOLERANCE[precision])
    replay_case(packed, x, hx, plan)


# wide_h (v27, asked for): 16-bit FFMA plans exchanging h as fp32 words (the 16-bit values widened exactly):
# (kind, input, hidden, layers, bi, batch_first, seq, batch, h0/c0, precision, overrides)
WIDE_H_CASES = [
    ("lstm", 256, 512, 1, False, False, 30, 1, True, "bf16", dict(ffma_cols=2)),  # P bf16 on P fp32's plan
    ("lstm", 64, 512, 2, False, False, 20, 1, True, "bf16", {}),  # two layers: the next GEMM reads fp32 words
    ("gru", 48, 1024, 1, False, True, 20, 1, False, "fp16", {}),  # R's sizes in GRU, batch_first, no state
    ("lstm", 80, 512, 1, True, False, 20, 6, True, "fp16", dict(mma=False, sentinel_last=True)),  # 6 rows, sentinels
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", WIDE_H_CASES, ids=lambda c: "-".join(map(str, c[:10] + (c[10] or "",))))
def test_gpu_wide_h_equals_the_16bit_exchange_bit_for_bit(case):
    """h exchanged as fp32 words holding the 16-bit values: the outputs bit for bit those of the same plan with a
    16-bit slab (every word is the same value), against float64, and a CUDA-graph replay equal to eager."""
    module, x, hx, packed, seq_len, batch, precision, overrides = option_case(case)
    dtype = DTYPES[precision]
    plan = plan_for(packed, seq_len, batch, cudnn=False, wide_h=True, **overrides)
    assert (plan.kernel, plan.wide_h, plan.mma) == ("persistent-cuda", True, False), plan
    got = run_fused(module, x, hx, dtype=dtype, device="cuda", cudnn=False, wide_h=True, **overrides)
    assert_close(got, reference(module, x, hx), TOLERANCE[precision])
    narrow = run_fused(module, x, hx, dtype=dtype, device="cuda", cudnn=False, **overrides)
    for g, n in zip(got, narrow):
        assert torch.equal(g, n)
    replay_case(packed, x, hx, plan)
