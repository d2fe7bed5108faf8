"""Triton kernels for whole nn.LSTM / nn.GRU stacks: every layer, direction and time step in one launch.

Layout of the work (docs/fused_kernel.md has the numbers and which path each size takes):

* One kernel, ``_rnn_stack_kernel``. Grid ``(batch_tiles, programs)``. Every program of a batch tile loops
  over the layers itself. A layer is two phases:
  1. the input projection of all time steps, hoisted out of the recurrence: ``gx = x @ W_ih^T + b`` for
     every (t, b), a small matrix product (``tl.dot``, IEEE fp32, or fp16/bf16 with fp32 accumulation),
     its (column chunk, time tile) work items shared round-robin among the programs. With a single time
     tile (short sequences) each recurrence unit projects its own columns instead, so nobody waits.
  2. the recurrence: one *unit* per (direction, row tile). A unit keeps its slice of ``W_hh^T`` in
     registers for all time steps, whole columns per thread, and multiplies it with ``h`` by
     broadcast-multiply-and-sum (batch rows are few: no tensor cores, and the sum over k stays inside a
     thread); ``c`` stays in registers. When one row tile covers a direction, ``h`` stays on chip too and
     the units never wait for each other inside a layer.
* Gate columns are interleaved (hidden unit, gate) so one split hands each thread i, f, g, o of its units.
* Batch rows are independent: for HP <= 32 and longer sequences a program is one warp for one batch row and
  direction, so each row's steps run on their own multiprocessor (see plan_for).
* A step is a chain of dependent latencies, so on CUDA sigmoid and tanh use ``ex2.approx.ftz`` and
  ``rcp.approx.ftz`` (no range fix-ups around them), the sum over k runs as independent chains of
  ``k_chain`` FMAs, and the next step's projection is read into registers the current one has freed.
* Programs of one batch tile meet at grid barriers (an atomic counter in global memory) after the
  projection and at the end of each layer. When a direction is split over several row tiles, the tiles
  also exchange h every step: the launcher poisons the layer outputs, and a reader polls the words it
  needs (each thread its own words, in PTX) until none is poison; the words are then h. Waiting between
  programs needs every program resident, so it is used on
  CUDA only, with at most one program per multiprocessor; under ``TRITON_INTERPRET=1`` (programs run one
  after another) the plan is always one program per batch tile, which never waits.
* Layer pipeline (``_rnn_pipe_kernel``, short sequences, small hidden sizes): one program per (layer, direction)
  with all its weights in registers from kernel start; it polls the previous layer's output step by step
  (poisoned words again, in two sets used by alternate launches, so no fill between launches).
* Relay (``_rnn_relay_kernel``, the one-warp plan past seq 16): per batch tile one warp per direction
  runs the recurrence of every layer while helper programs project the next layer's input row by row as
  the current layer completes the rows (polled as poisoned words, in two sets used by alternate launches)
  and count their rows done; a unit starts a layer when the count is complete. No grid barrier: a layer
  hands over to the next in ~1.9 us instead of ~4.7.
* ``multi-launch``: sizes whose programs cannot all be resident run the same kernel once per layer for the
  projection and once per (layer, time step) for the recurrence, with ``h`` and ``c`` in global memory.

Padding: each direction's hidden units are padded to ``HP`` (a power of two); padded rows have zero
weights and biases, so their ``h`` and ``c`` stay exactly 0 and the next layer may read them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

PATHS = ("single-launch", "multi-launch")
# Recurrent weights per thread a program keeps in registers for a whole layer (fp32 values).
WEIGHT_REGISTERS = 128
POLL_H_MAX_BYTES = 64 << 20
# Longest sequence for which the layer pipeline (one program per layer and direction) is the default plan
# (H100, seed model: faster at seq 1 and 3, slower at seq 10), and the most W_ih + W_hh weights per thread
# it is the default with (96 compiles without spills on sm_90; 128 spills at HP 64).
PIPELINE_MAX_SEQ = 3
PIPELINE_WEIGHTS = 96
# the one-warp-per-row plan (HP <= 32) from this many (time step, row) pairs per batch tile: below it a unit
# projects its own columns, too slow on one warp
SMALL_ROWS_MIN_SEQ = 16
# the relay kernel: helper programs per batch tile (at most; more were no faster) and the most workspace it
# may take. Where it fits it is the one-warp plan's kernel at every length (H100, seed model: 129 vs 164 us at
# seq 50, 231 vs 273 at 100, 442 vs 500 at 200 against the stack kernel)
RELAY_HELPERS = 16
RELAY_MAX_BYTES = 256 << 20
# fp16/bf16 weights as float32 tensors of the rounded values (see pack_rnn): off, 16-bit measured faster
WIDE_WEIGHTS = False


@triton.jit
def _recip(x, FAST: tl.constexpr):
    # FAST (CUDA): rcp.approx.ftz, one MUFU; else Triton's division (div.full.f32: range checks around the MUFU)
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _exp_neg(x, SCALE: tl.constexpr, FAST: tl.constexpr):
    """exp(-SCALE * x). FAST (CUDA): one multiply and ex2.approx.ftz (results below 2^-126 flush to 0: no
    rescaling around the MUFU); the negation and scale folded into the multiply save a dependent instruction."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * (-SCALE * 1.4426950408889634)],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp(x * -SCALE)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr = False):
    return _recip(1.0 + _exp_neg(x, 1.0, FAST), FAST)


@triton.jit
def _tanh(x, FAST: tl.constexpr = False):
    # 2*sigmoid(2x) - 1: exact limits at +-inf, NaN stays NaN, absolute error ~1e-7 near 0.
    return 2.0 * _recip(1.0 + _exp_neg(x, 2.0, FAST), FAST) - 1.0


@triton.jit
def _gates(pre, BLOCK_B: tl.constexpr, N: tl.constexpr):
    """Split interleaved (unit, gate) columns [BLOCK_B, N * 4] into the four gates, each [BLOCK_B, N]."""
    even, odd = tl.split(tl.reshape(pre, (BLOCK_B, N, 2, 2)))
    gate0, gate2 = tl.split(even)
    gate1, gate3 = tl.split(odd)
    return gate0, gate1, gate2, gate3


@triton.jit
def _gru_cell(gate0, gate1, gate2, gate3, h_old, FAST: tl.constexpr = False):
    """PyTorch's GRU on gates r, z, (W_hn h + b_hn), (W_in x + b_in): n = tanh(x_n + r * h_n); h' = (1 - z) n + z h."""
    z = _sigmoid(gate1, FAST)
    n = _tanh(gate3 + _sigmoid(gate0, FAST) * gate2, FAST)
    return (1.0 - z) * n + z * h_old


@triton.jit
def _lstm_cell(gate0, gate1, gate2, gate3, c, FAST: tl.constexpr = False):
    """PyTorch's LSTM cell on gates i, f, g, o: returns (h, c)."""
    c = _sigmoid(gate1, FAST) * c + _sigmoid(gate0, FAST) * _tanh(gate2, FAST)
    return _sigmoid(gate3, FAST) * _tanh(c, FAST), c


@triton.jit
def _cell(pre, c, h_old, IS_LSTM: tl.constexpr, BLOCK_B: tl.constexpr, N: tl.constexpr, FAST: tl.constexpr):
    """(h, c) from the interleaved pre-activations [BLOCK_B, N * 4]; h_old is used by a GRU, c by an LSTM."""
    gate0, gate1, gate2, gate3 = _gates(pre, BLOCK_B, N)
    if IS_LSTM:
        h, c = _lstm_cell(gate0, gate1, gate2, gate3, c, FAST)
    else:
        h = _gru_cell(gate0, gate1, gate2, gate3, h_old, FAST)
    return h, c


@triton.jit
def _store_out(out_ptr, t, stride_ot, stride_ob, stride_ok, d, H, offs_b, offs_n, h, mask):
    """h of step t, direction d, into the user's output (its layout and dtype)."""
    tl.store(out_ptr + t * stride_ot + offs_b[:, None] * stride_ob + (d * H + offs_n[None, :]) * stride_ok,
             h.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_state(hn_ptr, cn_ptr, state, h, c, state_ok, IS_LSTM: tl.constexpr):
    """The final h (and c) of a (layer, direction) into hn (and cn)."""
    tl.store(hn_ptr + state, h.to(hn_ptr.dtype.element_ty), mask=state_ok)
    if IS_LSTM:
        tl.store(cn_ptr + state, c.to(cn_ptr.dtype.element_ty), mask=state_ok)


@triton.jit
def _load_state(h0_ptr, c0_ptr, layer, d, B, H, offs_b, b_ok, D: tl.constexpr, HP: tl.constexpr,
                BLOCK_B: tl.constexpr, IS_LSTM: tl.constexpr, HAS_STATE: tl.constexpr):
    """The initial h and c [BLOCK_B, HP] of (layer, direction d) from h0/c0 (zeros without state), with their
    offsets in h0/hn and mask: (state, state_ok, h, c)."""
    offs_n = tl.arange(0, HP)
    state = ((layer * D + d) * B + offs_b[:, None]) * H + offs_n[None, :]
    state_ok = b_ok[:, None] & (offs_n < H)[None, :]
    h = tl.zeros((BLOCK_B, HP), dtype=tl.float32)
    c = tl.zeros((BLOCK_B, HP), dtype=tl.float32)
    if HAS_STATE:
        h = tl.load(h0_ptr + state, mask=state_ok, other=0.0).to(tl.float32)
        if IS_LSTM:
            c = tl.load(c0_ptr + state, mask=state_ok, other=0.0).to(tl.float32)
    return state, state_ok, h, c


@triton.jit
def _load_acquire(ptr):
    """One 32-bit load with acquire semantics at GPU scope (cheaper to poll than an atomic RMW)."""
    return tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _pin(x, ON_GPU: tl.constexpr):
    """An identity in PTX, so that a layout conversion after it stays after it. Used on the polled h: Triton
    3.9 otherwise carried h across the step loop in the broadcast layout and spilled (216 bytes of stack at
    HP 128). Triton 3.6 ignored it on the loop-carried h of workload B (its layout pass moves elementwise asm
    too), so it is no general fix. The interpreter runs no PTX."""
    if ON_GPU:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=False, pack=1)
    else:
        return x


@triton.jit
def _arrive(counter_ptr):
    """Count this program's arrival at `counter_ptr`, after every store its threads made before."""
    tl.debug_barrier()  # every thread's stores of this program happen before its arrival
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_count(counter_ptr, target, ON_GPU: tl.constexpr):
    """Wait until `target` arrivals were counted at `counter_ptr`; loads after it see what they published.
    The spin limit (about a second) turns a broken residency assumption into wrong numbers, not a hang.
    Under the interpreter (programs run one after another) the count is complete or never will be."""
    if ON_GPU:
        seen = _load_acquire(counter_ptr)
        spins = 0
        while (seen < target) & (spins < 20_000_000):
            seen = _load_acquire(counter_ptr)
            spins += 1
    tl.debug_barrier()


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Wait until `target` arrivals were counted at `counter_ptr`, this one's included (CUDA only: all
    programs resident)."""
    _arrive(counter_ptr)
    _wait_count(counter_ptr, target, True)


@triton.jit
def _spin_load(ptrs, mask):
    """Each thread loads its words until none is the poison 0xFFFFFFFF (masked-off words: 0). CUDA only.

    The spin is per thread, in PTX: no reduction over the program and no barrier per poll. It gives up
    after 20 M polls, so a broken residency assumption gives wrong numbers instead of a hang.
    """
    return tl.inline_asm_elementwise(
        """{
        .reg .pred %p<3>;
        .reg .u32 %n;
        mov.b32 $0, 0;
        mov.u32 %n, 0;
        setp.eq.s32 %p0, $2, 0;
        @%p0 bra DONE${:uid};
        SPIN${:uid}:
        ld.volatile.global.b32 $0, [$1];
        add.u32 %n, %n, 1;
        setp.eq.s32 %p1, $0, -1;
        setp.lt.u32 %p2, %n, 20000000;
        and.pred %p1, %p1, %p2;
        @%p1 bra SPIN${:uid};
        DONE${:uid}:
        }""",
        "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _wait_h(words_ptr, row_stride, rows, BLOCK_B: tl.constexpr, WIDTH: tl.constexpr):
    """Wait until no word of h[rows, WIDTH] is still the poison 0xFFFFFFFF the launcher filled them with,
    and return the words: once none is poison they are h. CUDA only.

    A GPU never computes that NaN (its NaNs are canonical), so each word says itself whether it has been
    written: no fence and no counter, saving the atomic of a counter barrier; the caller bitcasts the words
    instead of reading h again.
    """
    offs = tl.arange(0, BLOCK_B)[:, None] * row_stride + tl.arange(0, WIDTH)[None, :]
    return _spin_load(words_ptr + offs, tl.arange(0, BLOCK_B)[:, None] < rows)


@triton.jit
def _project(in_ptr, stride_t, stride_b, stride_k, k_size, w_ptr, bias_ptr, gx_ptr,
             T, B, b0, first_item, item_step, col_base,
             C: tl.constexpr, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_C: tl.constexpr, COL_CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr,
             DOT_PRECISION: tl.constexpr):
    """gx[t, b, c] = sum_k in[t, b, k] * W_ih^T[k, c] + bias[c] for this batch tile and every t.

    c runs over the C = D * HP * 4 gate columns, (direction, hidden unit, gate) with the gate fastest; this
    call covers COL_CHUNKS chunks of BLOCK_C columns from col_base. Work items are (column chunk, time tile)
    pairs; this program takes first_item, first_item + item_step, ...
    Rows m of a time tile are (t, b) pairs of the batch tile: m = t * BLOCK_B + (b - b0).
    """
    m_total = T * BLOCK_B
    m_tiles = tl.cdiv(m_total, BLOCK_M)
    n_items = m_tiles * COL_CHUNKS
    for item in range(first_item, n_items, item_step):
        offs_c = col_base + (item // m_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_m = (item % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        t = (offs_m // BLOCK_B).to(tl.int64)
        b = b0 + offs_m % BLOCK_B
        m_ok = (offs_m < m_total) & (b < B)
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(in_ptr + t[:, None] * stride_t + b[:, None] * stride_b + offs_k[None, :] * stride_k,
                        mask=m_ok[:, None] & (offs_k < k_size)[None, :], other=0.0, cache_modifier=".cg")
            w = tl.load(w_ptr + offs_k[:, None] * C + offs_c[None, :])
            acc = tl.dot(x.to(w.dtype), w, acc, input_precision=DOT_PRECISION)
        acc += tl.load(bias_ptr + offs_c)[None, :]
        tl.store(gx_ptr + (t[:, None] * B + b[:, None]) * C + offs_c[None, :], acc, mask=m_ok[:, None])


@triton.jit
def _load_gx(gx_rows, s, step_end, d, T, B, C: tl.constexpr, offs_b):
    """The projection of step s of direction d for this unit's rows and columns (0 past step_end)."""
    t = tl.where(d == 0, s, T - 1 - s).to(tl.int64)
    ok = offs_b < tl.where(s < step_end, B, 0)
    return tl.load(gx_rows + t * B * C, mask=ok[:, None], other=0.0, cache_modifier=".cg")


@triton.jit
def _rows_times(a, w, BLOCK_B: tl.constexpr, K: tl.constexpr, C: tl.constexpr, CHAIN: tl.constexpr,
                SEG: tl.constexpr, REAL: tl.constexpr):
    """sum_k a[b, k] * w[k, c] for a few rows, by broadcast-multiply-and-sum with k inside each thread, split
    into independent partial sums over CHAIN values of k each: dependent FMA chains of CHAIN, not K
    (workload H, k = 128: 83.5 -> 73.1 us with chains of 32).

    Only k with k % SEG < REAL are summed (k runs over segments of SEG holding REAL real values and padding):
    the products of padding are replaced by -0.0, and since x + -0.0 == x for every x the compiler issues no
    instruction for them (the seed model: 20 of 32 k a step).
    """
    if K > CHAIN:
        PARTS: tl.constexpr = K // CHAIN
        prod = tl.reshape(a, (BLOCK_B, PARTS, CHAIN))[:, :, :, None] * tl.reshape(w, (PARTS, CHAIN, C))[None, :, :, :]
        if REAL < SEG:
            real = tl.reshape(tl.arange(0, K) % SEG < REAL, (PARTS, CHAIN))
            prod = tl.where(real[None, :, :, None], prod, -0.0)
        return tl.sum(tl.sum(prod, axis=2), axis=1)
    else:
        prod = a[:, :, None] * w[None, :, :]
        if REAL < SEG:
            prod = tl.where((tl.arange(0, K) % SEG < REAL)[None, :, None], prod, -0.0)
        return tl.sum(prod, axis=1)


@triton.jit
def _load_prev_h(h0_ptr, seq_ptr, s, T, B, H, layer, d, offs_b, offs_k,
                 D: tl.constexpr, RT: tl.constexpr, HP: tl.constexpr, HAS_STATE: tl.constexpr,
                 BLOCK_B: tl.constexpr, WIDTH: tl.constexpr):
    """h before step s of direction d at hidden units offs_k: h0 (or 0) at s == 0, else the layer output."""
    b_ok = offs_b < B
    if s == 0:
        if HAS_STATE:
            h = tl.load(h0_ptr + ((layer * D + d) * B + offs_b[:, None]) * H + offs_k[None, :],
                        mask=b_ok[:, None] & (offs_k < H)[None, :], other=0.0).to(tl.float32)
        else:
            h = tl.zeros((BLOCK_B, WIDTH), dtype=tl.float32)
    else:
        t_prev = tl.where(d == 0, s - 1, T - s).to(tl.int64)
        h = tl.load(seq_ptr + (t_prev * B + offs_b[:, None]) * RT + d * HP + offs_k[None, :],
                    mask=b_ok[:, None], other=0.0, cache_modifier=".cg")
    return h


@triton.jit
def _step(h, h_old, c, gx, w, s, step_end, gx_rows, seq_out, out_ptr, stride_ot, stride_ob, stride_ok,
          T, B, H, d, is_last, offs_b, b_ok, offs_n, state_ok,
          IS_LSTM: tl.constexpr, HP: tl.constexpr, RT: tl.constexpr, C: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_R: tl.constexpr, K_CHAIN: tl.constexpr, H_SUM: tl.constexpr, FAST_MATH: tl.constexpr,
          AHEAD: tl.constexpr = 1):
    """Time step s of a recurrence unit: h [BLOCK_B, HP] (broadcast), its own units' h_old (GRU) and c (LSTM),
    gx the step's projection. Stores h and returns (h, c, the projection of step s + 1).

    The projection of step s + 1 (it does not depend on h) is read into gx's registers once they are free:
    read before gx was used, every step waited for it at the end of the loop (a register move), a whole L2
    round trip a step.
    """
    t = tl.where(d == 0, s, T - 1 - s).to(tl.int64)
    pre = gx + _rows_times(h, w, BLOCK_B, HP, BLOCK_R * 4, K_CHAIN, HP, H_SUM)  # [BLOCK_B, BLOCK_R * 4]
    gx = _load_gx(gx_rows, s + AHEAD, step_end, d, T, B, C, offs_b)
    h, c = _cell(pre, c, h_old, IS_LSTM, BLOCK_B, BLOCK_R, FAST_MATH)
    tl.store(seq_out + (t * B + offs_b[:, None]) * RT + d * HP + offs_n[None, :], h, mask=b_ok[:, None])
    if is_last:
        _store_out(out_ptr, t, stride_ot, stride_ob, stride_ok, d, H, offs_b, offs_n, h, state_ok)
    return h, c, gx


@triton.jit
def _rnn_stack_kernel(
    x_ptr, stride_xt, stride_xb, stride_xk,
    h0_ptr, c0_ptr,
    w_ih0_ptr, w_ihr_ptr, w_hh_ptr, bias_ptr,
    gx_ptr, seq_ptr, c_state_ptr, sync_ptr,
    out_ptr, stride_ot, stride_ob, stride_ok,
    hn_ptr, cn_ptr,
    T, B, input_size, H, num_layers,
    layer_begin, layer_end, step_begin, step_end,
    IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, K0: tl.constexpr, RT: tl.constexpr,
    BLOCK_B: tl.constexpr, R_TILES: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K0: tl.constexpr, BLOCK_KR: tl.constexpr,
    HAS_STATE: tl.constexpr, DO_PROJ: tl.constexpr, DO_REC: tl.constexpr,
    GRID_SYNC: tl.constexpr, C_IN_MEMORY: tl.constexpr, H_IN_REGISTERS: tl.constexpr,
    POLL_H: tl.constexpr, SEQ_SLABS: tl.constexpr, PROJ_BY_UNIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ON_GPU: tl.constexpr, FAST_MATH: tl.constexpr, K_CHAIN: tl.constexpr, H_SUM: tl.constexpr,
):
    # Gate columns: 4 per hidden unit, gate fastest. LSTM: i, f, g, o. GRU: r, z, (W_hn h + b_hn), (W_in x + b_in).
    # H_IN_REGISTERS: one program owns all rows of a direction for a whole layer, so h never leaves it.
    C: tl.constexpr = RT * 4
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    programs = tl.num_programs(1)
    b0 = pid_b * BLOCK_B
    offs_b = b0 + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    offs_k = tl.arange(0, HP)
    global_counter = sync_ptr + pid_b * (1 + D)
    n_global = 0  # grid barriers passed so far in this launch

    for layer in range(layer_begin, layer_end):
        # layer outputs, padded, fp32: two slabs used in turn, or one per layer when POLL_H polls them
        seq_in = seq_ptr + ((layer + SEQ_SLABS - 1) % SEQ_SLABS) * T * B * RT
        seq_out = seq_ptr + (layer % SEQ_SLABS) * T * B * RT

        if DO_PROJ and not PROJ_BY_UNIT:
            if layer == 0:
                _project(x_ptr, stride_xt, stride_xb, stride_xk, input_size, w_ih0_ptr, bias_ptr, gx_ptr,
                         T, B, b0, pid, programs, 0, C, K0, BLOCK_B, BLOCK_M, BLOCK_C, C // BLOCK_C, BLOCK_K0,
                         DOT_PRECISION)
            else:
                _project(seq_in, B * RT, RT, 1, RT, w_ihr_ptr + (layer - 1) * RT * C, bias_ptr + layer * C,
                         gx_ptr, T, B, b0, pid, programs, 0, C, RT, BLOCK_B, BLOCK_M, BLOCK_C, C // BLOCK_C,
                         BLOCK_KR, DOT_PRECISION)
            if GRID_SYNC:
                n_global += 1
                _grid_barrier(global_counter, n_global * programs)
            else:
                tl.debug_barrier()

        if DO_REC:
            for unit in range(pid, D * R_TILES, programs):
                d = unit // R_TILES
                n0 = (unit % R_TILES) * BLOCK_R
                offs_n = n0 + tl.arange(0, BLOCK_R)  # hidden units of this tile
                offs_c = d * HP * 4 + n0 * 4 + tl.arange(0, BLOCK_R * 4)  # their gate columns
                n_ok = offs_n < H
                # W_hh^T slice [HP, BLOCK_R * 4]: every thread holds whole columns, so the sum over k stays
                # inside a thread (no shuffles); it is loaded once per layer and kept for all time steps.
                w = tl.load(w_hh_ptr + ((layer * D + d) * HP + offs_k[:, None]) * (HP * 4)
                            + n0 * 4 + tl.arange(0, BLOCK_R * 4)[None, :]).to(tl.float32)
                if PROJ_BY_UNIT:
                    # one time tile: this unit projects its own columns (W_hh is already on its way), so
                    # no other program has to be waited for before the recurrence
                    if layer == 0:
                        _project(x_ptr, stride_xt, stride_xb, stride_xk, input_size, w_ih0_ptr, bias_ptr,
                                 gx_ptr, T, B, b0, 0, 1, d * HP * 4 + n0 * 4, C, K0, BLOCK_B, BLOCK_M, BLOCK_C,
                                 BLOCK_R * 4 // BLOCK_C, BLOCK_K0, DOT_PRECISION)
                    else:
                        _project(seq_in, B * RT, RT, 1, RT, w_ihr_ptr + (layer - 1) * RT * C,
                                 bias_ptr + layer * C, gx_ptr, T, B, b0, 0, 1, d * HP * 4 + n0 * 4, C, RT,
                                 BLOCK_B, BLOCK_M, BLOCK_C, BLOCK_R * 4 // BLOCK_C, BLOCK_KR, DOT_PRECISION)
                    tl.debug_barrier()
                state = ((layer * D + d) * B + offs_b[:, None]) * H + offs_n[None, :]
                state_ok = b_ok[:, None] & n_ok[None, :]
                c = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)  # (a GRU carries it unused)
                if IS_LSTM and HAS_STATE:
                    c = tl.load(c0_ptr + state, mask=state_ok, other=0.0).to(tl.float32)
                # constexpr test outside, run-time test inside: Triton folds the first, not a mixed `and`
                if IS_LSTM and C_IN_MEMORY:  # noqa: SIM102
                    if step_begin > 0:  # multi-launch: c from the previous step's launch
                        c = tl.load(c_state_ptr + ((layer * D + d) * B + offs_b[:, None]) * HP
                                    + offs_n[None, :], mask=b_ok[:, None], other=0.0, cache_modifier=".cg")
                h = _load_prev_h(h0_ptr, seq_out, step_begin, T, B, H, layer, d, offs_b, offs_k,
                                 D, RT, HP, HAS_STATE, BLOCK_B, HP)
                h_new = tl.zeros((BLOCK_B, BLOCK_R), dtype=tl.float32)
                gx_rows = gx_ptr + offs_b[:, None] * C + offs_c[None, :]
                gx = _load_gx(gx_rows, step_begin, step_end, d, T, B, C, offs_b)
                is_last = layer == num_layers - 1
                for s in range(step_begin, step_end):
                    if not H_IN_REGISTERS:  # noqa: SIM102 (constexpr, then run-time)
                        if s > step_begin:
                            if GRID_SYNC and POLL_H:
                                # the row tiles of this direction write h of step s - 1 over poisoned words
                                t_prev = tl.where(d == 0, s - 1, T - s).to(tl.int64)
                                words = _wait_h(seq_out.to(tl.pointer_type(tl.int32)) + (t_prev * B + b0) * RT
                                                + d * HP, RT, B - b0, BLOCK_B, HP)
                                h = words.to(tl.float32, bitcast=True)
                            else:
                                if GRID_SYNC:
                                    # the other row tiles of this direction wrote their part of h at step s - 1
                                    passed = (layer - layer_begin) * (step_end - step_begin - 1) + s - step_begin
                                    _grid_barrier(global_counter + 1 + d, passed * R_TILES)
                                h = _load_prev_h(h0_ptr, seq_out, s, T, B, H, layer, d, offs_b, offs_k,
                                                 D, RT, HP, HAS_STATE, BLOCK_B, HP)
                        h = _pin(h, ON_GPU)  # h arrives distributed over the threads: broadcast it here
                    if IS_LSTM or R_TILES == 1:
                        h_old = h
                    else:  # a GRU cell needs its own units' h, in the cell's layout
                        h_old = _load_prev_h(h0_ptr, seq_out, s, T, B, H, layer, d, offs_b, offs_n,
                                             D, RT, HP, HAS_STATE, BLOCK_B, BLOCK_R)
                    h_new, c, gx = _step(h, h_old, c, gx, w, s, step_end, gx_rows, seq_out, out_ptr,
                                         stride_ot, stride_ob, stride_ok, T, B, H, d, is_last, offs_b, b_ok,
                                         offs_n, state_ok, IS_LSTM, HP, RT, C, BLOCK_B, BLOCK_R, K_CHAIN, H_SUM,
                                         FAST_MATH)
                    if H_IN_REGISTERS:
                        h = h_new
                _store_state(hn_ptr, cn_ptr, state, h_new, c, state_ok, IS_LSTM)
                if IS_LSTM and C_IN_MEMORY:
                    tl.store(c_state_ptr + ((layer * D + d) * B + offs_b[:, None]) * HP + offs_n[None, :],
                             c, mask=b_ok[:, None])
            if GRID_SYNC:
                n_global += 1
                _grid_barrier(global_counter, n_global * programs)
            else:
                tl.debug_barrier()


@triton.jit
def _pipe_input(in_ptr, stride_t, stride_b, stride_k, k_size, t, offs_b, b_ok,
                K: tl.constexpr, POLL: tl.constexpr):
    """One time step of a layer's input [BLOCK_B, K]: x itself (layer 0), or one volatile read of the previous
    layer's output slab as int32 words (the caller checks them for poison)."""
    offs_k = tl.arange(0, K)
    ptrs = in_ptr + t * stride_t + offs_b[:, None] * stride_b + offs_k[None, :] * stride_k
    if POLL:
        return tl.load(ptrs.to(tl.pointer_type(tl.int32)), mask=b_ok[:, None], other=0, volatile=True)
    else:
        return tl.load(ptrs, mask=b_ok[:, None] & (offs_k < k_size)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _pipe_layer(in_ptr, stride_t, stride_b, stride_k, k_size, w_in_ptr, w_hh_ptr, bias_ptr,
                h0_ptr, c0_ptr, seq_out, out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                T, B, H, layer, d, num_layers, offs_b, b_ok,
                IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, K: tl.constexpr, RT: tl.constexpr,
                BLOCK_B: tl.constexpr, HAS_STATE: tl.constexpr, POLL: tl.constexpr, FAST_MATH: tl.constexpr,
                K_CHAIN: tl.constexpr, K_SEG: tl.constexpr, K_SUM: tl.constexpr, H_SUM: tl.constexpr):
    """All time steps of one (layer, direction), weights in registers, input polled step by step. Of the
    input's k, those with k % K_SEG < K_SUM are summed; of h's, those below H_SUM."""
    C: tl.constexpr = RT * 4
    offs_n = tl.arange(0, HP)
    cols = tl.arange(0, HP * 4)
    offs_k = tl.arange(0, K)
    # every weight this program needs, loaded at kernel start: the loads of all programs overlap
    w_in = tl.load(w_in_ptr + offs_k[:, None] * C + d * HP * 4 + cols[None, :]).to(tl.float32)
    w_h = tl.load(w_hh_ptr + ((layer * D + d) * HP + offs_n[:, None]) * (HP * 4) + cols[None, :]).to(tl.float32)
    bias = tl.load(bias_ptr + layer * C + d * HP * 4 + cols)
    state, state_ok, h, c = _load_state(h0_ptr, c0_ptr, layer, d, B, H, offs_b, b_ok, D, HP, BLOCK_B, IS_LSTM,
                                        HAS_STATE)
    t0 = tl.where(d == 0, 0, T - 1).to(tl.int64)
    xin = _pipe_input(in_ptr, stride_t, stride_b, stride_k, k_size, t0, offs_b, b_ok, K, POLL)
    for s in range(0, T):
        t = tl.where(d == 0, s, T - 1 - s).to(tl.int64)
        # the recurrent half does not depend on the input: it is done before the wait
        hw = bias[None, :] + _rows_times(h, w_h, BLOCK_B, HP, HP * 4, K_CHAIN, HP, H_SUM)  # [BLOCK_B, HP * 4]
        if POLL:
            # the previous layer writes its output over words poisoned with 0xFFFFFFFF (a NaN no GPU computes):
            # a word that is no longer poison holds its final value, so the polled words are the input itself
            spins = 0
            while (tl.sum((xin == -1).to(tl.int32)) > 0) & (spins < 20_000_000):
                xin = _pipe_input(in_ptr, stride_t, stride_b, stride_k, k_size, t, offs_b, b_ok, K, POLL)
                spins += 1
            x = xin.to(tl.float32, bitcast=True)
        else:
            x = xin
        # prefetch the next step's input (for a bidirectional stack it is already written)
        t_next = tl.where(d == 0, s + 1, T - 2 - s).to(tl.int64)
        t_next = tl.where(s + 1 < T, t_next, t).to(tl.int64)
        xin = _pipe_input(in_ptr, stride_t, stride_b, stride_k, k_size, t_next, offs_b, b_ok, K, POLL)
        pre = hw + _rows_times(x, w_in, BLOCK_B, K, HP * 4, K_CHAIN, K_SEG, K_SUM)
        h_new, c = _cell(pre, c, h, IS_LSTM, BLOCK_B, HP, FAST_MATH)
        if layer == num_layers - 1:
            _store_out(out_ptr, t, stride_ot, stride_ob, stride_ok, d, H, offs_b, offs_n, h_new, state_ok)
        else:
            tl.store(seq_out + (t * B + offs_b[:, None]) * RT + d * HP + offs_n[None, :], h_new,
                     mask=b_ok[:, None])
        h = h_new
    _store_state(hn_ptr, cn_ptr, state, h, c, state_ok, IS_LSTM)


@triton.jit
def _rnn_pipe_kernel(
    x_ptr, stride_xt, stride_xb, stride_xk,
    h0_ptr, c0_ptr,
    w_ih0_ptr, w_ihr_ptr, w_hh_ptr, bias_ptr,
    seq_ptr, count_ptr,
    out_ptr, stride_ot, stride_ob, stride_ok,
    hn_ptr, cn_ptr,
    T, B, input_size, H, num_layers,
    IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, K0: tl.constexpr, RT: tl.constexpr,
    BLOCK_B: tl.constexpr, HAS_STATE: tl.constexpr, FAST_MATH: tl.constexpr, K_CHAIN: tl.constexpr,
    I_SUM: tl.constexpr, H_SUM: tl.constexpr,
):
    """Layer pipeline for short sequences: program (layer, direction), all of them resident (CUDA), or run
    in program order (the interpreter, where every input is written before its reader starts).

    Each program loads its W_ih, W_hh and bias into registers at once, then polls the previous layer's output
    step by step. The slabs come in two sets used by alternate launches; a program re-poisons its own words
    of the other set after its work, so the next launch (stream-ordered after this one) finds them poisoned and
    no fill is needed between launches. count_ptr holds one launch counter per program (only it touches it).
    """
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    layer = pid // D
    d = pid % D
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    cell = count_ptr + pid_b * tl.num_programs(1) + pid
    launch = tl.load(cell)
    slab = T * B * RT
    set_size = (num_layers - 1) * slab
    seq_use = seq_ptr + (launch % 2) * set_size
    seq_other = seq_ptr + (1 - launch % 2) * set_size
    if layer == 0:
        _pipe_layer(x_ptr, stride_xt, stride_xb, stride_xk, input_size, w_ih0_ptr, w_hh_ptr, bias_ptr,
                    h0_ptr, c0_ptr, seq_use, out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                    T, B, H, layer, d, num_layers, offs_b, b_ok,
                    IS_LSTM, D, HP, K0, RT, BLOCK_B, HAS_STATE, False, FAST_MATH, K_CHAIN, K0, I_SUM, H_SUM)
    else:
        _pipe_layer(seq_use + (layer - 1) * slab, B * RT, RT, 1, RT, w_ihr_ptr + (layer - 1) * RT * RT * 4,
                    w_hh_ptr, bias_ptr, h0_ptr, c0_ptr, seq_use + layer * slab,
                    out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                    T, B, H, layer, d, num_layers, offs_b, b_ok,
                    IS_LSTM, D, HP, RT, RT, BLOCK_B, HAS_STATE, True, FAST_MATH, K_CHAIN, HP, H_SUM, H_SUM)
    if layer < num_layers - 1:
        # poison this program's words of the other set for the next launch (nobody reads that set now)
        mine = seq_other.to(tl.pointer_type(tl.int32)) + layer * slab + offs_b[:, None] * RT + d * HP \
            + tl.arange(0, HP)[None, :]
        for t in range(0, T):
            tl.store(mine + t * B * RT, tl.full((BLOCK_B, HP), -1, tl.int32), mask=b_ok[:, None])
    tl.store(cell, launch + 1)


# ---- relay kernel: layers handed over row by row --------------------------------------------------


@triton.jit
def _load_relaxed(ptrs):
    """One 32-bit load a word, relaxed at GPU scope (Triton's volatile loads are system scope). CUDA only."""
    return tl.inline_asm_elementwise("ld.relaxed.gpu.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _row_order(j, T, D: tl.constexpr):
    """The time step whose layer output is complete j-th: in order for one direction; from the middle out for
    two (the forward direction writes t = 0, 1, ..., the backward one t = T - 1, T - 2, ...)."""
    if D == 2:
        jj = j + T % 2
        k = jj // 2
        return tl.where(jj % 2 == 0, (T - 1) // 2 - k, T // 2 + k)
    else:
        return tl.full([], 0, tl.int32) + j  # a tensor for the interpreter too, where j is a Python int


@triton.jit
def _relay_rows(in_ptr, in_other, stride_t, stride_b, stride_k, k_size, w_ptr, bias_ptr, gx_ptr, ready_ptr, layer,
                T, B, offs_b, b_ok, d_first, d_step, j_first, j_step,
                D: tl.constexpr, HP: tl.constexpr, RT: tl.constexpr, K: tl.constexpr, K_SEG: tl.constexpr,
                K_SUM: tl.constexpr, BLOCK_B: tl.constexpr, K_CHAIN: tl.constexpr, POLL: tl.constexpr):
    """A helper's rows of one layer's projection: gx[layer, t, b, direction d's columns] = in[t, b, :] @ W + b
    for d in d_first::d_step and the rows j_first::j_step of _row_order, then one arrival at ready[layer, d].
    With POLL, in is the previous layer's output, polled until no word of the row is poison."""
    C: tl.constexpr = RT * 4
    COLS: tl.constexpr = HP * 4
    cols = tl.arange(0, COLS)
    offs_i = tl.arange(0, K)
    for d in range(d_first, D, d_step):
        # this direction's W_ih^T [K, COLS] and bias, kept for all its rows
        w = tl.load(w_ptr + offs_i[:, None] * C + d * COLS + cols[None, :]).to(tl.float32)
        bias = tl.load(bias_ptr + layer * C + d * COLS + cols)
        for j in range(j_first, T, j_step):
            t = _row_order(j, T, D).to(tl.int64)
            offs = t * stride_t + offs_b[:, None] * stride_b + offs_i[None, :] * stride_k
            ptrs = in_ptr + offs
            if POLL:
                # rows past the batch poll row b0 (always written) and read as 0
                row = tl.where(b_ok[:, None], ptrs, ptrs - (offs_b[:, None] - tl.min(offs_b, axis=0)) * stride_b)
                row = row.to(tl.pointer_type(tl.int32))
                words = _load_relaxed(row)
                spins = 0
                while (tl.sum(tl.sum((words == -1).to(tl.int32), axis=1), axis=0) > 0) & (spins < 20_000_000):
                    words = _load_relaxed(row)
                    spins += 1
                xin = tl.where(b_ok[:, None], words.to(tl.float32, bitcast=True), 0.0)
                if d == d_first:
                    # the same row of the other set, poisoned for the next launch (one helper a row does it:
                    # the units, which write this set's rows, then need no second store a step)
                    tl.store((in_other + offs).to(tl.pointer_type(tl.int32)),
                             tl.full((BLOCK_B, K), -1, tl.int32), mask=b_ok[:, None])
            else:
                xin = tl.load(ptrs, mask=b_ok[:, None] & (offs_i < k_size)[None, :], other=0.0).to(tl.float32)
            acc = bias[None, :] + _rows_times(xin, w, BLOCK_B, K, COLS, K_CHAIN, K_SEG, K_SUM)
            tl.store(gx_ptr + ((layer * T + t) * B + offs_b[:, None]) * C + d * COLS + cols[None, :], acc,
                     mask=b_ok[:, None])
        # one arrival a helper, after all its rows: the unit waits for all of them anyway
        _arrive(ready_ptr + layer * D + d)


@triton.jit
def _relay_unit(h0_ptr, c0_ptr, w_hh_ptr, gx_ptr, ready_ptr, helpers, seq_set, out_ptr, stride_ot, stride_ob,
                stride_ok, hn_ptr, cn_ptr, layer, d, T, B, H, num_layers, offs_b, b_ok,
                IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, RT: tl.constexpr,
                BLOCK_B: tl.constexpr, HAS_STATE: tl.constexpr, ON_GPU: tl.constexpr, FAST_MATH: tl.constexpr,
                K_CHAIN: tl.constexpr, H_SUM: tl.constexpr):
    """All steps of one (layer, direction), once every helper has counted its rows of the layer's projection:
    the stack kernel's step (_step), with nothing to check at each step."""
    C: tl.constexpr = RT * 4
    COLS: tl.constexpr = HP * 4
    offs_n = tl.arange(0, HP)
    cols = tl.arange(0, COLS)
    w = tl.load(w_hh_ptr + ((layer * D + d) * HP + offs_n[:, None]) * COLS + cols[None, :]).to(tl.float32)
    state, state_ok, h, c = _load_state(h0_ptr, c0_ptr, layer, d, B, H, offs_b, b_ok, D, HP, BLOCK_B, IS_LSTM,
                                        HAS_STATE)
    ready = ready_ptr + layer * D + d
    _wait_count(ready, helpers, ON_GPU)
    tl.store(ready, 0)  # every helper's count of this launch is in: zero for the next one
    seq_out = seq_set + layer * T * B * RT
    is_last = layer == num_layers - 1
    gx_rows = gx_ptr + (layer * T * B + offs_b[:, None]) * C + d * COLS + cols[None, :]
    # two steps a turn, each reading the projection of two steps later into its own registers: read one step
    # ahead, the step waited for it (B 239.6 -> 230.5 us), and a loop-carried pair of registers would end each
    # turn with a move that waits for the read
    gx = _load_gx(gx_rows, 0, T, d, T, B, C, offs_b)
    gy = _load_gx(gx_rows, 1, T, d, T, B, C, offs_b)
    for s in range(0, T - 1, 2):
        h, c, gx = _step(h, h, c, gx, w, s, T, gx_rows, seq_out, out_ptr, stride_ot, stride_ob, stride_ok, T, B, H, d,
                         is_last, offs_b, b_ok, offs_n, state_ok, IS_LSTM, HP, RT, C, BLOCK_B, HP, K_CHAIN, H_SUM,
                         FAST_MATH, 2)
        h, c, gy = _step(h, h, c, gy, w, s + 1, T, gx_rows, seq_out, out_ptr, stride_ot, stride_ob, stride_ok, T, B, H,
                         d, is_last, offs_b, b_ok, offs_n, state_ok, IS_LSTM, HP, RT, C, BLOCK_B, HP, K_CHAIN, H_SUM,
                         FAST_MATH, 2)
    if T % 2 == 1:
        h, c, gx = _step(h, h, c, gx, w, T - 1, T, gx_rows, seq_out, out_ptr, stride_ot, stride_ob, stride_ok, T, B,
                         H, d, is_last, offs_b, b_ok, offs_n, state_ok, IS_LSTM, HP, RT, C, BLOCK_B, HP, K_CHAIN,
                         H_SUM, FAST_MATH, 2)
    _store_state(hn_ptr, cn_ptr, state, h, c, state_ok, IS_LSTM)


@triton.jit
def _rnn_relay_kernel(
    x_ptr, stride_xt, stride_xb, stride_xk,
    h0_ptr, c0_ptr,
    w_ih0_ptr, w_ihr_ptr, w_hh_ptr, bias_ptr,
    gx_ptr, seq_ptr, count_ptr,
    out_ptr, stride_ot, stride_ob, stride_ok,
    hn_ptr, cn_ptr,
    T, B, input_size, H, num_layers,
    IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, K0: tl.constexpr, RT: tl.constexpr,
    BLOCK_B: tl.constexpr, HAS_STATE: tl.constexpr, ON_GPU: tl.constexpr, FAST_MATH: tl.constexpr,
    K_CHAIN: tl.constexpr, I_SUM: tl.constexpr, H_SUM: tl.constexpr,
):
    """One warp-sized program per direction (a *unit*, the recurrence of every layer) and *helpers* that
    project each layer's input row by row as the previous layer completes it; nobody waits at a grid barrier.

    Grid (batch tiles, programs). On CUDA programs 0..D-1 are the units and the others helpers, each
    helper fixed to one direction; under the interpreter one program (programs == 1) does, layer after
    layer, every helper's rows and then every unit's steps. A helper takes the rows of a layer in the
    order the previous layer completes them (_row_order), polls the row (both directions' h at step t)
    until no word is poison and writes the row's projection gx; after its last row of a layer it arrives at
    ready[layer, direction]. A unit starts a layer once every helper of its direction has arrived and then
    runs the stack kernel's step (_step) with nothing to check. A bidirectional layer's rows are all
    complete only when the slower direction of the previous layer ends, so waiting for all of them costs
    only the projection of the last ones: ~1.9 us a layer on the seed model (launch included) instead of
    ~4.7 us for a shared projection and two grid barriers. (v8 checked each row for poison at use instead,
    speculating and redoing the step: that check cost 0.06 us of a 0.23 us step.)

    count_ptr holds one launch counter per program, then ready [batch tiles, L, D]: zero between launches
    (each unit zeroes its own after the wait). The layer outputs [2, L, T, B, RT] (int32 words) come in two
    sets used by alternate launches: whoever reads a row of this launch's set poisons the same row of the
    other set, for the next launch, stream-ordered after this one. The workspace poisons both sets once.
    """
    C: tl.constexpr = RT * 4
    pid_b = tl.program_id(0)
    pid = tl.program_id(1)
    programs = tl.num_programs(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    cell_ptr = count_ptr + pid_b * programs + pid
    ready_ptr = count_ptr + tl.num_programs(0) * programs + pid_b * num_layers * D
    launch = tl.load(cell_ptr)
    seq_size = num_layers * T * B * RT
    seq_set = seq_ptr + (launch % 2) * seq_size
    seq_other = seq_ptr + (1 - launch % 2) * seq_size
    serial = programs == 1
    helper = serial | (pid >= D)
    unit = serial | (pid < D)
    # a helper's direction and rows (every one of each under the interpreter)
    d_first = tl.where(serial, 0, (pid - D) % D)
    d_step = tl.where(serial, 1, D)
    j_first = tl.where(serial, 0, (pid - D) // D)
    j_step = tl.where(serial, 1, (programs - D) // D)
    if helper:
        _relay_rows(x_ptr, x_ptr, stride_xt, stride_xb, stride_xk, input_size, w_ih0_ptr, bias_ptr, gx_ptr,
                    ready_ptr, 0, T, B, offs_b, b_ok, d_first, d_step, j_first, j_step,
                    D, HP, RT, K0, K0, I_SUM, BLOCK_B, K_CHAIN, False)
    for layer in range(0, num_layers):
        if unit:
            for d in range(tl.where(serial, 0, pid), D, tl.where(serial, 1, D)):
                _relay_unit(h0_ptr, c0_ptr, w_hh_ptr, gx_ptr, ready_ptr, j_step, seq_set, out_ptr, stride_ot, stride_ob,
                            stride_ok, hn_ptr, cn_ptr, layer, d, T, B, H, num_layers, offs_b, b_ok,
                            IS_LSTM, D, HP, RT, BLOCK_B, HAS_STATE, ON_GPU, FAST_MATH, K_CHAIN, H_SUM)
        if helper and layer + 1 < num_layers:
            # the next layer's rows, as this one completes them (serially: after this layer's units)
            _relay_rows(seq_set + layer * T * B * RT, seq_other + layer * T * B * RT, B * RT, RT, 1, RT,
                        w_ihr_ptr + layer * RT * C, bias_ptr, gx_ptr, ready_ptr, layer + 1, T, B, offs_b, b_ok,
                        d_first, d_step, j_first, j_step, D, HP, RT, RT, HP, H_SUM, BLOCK_B, K_CHAIN, ON_GPU)
    tl.store(cell_ptr, launch + 1)


# ---- weights -------------------------------------------------------------------------------------


@dataclass
class PackedRNN:
    """An nn.LSTM / nn.GRU's weights in the kernel's padded, transposed layout, on one device, in one dtype.

    Columns c = (direction * HP + hidden unit) * 4 + gate slot, so one hidden unit's four gates sit side by
    side. Slots: LSTM i, f, g, o; GRU r, z, "W_hn h + b_hn", "W_in x + b_in" (r multiplies the third).
    w_ih0 [K0, C], w_ihr [max(L-1, 1), D*HP, C], w_hh [L, D, HP, HP*4] with values of `dtype` (stored as float32
    with wide weights, see pack_rnn); bias [L, C] float32
    (b_ih + b_hh folded where PyTorch adds them).
    """

    kind: str
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    batch_first: bool
    hidden_padded: int
    input_padded: int
    dtype: torch.dtype
    w_ih0: torch.Tensor
    w_ihr: torch.Tensor
    w_hh: torch.Tensor
    bias: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.w_hh.device


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def pack_rnn(module: torch.nn.Module, device: Any = "cpu", dtype: torch.dtype = torch.float32,
             wide_weights: bool = WIDE_WEIGHTS) -> PackedRNN:
    """Pad, transpose and interleave a plain nn.LSTM / nn.GRU's parameters once (no proj_size).

    For fp16/bf16, `wide_weights` stores the weights rounded to `dtype` in float32 tensors: the same values,
    products and fp32 sums as 16-bit storage, on the fp32 code path. Which is faster moved with the kernel
    (H100, workload H: wide 83.8 vs 88.1 us in v6; 16-bit 71.1 vs 73.4 us in v7), so the default is 16-bit.
    """
    if not isinstance(module, (torch.nn.LSTM, torch.nn.GRU)):
        raise TypeError(f"expected nn.LSTM or nn.GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM proj_size is not supported by the fused kernel")
    lstm = isinstance(module, torch.nn.LSTM)
    hidden, layers = module.hidden_size, module.num_layers
    dirs = 2 if module.bidirectional else 1
    hp, k0 = _pow2(hidden), _pow2(module.input_size)
    rt = dirs * hp
    # [.., K, D, HP, 4] views of the [.., K, C] tensors
    w_ih0 = torch.zeros(k0, dirs, hp, 4, dtype=torch.float64)
    w_ihr = torch.zeros(max(layers - 1, 1), rt, dirs, hp, 4, dtype=torch.float64)
    w_hh = torch.zeros(layers, dirs, hp, hp, 4, dtype=torch.float64)
    bias = torch.zeros(layers, dirs, hp, 4, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(layers):
            for d in range(dirs):
                sfx = f"l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(module, f"weight_ih_{sfx}").detach().double().cpu()
                w_hh_l = getattr(module, f"weight_hh_{sfx}").detach().double().cpu()
                if module.bias:
                    b_ih = getattr(module, f"bias_ih_{sfx}").detach().double().cpu()
                    b_hh = getattr(module, f"bias_hh_{sfx}").detach().double().cpu()
                else:
                    b_ih = b_hh = torch.zeros(w_ih.shape[0], dtype=torch.float64)

                def gate(t: torch.Tensor, g: int) -> torch.Tensor:
                    return t[g * hidden:(g + 1) * hidden]

                if lstm:  # slot: (gate of W_ih, gate of W_hh, bias)
                    slots = [(g, g, gate(b_ih, g) + gate(b_hh, g)) for g in range(4)]
                else:
                    slots = [(0, 0, gate(b_ih, 0) + gate(b_hh, 0)), (1, 1, gate(b_ih, 1) + gate(b_hh, 1)),
                             (None, 2, gate(b_hh, 2)), (2, None, gate(b_ih, 2))]
                for slot, (gi, gh, b) in enumerate(slots):
                    bias[layer, d, :hidden, slot] = b
                    if gh is not None:
                        w_hh[layer, d, :hidden, :hidden, slot] = gate(w_hh_l, gh).T
                    if gi is None:
                        continue
                    w = gate(w_ih, gi)  # [hidden, input width]
                    if layer == 0:
                        w_ih0[: module.input_size, d, :hidden, slot] = w.T
                    else:
                        for src in range(dirs):  # input columns: the previous layer's directions, padded
                            w_ihr[layer - 1, src * hp:src * hp + hidden, d, :hidden, slot] = \
                                w[:, src * hidden:(src + 1) * hidden].T

    def put(t: torch.Tensor, dt: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        t = t.reshape(shape).to(dtype=dt)  # rounded to dt, then widened to float32 if asked
        return t.to(device=device, dtype=torch.float32 if wide_weights else dt).contiguous()

    c = rt * 4
    return PackedRNN("lstm" if lstm else "gru", module.input_size, hidden, layers, dirs, module.batch_first,
                     hp, k0, dtype, put(w_ih0, dtype, (k0, c)), put(w_ihr, dtype, (-1, rt, c)),
                     put(w_hh, dtype, (layers, dirs, hp, hp * 4)), put(bias, torch.float32, (layers, c)))


# ---- launch policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How one call is launched (a pure function of the sizes and the device; see plan_for)."""

    path: str  # "single-launch" or "multi-launch"
    block_b: int  # batch rows per program
    r_tiles: int  # row tiles per direction in the recurrence
    programs: int  # programs per batch tile
    block_m: int = 16  # projection: (t, b) rows per work item
    block_c: int = 64  # projection: gate columns per work item
    block_k: int = 32  # projection: reduction chunk
    num_warps: int = 4
    poll_h: bool = True  # split directions poll h over poisoned words (else: counter barrier + reload)
    proj_by_unit: bool = False  # each recurrence unit projects its own columns (one time tile only)
    pipeline: bool = False  # one program per (layer, direction), weights in registers, input polled
    relay: bool = False  # one-warp units and helpers that project each layer row by row (_rnn_relay_kernel)
    fast_math: bool = True  # sigmoid/tanh from ex2.approx.ftz and rcp.approx.ftz (CUDA only)
    k_chain: int = 32  # products summed over k in independent chains of this many (see _rows_times)
    exact_k: bool = True  # sum over the real k only, not the padding (_rows_times; the pipeline always sums it)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan_for(packed: PackedRNN, seq_len: int, batch: int, path: str | None = None, **overrides: Any) -> Plan:
    """Pick the path and tile sizes.

    A recurrence unit (one direction's row tile) keeps W_hh^T [HP, 4 * HP / r_tiles] in registers, whole
    columns per thread; r_tiles is the fewest that keeps that under WEIGHT_REGISTERS per thread at
    num_warps <= 8. With r_tiles == 1, h stays in registers. On CUDA every program of a batch tile must be
    resident (grid barriers), so at most one per multiprocessor; otherwise, and on request, multi-launch.
    """
    hp, dirs = packed.hidden_padded, packed.num_directions
    cols = 4 * dirs * hp
    # unit columns spread over lanes and warps, the k sum inside each thread; at most 4 warps past HP 64
    # (8 warps of 128 weight registers spilled on sm_90), never more than WEIGHT_REGISTERS weights a thread.
    max_warps = 8 if hp <= 64 else 4
    r_tiles = 1
    while (4 * hp // r_tiles > 32 * max_warps or hp * 4 * hp // r_tiles > WEIGHT_REGISTERS * 32 * max_warps) \
            and 4 * hp // r_tiles > 1:
        r_tiles *= 2
    num_warps = max(1, min(max_warps, 4 * hp // r_tiles // 32))
    full_rows = min(_pow2(batch, least=1), max(1, 128 // hp))  # h is replicated in every thread
    block_b = full_rows
    block_c = min(cols, 128 if hp <= 64 else 64)
    block_m = 16 if seq_len * block_b <= 16 else 32
    on_cuda = packed.device.type == "cuda" and not interpreting()
    sms = _sm_count(packed.device) if on_cuda else 1 << 30
    # One warp per direction and batch row (HP <= 32: a unit's W_hh^T is at most 128 weights a thread): batch
    # rows are independent, so each row's step runs on its own multiprocessor with a quarter of the
    # multiply-adds of a 4-row tile, and barriers inside one warp cost little (B: 497 -> 352 us). The cell
    # then has exactly one element a thread: with fewer (a 1-row tile over 4 warps), Triton 3.6 computed the
    # cell of every unit in every thread (330 MUFU a step) and ran 10x slower. Only where the projection is
    # shared by the programs (more than one time tile): a single warp projecting its unit's own columns made
    # the seed model slower at seq 10 (121 vs 99 us); the switch at SMALL_ROWS_MIN_SEQ is not tuned further.
    small_rows = max(1, 32 // hp)
    if (on_cuda and r_tiles == 1 and hp <= 32 and seq_len * small_rows > SMALL_ROWS_MIN_SEQ
            and -(-batch // small_rows) * dirs <= sms):
        block_b, num_warps = min(block_b, small_rows), 1
        block_m, block_c = 16, min(cols, 64)
    batch_tiles = -(-batch // block_b)
    items = -(-seq_len * block_b // block_m) * (cols // block_c)
    if path is None:
        if not on_cuda:
            path = "single-launch"
        else:
            resident = batch_tiles * dirs * r_tiles <= sms
            path = "single-launch" if resident else "multi-launch"
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: use one of {PATHS}")
    if path == "single-launch" and not on_cuda:
        r_tiles = 1  # the interpreter runs programs one after another: one program, nobody waits
    # one time tile: each recurrence unit projects its own columns, so no barrier after the projection
    proj_by_unit = path == "single-launch" and seq_len * block_b <= block_m
    if proj_by_unit:
        block_c = min(64, 4 * hp // r_tiles)
    if path == "single-launch" and not on_cuda:
        programs = 1
    elif path == "single-launch" and not proj_by_unit:
        programs = max(dirs * r_tiles, min(items, 32, sms // batch_tiles))
    else:
        programs = dirs * r_tiles
    # Triton 3.6 (the H100 machine's) crashed in RemoveLayoutConversions compiling the h poll at HP 256
    # (2 warps, 16-row tiles); the counter barrier compiles there, so the poll is kept to HP <= 128.
    poll_h = hp <= 128
    # Layer pipeline: every (layer, direction) its own program with all its weights in registers (whole
    # columns per thread: at most WEIGHT_REGISTERS of W_ih and W_hh), all of them resident; CUDA only.
    k_in = max(packed.input_padded, dirs * hp if packed.num_layers > 1 else 0)
    pipe_block_b = overrides.get("block_b", full_rows)
    pipe_warps = max(1, min(max_warps, 4 * hp // 32))
    pipeline_fits = (r_tiles == 1 and k_in + hp <= WEIGHT_REGISTERS
                     and -(-batch // pipe_block_b) * packed.num_layers * dirs <= sms)
    pipeline = (on_cuda and path == "single-launch" and pipeline_fits and seq_len <= PIPELINE_MAX_SEQ
                and k_in + hp <= PIPELINE_WEIGHTS and overrides.get("pipeline", True))
    if pipeline:
        programs = packed.num_layers * dirs
        block_b, num_warps = pipe_block_b, pipe_warps
        if seq_len == 1:
            # fewer batch rows per program shorten each program's step (A: 4 rows 20.9 us, 2 rows 17.2, 1 row
            # 16.1), as long as every program stays resident. Not at seq > 1: Triton compiles the time loop
            # at one row into 4x the instructions, with spills.
            while block_b > 1 and -(-batch // (block_b // 2)) * programs <= sms:
                block_b //= 2
    # Relay: the one-warp plan with the projection done row by row by helper programs as the previous layer
    # completes each row, instead of shared by all programs between two grid barriers; CUDA only by default.
    relay_rows = min(full_rows, small_rows)
    relay_tiles = -(-batch // relay_rows)
    relay_programs = dirs * (1 + max(1, min(RELAY_HELPERS // dirs, sms // relay_tiles // dirs - 1)))
    relay_bytes = 4 * seq_len * batch * packed.num_layers * (cols + 2 * dirs * hp)  # gx and two output sets
    relay_fits = (r_tiles == 1 and hp <= 32 and packed.input_padded <= 64 and relay_bytes <= RELAY_MAX_BYTES
                  and relay_tiles * relay_programs <= sms)
    relay = (on_cuda and path == "single-launch" and not pipeline and num_warps == 1 and relay_fits
             and overrides.get("relay", True))
    if relay:
        programs = relay_programs
    plan = Plan(path, block_b, r_tiles, programs, block_m, block_c, 32 if hp <= 64 else 16, num_warps,
                poll_h=poll_h, proj_by_unit=proj_by_unit, pipeline=pipeline, relay=relay)
    if overrides:
        if overrides.get("pipeline") and not plan.pipeline:
            if not pipeline_fits or path != "single-launch":
                raise ValueError("the layer pipeline does not fit this size (weights per thread or residency)")
            overrides = {"programs": packed.num_layers * dirs, "r_tiles": 1, "block_b": pipe_block_b,
                         "num_warps": pipe_warps, **overrides}
        if overrides.get("relay") and not plan.relay:
            if not relay_fits or path != "single-launch":
                raise ValueError("the relay kernel does not fit this size (hidden or input over 32/64, "
                                 "workspace or residency)")
            overrides = {"programs": relay_programs if on_cuda else 1, "r_tiles": 1, "block_b": relay_rows,
                         "num_warps": 1, "pipeline": False, **overrides}
        plan = Plan(**{**plan.__dict__, **overrides})
    return plan


# ---- launcher ------------------------------------------------------------------------------------


def _new_outputs(packed: PackedRNN, seq_len: int, batch: int, state_shape: tuple, device: Any,
                 dtype: Any) -> tuple:
    """output (in PyTorch's layout) with its time and batch strides, hn, and cn (hn again for a GRU)."""
    y_width = packed.num_directions * packed.hidden_size
    out = torch.empty((batch, seq_len, y_width) if packed.batch_first else (seq_len, batch, y_width),
                      device=device, dtype=dtype)
    stride_ot, stride_ob = (out.stride(1), out.stride(0)) if packed.batch_first else (out.stride(0), out.stride(1))
    hn = torch.empty(state_shape, device=device, dtype=dtype)
    cn = torch.empty(state_shape, device=device, dtype=dtype) if packed.kind == "lstm" else hn
    return out, stride_ot, stride_ob, hn, cn


def _launch(kernel: Any, grid: tuple[int, int, int], ws: dict, num_warps: int, *args: Any, **constexprs: Any) -> None:
    """kernel[grid](*args, **constexprs, num_warps=num_warps); eager CUDA calls reuse the compiled kernel's
    launcher, cached in `ws`.

    Triton's per-call binding and specialization cost ~20 of the ~50 us of host time a launch takes (H100
    machine, Triton 3.6), and an eager call's GPU time includes it. The cache key holds what Triton
    specializes on: the constexprs, each int argument itself, and each tensor's dtype and 16-byte alignment.
    Launches under CUDA-graph capture, and the first of each key, take Triton's own path. The arguments after
    `args` in the kernel's signature are its constexprs; the grid has three entries.
    """
    if interpreting() or torch.cuda.is_current_stream_capturing():
        kernel[grid](*args, **constexprs, num_warps=num_warps)
        return
    key = (kernel.fn.__name__, grid, num_warps, *constexprs.values(),
           *((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a for a in args))
    launchers = ws.setdefault("launchers", {})
    entry = launchers.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **constexprs, num_warps=num_warps)
        launchers[key] = (compiled[grid], tuple(constexprs[p.name] for p in kernel.params[len(args):]))
    else:
        run, tail = entry
        run(*args, *tail)


def rnn_forward(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None = None,
                c0: torch.Tensor | None = None, plan: Plan | None = None,
                workspace: dict[str, Any] | None = None) -> tuple[torch.Tensor, ...]:
    """Run the whole stack: (output, hn[, cn]) with nn.LSTM / nn.GRU's shapes, in x's dtype.

    x is [T, B, I] (or [B, T, I] when packed.batch_first) on packed's device; h0/c0 [L*D, B, H] or None.
    `workspace` (a dict kept by the caller) lets repeated calls of one shape reuse the scratch buffers and, for
    eager CUDA calls, the compiled kernel's launcher (see _launch).
    """
    if x.dim() != 3:
        raise ValueError(f"expected a 3-d input, got shape {tuple(x.shape)}")
    if packed.batch_first:
        batch, seq_len, width = x.shape
        stride_xb, stride_xt, stride_xk = x.stride()
    else:
        seq_len, batch, width = x.shape
        stride_xt, stride_xb, stride_xk = x.stride()
    if width != packed.input_size:
        raise ValueError(f"input has {width} features, the model expects {packed.input_size}")
    if seq_len == 0 or batch == 0:
        raise ValueError("empty input (sequence length or batch 0)")
    lstm = packed.kind == "lstm"
    hidden, layers, dirs, hp = packed.hidden_size, packed.num_layers, packed.num_directions, packed.hidden_padded
    rt = dirs * hp
    state_shape = (layers * dirs, batch, hidden)
    for name, st in (("h0", h0), ("c0", c0)):
        if st is not None and tuple(st.shape) != state_shape:
            raise ValueError(f"{name} has shape {tuple(st.shape)}, expected {state_shape}")
    has_state = h0 is not None
    if lstm and has_state != (c0 is not None):
        raise ValueError("give both h0 and c0, or neither")
    plan = plan or plan_for(packed, seq_len, batch)
    device, dtype = x.device, x.dtype
    ws = workspace if workspace is not None else {}
    fast_math = plan.fast_math and not interpreting()
    # real k of the sums: hidden units per direction, input features of layer 0
    h_sum, i_sum = (hidden, packed.input_size) if plan.exact_k else (hp, packed.input_padded)
    batch_tiles = -(-batch // plan.block_b)
    out, stride_ot, stride_ob, hn, cn = _new_outputs(packed, seq_len, batch, state_shape, device, dtype)
    inputs = (x, stride_xt, stride_xb, stride_xk, h0.contiguous() if has_state else hn,
              c0.contiguous() if (has_state and lstm) else hn, packed.w_ih0, packed.w_ihr, packed.w_hh, packed.bias)
    outputs = (out, stride_ot, stride_ob, out.stride(2), hn, cn, seq_len, batch, packed.input_size, hidden, layers)
    key = (seq_len, batch, plan)
    if plan.pipeline:
        if ws.get("key") != key:
            ws.clear()
            # two sets of layer-output slabs, poisoned once here; each launch re-poisons the set it did not use
            ws.update(key=key,
                      seq=torch.full((max(1, 2 * (layers - 1) * seq_len * batch * rt),), -1, device=device,
                                     dtype=torch.int32),
                      count=torch.zeros(batch_tiles * layers * dirs, device=device, dtype=torch.int32))
        # one program per (batch tile, layer, direction), no fill between launches
        _launch(_rnn_pipe_kernel, (batch_tiles, layers * dirs, 1), ws, plan.num_warps,
                *inputs, ws["seq"].view(torch.float32), ws["count"], *outputs,
                IS_LSTM=lstm, D=dirs, HP=hp, K0=packed.input_padded, RT=rt, BLOCK_B=plan.block_b,
                HAS_STATE=has_state, FAST_MATH=fast_math, K_CHAIN=plan.k_chain,
                # sums over padding too: with the padding skipped, 5-8 % of repeated seed-model calls returned
                # NaN (a poisoned input word read after its poll; H100, Triton 3.6), not understood
                I_SUM=packed.input_padded, H_SUM=hp)
        return (out, hn, cn) if lstm else (out, hn)
    if plan.relay:
        if ws.get("key") != key:
            ws.clear()
            # two sets of layer outputs, poisoned once here (each launch poisons the other set); launch and
            # row counters, zero between launches
            ws.update(key=key,
                      gx=torch.empty(layers * seq_len * batch * 4 * rt, device=device, dtype=torch.float32),
                      seq=torch.full((2 * layers * seq_len * batch * rt,), -1, device=device, dtype=torch.int32),
                      count=torch.zeros(batch_tiles * (plan.programs + layers * dirs), device=device,
                                        dtype=torch.int32))
        _launch(_rnn_relay_kernel, (batch_tiles, plan.programs, 1), ws, plan.num_warps,
                *inputs, ws["gx"], ws["seq"].view(torch.float32), ws["count"], *outputs,
                IS_LSTM=lstm, D=dirs, HP=hp, K0=packed.input_padded, RT=rt, BLOCK_B=plan.block_b,
                HAS_STATE=has_state, ON_GPU=not interpreting(), FAST_MATH=fast_math, K_CHAIN=plan.k_chain,
                I_SUM=i_sum, H_SUM=h_sum)
        return (out, hn, cn) if lstm else (out, hn)
    grid_sync = plan.path == "single-launch" and plan.programs > 1
    # polling h needs one output slab per layer, poisoned before every launch; capped at 64 MB
    poll_h = (grid_sync and plan.r_tiles > 1 and plan.poll_h
              and layers * seq_len * batch * rt * 4 <= POLL_H_MAX_BYTES)
    seq_slabs = layers if poll_h else 2
    if ws.get("key") != key:
        ws.clear()
        ws.update(key=key,
                  gx=torch.empty(seq_len * batch * 4 * rt, device=device, dtype=torch.float32),
                  seq=torch.empty(seq_slabs * seq_len * batch * rt, device=device, dtype=torch.float32),
                  c_state=torch.empty(layers * dirs * batch * hp if plan.path == "multi-launch" else 1,
                                      device=device, dtype=torch.float32),
                  sync=torch.zeros(batch_tiles * (1 + dirs), device=device, dtype=torch.int32))
    if grid_sync:
        ws["sync"].zero_()
    if poll_h:
        ws["seq"].view(torch.int32).fill_(-1)

    def launch(programs: int, layer_begin: int, layer_end: int, step_begin: int, step_end: int,
               do_proj: bool, do_rec: bool) -> None:
        _launch(
            _rnn_stack_kernel, (batch_tiles, programs, 1), ws, plan.num_warps,
            *inputs, ws["gx"], ws["seq"], ws["c_state"], ws["sync"], *outputs,
            layer_begin, layer_end, step_begin, step_end,
            IS_LSTM=lstm, D=dirs, HP=hp, K0=packed.input_padded, RT=rt,
            BLOCK_B=plan.block_b, R_TILES=plan.r_tiles, BLOCK_R=hp // plan.r_tiles,
            BLOCK_M=plan.block_m, BLOCK_C=plan.block_c,
            BLOCK_K0=min(plan.block_k, packed.input_padded), BLOCK_KR=min(plan.block_k, rt),
            HAS_STATE=has_state, DO_PROJ=do_proj, DO_REC=do_rec,
            GRID_SYNC=grid_sync and programs > 1, C_IN_MEMORY=plan.path == "multi-launch",
            H_IN_REGISTERS=plan.r_tiles == 1 and plan.path == "single-launch", POLL_H=poll_h, SEQ_SLABS=seq_slabs,
            PROJ_BY_UNIT=do_proj and do_rec and plan.proj_by_unit,
            DOT_PRECISION="ieee", ON_GPU=not interpreting(), FAST_MATH=fast_math, K_CHAIN=plan.k_chain,
            H_SUM=h_sum,
        )

    if plan.path == "single-launch":
        launch(plan.programs, 0, layers, 0, seq_len, True, True)
    else:
        m_items = -(-seq_len * plan.block_b // plan.block_m) * (4 * rt // plan.block_c)
        for layer in range(layers):
            launch(m_items, layer, layer + 1, 0, seq_len, True, False)
            for step in range(seq_len):
                launch(dirs * plan.r_tiles, layer, layer + 1, step, step + 1, False, True)
    return (out, hn, cn) if lstm else (out, hn)

