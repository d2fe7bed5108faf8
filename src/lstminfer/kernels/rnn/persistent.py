"""The persistent kernel: the recurrence of one layer (both directions) in one launch, for hidden 256-1024.

Per layer the launcher first computes the input projection of every time step as one GEMM (``gx = x @ W_ih^T +
b``, fp32 accumulation, in launch.py), poisons the layer output slab, then launches ``_rnn_persistent_kernel``
once. Every program owns ``BLOCK_N`` hidden units (``4 * BLOCK_N`` interleaved gate columns) of one direction
and one batch group for the whole sequence. It loads their W_hh^T columns once (RESIDENT: the compiler keeps
the loop-invariant slice in registers, in the layout the product needs; fp32 with more than 8 rows streams
them in BLOCK_K chunks every step instead), reads its h0/c0 and writes its h0 into the slab's initial slot.
A step is

1. read the step's projection, which does not depend on the other programs, so it is in flight during the
   wait;
2. wait until every word of the direction's previous h is written: the slab is filled with all-ones words
   before the launch (a NaN no GPU computes: its NaNs are canonical), and a word that is no longer poison
   holds its final value (data as flag: no counter, no fence). One vector load of the whole h per poll,
   and the words it returns are the h that is multiplied: one L2 round trip once the data is there;
3. ``pre = gx + h @ W_hh^T[:, own columns]``: a batched ``tl.dot`` over K_SPLIT slices of k (one a warp,
   summed after; tensor cores for fp16/bf16 with fp32 accumulation), or for fp32 with few rows an IEEE
   multiply-and-sum over the real rows;
4. the LSTM/GRU cell in fp32, and the stores of h: into the slab (the other programs' input next step and
   the next layer's GEMM input; in the weights' dtype), the user's output and hn/cn.

The slab has T + 2 time slots: slot t + 1 holds h at time t; slot 0 the forward direction's initial h and
slot T + 1 the backward one's, written by the programs that own those units. Every slot is written once per
launch, so nobody overwrites a word someone may still have to read.

Waiting needs every program resident: the plan launches at most one program per multiprocessor (several
one-warp programs where asked), the launcher checks the compiled kernel's registers against that before the
first launch, and a wait that gives up (``spin_limit`` polls, about a second) sets the error word, which the
launcher turns into an exception (KernelStalled) instead of returning the numbers. Under
``TRITON_INTERPRET=1`` programs run one after another, so there the grid is one program that starts every
unit, then runs, step by step, every unit's step in turn (the state through memory, W loaded every step),
and each h it reads is checked once for poison.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .cell import _cell, _store_out


@triton.jit
def _poll_h(words_ptr, row0, B, row_stride, KH, spin_limit, err_ptr,
            BLOCK_B: tl.constexpr, HP: tl.constexpr, POLL_ROWS: tl.constexpr, ON_GPU: tl.constexpr):
    """Wait until no word of h[row0 : row0 + BLOCK_B, :KH] is the poison -1 (all ones). On CUDA: re-read the
    whole block (one vector load per POLL_ROWS rows, all in flight together) until it is clean or spin_limit
    polls have passed, then report a give-up in err_ptr. Under the interpreter: check once."""
    offs_k = tl.arange(0, HP)
    k_ok = offs_k < KH
    bad = 1
    spins = 0
    while (bad > 0) & (spins < spin_limit):
        bad = 0
        for r0 in tl.static_range(0, BLOCK_B, POLL_ROWS):
            rows = row0 + r0 + tl.arange(0, POLL_ROWS)
            words = tl.load(words_ptr + rows[:, None] * row_stride + offs_k[None, :],
                            mask=(rows < B)[:, None] & k_ok[None, :], other=0, volatile=True)
            bad += tl.sum(tl.sum((words == -1).to(tl.int32), axis=1), axis=0)
        spins += 1
        if not ON_GPU:
            spins = spin_limit
    if bad > 0:
        tl.atomic_max(err_ptr, 1)


@triton.jit
def _poll_words(ptrs, mask, spin_limit, err_ptr, ON_GPU: tl.constexpr):
    """The words at ptrs once none is the poison -1: re-read all of them (one vector load, every word in flight
    together) until none is, or spin_limit reads have passed; a give-up (or, under the interpreter, a poisoned
    word at all) sets err_ptr. The words returned are the data."""
    words = tl.load(ptrs, mask=mask, other=0, volatile=True)
    bad = tl.max((words == -1).to(tl.int32))
    if ON_GPU:
        spins = 1
        while (bad > 0) & (spins < spin_limit):
            words = tl.load(ptrs, mask=mask, other=0, volatile=True)
            bad = tl.max((words == -1).to(tl.int32))
            spins += 1
    if bad > 0:
        tl.atomic_max(err_ptr, 1)
    return words


@triton.jit
def _load_w_resident(w_rows, KH, HP: tl.constexpr, COLS: tl.constexpr, K_SPLIT: tl.constexpr,
                     USE_DOT: tl.constexpr):
    """A program's W_hh^T columns [HP, COLS] (rows from KH on: 0), for the whole layer: split along k into
    [K_SPLIT, HP / K_SPLIT, COLS] for a batched tl.dot (one slice of k per warp), else [HP, COLS]."""
    cols = tl.arange(0, COLS)
    if USE_DOT:
        KS: tl.constexpr = HP // K_SPLIT
        k = tl.arange(0, K_SPLIT)[:, None, None] * KS + tl.arange(0, KS)[None, :, None]
        return tl.load(w_rows + k * (HP * 4) + cols[None, None, :], mask=k < KH, other=0.0)
    else:
        k = tl.arange(0, HP)[:, None]
        return tl.load(w_rows + k * (HP * 4) + cols[None, :], mask=k < KH, other=0.0)


@triton.jit
def _times_w_resident(words_ptr, prev, rows, b_ok, w, KH, spin_limit, err_ptr, slab_dtype: tl.constexpr,
                      RT: tl.constexpr, HP: tl.constexpr, K_SPLIT: tl.constexpr, USE_DOT: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, ON_GPU: tl.constexpr):
    """h_prev @ W for on-chip W: the previous h polled as words, which once clean are h itself (one round
    trip); tl.dot batched over k slices and summed (tensor cores for fp16/bf16), or multiply-and-sum."""
    if USE_DOT:
        KS: tl.constexpr = HP // K_SPLIT
        k = tl.arange(0, K_SPLIT)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
        ptrs = words_ptr + prev + rows[None, :, None] * RT + k
        h = _poll_words(ptrs, b_ok[None, :, None] & (k < KH), spin_limit, err_ptr, ON_GPU)
        h = h.to(slab_dtype, bitcast=True)
        return tl.sum(tl.dot(h.to(w.dtype), w, input_precision=DOT_PRECISION), axis=0)
    else:
        k = tl.arange(0, HP)[None, :]
        ptrs = words_ptr + prev + rows[:, None] * RT + k
        h = _poll_words(ptrs, b_ok[:, None] & (k < KH), spin_limit, err_ptr, ON_GPU)
        h = h.to(slab_dtype, bitcast=True).to(tl.float32)
        return tl.sum(h[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)


@triton.jit
def _times_w_streamed(words_ptr, slab_ptr, prev, row0, rows, b_ok, w_rows, B, KH, spin_limit, err_ptr,
                      RT: tl.constexpr, HP: tl.constexpr, COLS: tl.constexpr, BLOCK_B: tl.constexpr,
                      BLOCK_K: tl.constexpr, POLL_ROWS: tl.constexpr, USE_DOT: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, ON_GPU: tl.constexpr):
    """h_prev @ W with W read from memory in chunks of BLOCK_K (v10; for fp32 with more than 8 rows): wait
    for h, then a K loop."""
    _poll_h(words_ptr + prev, row0, B, RT, KH, spin_limit, err_ptr, BLOCK_B, HP,
            POLL_ROWS, ON_GPU)
    cols = tl.arange(0, COLS)
    acc = tl.zeros((BLOCK_B, COLS), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        hk = tl.load(slab_ptr + prev + rows[:, None] * RT + offs_k[None, :], mask=b_ok[:, None], other=0.0,
                     cache_modifier=".cg")
        wk = tl.load(w_rows + offs_k[:, None] * (HP * 4) + cols[None, :])
        if USE_DOT:
            acc = tl.dot(hk.to(wk.dtype), wk, acc, input_precision=DOT_PRECISION)
        else:
            acc += tl.sum(hk.to(tl.float32)[:, :, None] * wk.to(tl.float32)[None, :, :], axis=1)
    return acc


@triton.jit
def _persistent_step(s, unit, w, h_old, c, gx_ptr, w_hh_ptr, slab_ptr, words_ptr, state_ptr, err_ptr,
                     out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                     T, B, H, layer, is_last, spin_limit, KH,
                     IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, RT: tl.constexpr,
                     R_TILES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                     POLL_ROWS: tl.constexpr, USE_DOT: tl.constexpr, RESIDENT: tl.constexpr,
                     K_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, ON_GPU: tl.constexpr,
                     FAST_MATH: tl.constexpr):
    """Step s of one unit (batch group, direction, row tile): returns its new (h, c) [BLOCK_B, BLOCK_N] in
    fp32. w is its on-chip W_hh^T slice when RESIDENT; h_old (GRU) and c (LSTM) its state before the step."""
    C: tl.constexpr = RT * 4
    COLS: tl.constexpr = BLOCK_N * 4
    cols = tl.arange(0, COLS)
    group = unit // (D * R_TILES)
    d = (unit // R_TILES) % D
    n0 = (unit % R_TILES) * BLOCK_N
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = rows < B
    offs_n = n0 + tl.arange(0, BLOCK_N)
    t = tl.where(d == 0, s, T - 1 - s).to(tl.int64)
    read_slot = tl.where(d == 0, t, t + 2)  # time t - 1 (forward) or t + 1 (backward), plus one
    # independent of the other programs: in flight during the wait
    gx = tl.load(gx_ptr + (t * B + rows[:, None]) * C + d * HP * 4 + n0 * 4 + cols[None, :],
                 mask=b_ok[:, None], other=0.0)
    prev = read_slot * B * RT + d * HP
    if RESIDENT:
        acc = _times_w_resident(words_ptr, prev, rows, b_ok, w, KH, spin_limit, err_ptr,
                                slab_ptr.dtype.element_ty, RT, HP, K_SPLIT, USE_DOT, DOT_PRECISION, ON_GPU)
    else:
        acc = _times_w_streamed(words_ptr, slab_ptr, prev, group * BLOCK_B, rows, b_ok,
                                w_hh_ptr + (layer * D + d) * HP * (HP * 4) + n0 * 4, B, KH, spin_limit, err_ptr,
                                RT, HP, COLS, BLOCK_B, BLOCK_K, POLL_ROWS, USE_DOT, DOT_PRECISION, ON_GPU)
    h, c = _cell(acc + gx, c, h_old, IS_LSTM, BLOCK_B, BLOCK_N, FAST_MATH)
    # h of time t, for the other programs (next step) and the next layer
    tl.store(slab_ptr + ((t + 1) * B + rows[:, None]) * RT + d * HP + offs_n[None, :],
             h.to(slab_ptr.dtype.element_ty), mask=b_ok[:, None])
    n_ok = offs_n < H
    if is_last:
        _store_out(out_ptr, t, stride_ot, stride_ob, stride_ok, d, H, rows, offs_n, h,
                   b_ok[:, None] & n_ok[None, :])
    if s == T - 1:
        final = ((layer * D + d) * B + rows[:, None]) * H + offs_n[None, :]
        final_ok = b_ok[:, None] & n_ok[None, :]
        tl.store(hn_ptr + final, h.to(hn_ptr.dtype.element_ty), mask=final_ok)
        if IS_LSTM:
            tl.store(cn_ptr + final, c.to(cn_ptr.dtype.element_ty), mask=final_ok)
    return h, c


@triton.jit
def _own_state(state_ptr, unit, B, D: tl.constexpr, HP: tl.constexpr, R_TILES: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """Offsets of a unit's h in state [2, D, B, HP] (c: + D * B * HP) and its row mask."""
    group = unit // (D * R_TILES)
    d = (unit // R_TILES) % D
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = (unit % R_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    return (d * B + rows[:, None]) * HP + offs_n[None, :], (rows < B)[:, None]


@triton.jit
def _initial_state(h0_ptr, c0_ptr, slab_ptr, T, B, H, layer, unit,
                   IS_LSTM: tl.constexpr, D: tl.constexpr, RT: tl.constexpr, HP: tl.constexpr,
                   R_TILES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, HAS_STATE: tl.constexpr):
    """A unit's h0 and c0 [BLOCK_B, BLOCK_N] in fp32 (zeros without state; padding units 0), its h0 also
    written into the slab's initial slot (0 forward, T + 1 backward) for the other programs, which poll it
    like any step's h."""
    group = unit // (D * R_TILES)
    d = (unit // R_TILES) % D
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = (unit % R_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    b_ok = rows < B
    h = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    c = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    if HAS_STATE:
        state = ((layer * D + d) * B + rows[:, None]) * H + offs_n[None, :]
        ok = b_ok[:, None] & (offs_n < H)[None, :]
        h = tl.load(h0_ptr + state, mask=ok, other=0.0).to(tl.float32)
        if IS_LSTM:
            c = tl.load(c0_ptr + state, mask=ok, other=0.0).to(tl.float32)
    slot = tl.where(d == 0, 0, T + 1).to(tl.int64)
    tl.store(slab_ptr + (slot * B + rows[:, None]) * RT + d * HP + offs_n[None, :],
             h.to(slab_ptr.dtype.element_ty), mask=b_ok[:, None])
    return h, c


@triton.jit
def _rnn_persistent_kernel(
    gx_ptr, w_hh_ptr, slab_ptr, state_ptr, err_ptr, h0_ptr, c0_ptr,
    out_ptr, stride_ot, stride_ob, stride_ok,
    hn_ptr, cn_ptr,
    T, B, H, layer, is_last, units, spin_limit,
    IS_LSTM: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, RT: tl.constexpr,
    R_TILES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    KH: tl.constexpr, POLL_ROWS: tl.constexpr, WORD_BITS: tl.constexpr, USE_DOT: tl.constexpr,
    RESIDENT: tl.constexpr, K_SPLIT: tl.constexpr, STATE_IN_REGISTERS: tl.constexpr, HAS_STATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ON_GPU: tl.constexpr, FAST_MATH: tl.constexpr,
):
    """One layer's recurrence. Units are (batch group, direction, row tile); on CUDA one program a unit, which
    loads its W_hh^T slice once (RESIDENT), starts from h0/c0 (writing its h0 into the slab's initial slot)
    and runs every step; under the interpreter one program first starts every unit, then runs the steps in
    order, every unit's in turn (W loaded every step, the state through memory).

    gx [T, B, C] fp32 (C = RT * 4); w_hh [L, D, HP, HP * 4]; slab [T + 2, B, RT] in the weights' dtype,
    poisoned by the launcher; state [2, D, B, HP] fp32 (h, c) scratch; err one int32; h0/c0 [L * D, B, H]
    (HAS_STATE). Hidden units from KH on (whole padding tiles) are neither computed nor read.
    """
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if WORD_BITS == 32:
        words = slab_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    else:
        words = slab_ptr.to(tl.pointer_type(tl.int16), bitcast=True)
    COLS: tl.constexpr = BLOCK_N * 4
    if ON_GPU:
        for unit in range(pid, units, programs):
            d = (unit // R_TILES) % D
            w_rows = w_hh_ptr + (layer * D + d) * HP * (HP * 4) + (unit % R_TILES) * BLOCK_N * 4
            h, c = _initial_state(h0_ptr, c0_ptr, slab_ptr, T, B, H, layer, unit, IS_LSTM, D, RT, HP, R_TILES,
                                  BLOCK_N, BLOCK_B, HAS_STATE)
            if RESIDENT:
                w = _load_w_resident(w_rows, KH, HP, COLS, K_SPLIT, USE_DOT)
            else:
                w = 0.0
            # the state in registers for the whole layer (measured no slower: docs/fused_kernel.md v13), or
            # through memory every step
            own, own_ok = _own_state(state_ptr, unit, B, D, HP, R_TILES, BLOCK_N, BLOCK_B)
            if not STATE_IN_REGISTERS:
                tl.store(state_ptr + own, h, mask=own_ok)
                tl.store(state_ptr + D * B * HP + own, c, mask=own_ok)
                tl.debug_barrier()
            for s in range(0, T):
                if not STATE_IN_REGISTERS:
                    h = tl.load(state_ptr + own, mask=own_ok, other=0.0)
                    c = tl.load(state_ptr + D * B * HP + own, mask=own_ok, other=0.0)
                h, c = _persistent_step(s, unit, w, h, c, gx_ptr, w_hh_ptr, slab_ptr, words, state_ptr, err_ptr,
                                        out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                                        T, B, H, layer, is_last, spin_limit, KH,
                                        IS_LSTM, D, HP, RT, R_TILES, BLOCK_N, BLOCK_B, BLOCK_K, POLL_ROWS, USE_DOT,
                                        RESIDENT, K_SPLIT, DOT_PRECISION, ON_GPU, FAST_MATH)
                if not STATE_IN_REGISTERS:
                    tl.store(state_ptr + own, h, mask=own_ok)
                    tl.store(state_ptr + D * B * HP + own, c, mask=own_ok)
                    tl.debug_barrier()  # the next step's loads of the state may be other threads' stores
    else:
        for unit in range(pid, units, programs):
            h, c = _initial_state(h0_ptr, c0_ptr, slab_ptr, T, B, H, layer, unit, IS_LSTM, D, RT, HP, R_TILES,
                                  BLOCK_N, BLOCK_B, HAS_STATE)
            own, own_ok = _own_state(state_ptr, unit, B, D, HP, R_TILES, BLOCK_N, BLOCK_B)
            tl.store(state_ptr + own, h, mask=own_ok)
            tl.store(state_ptr + D * B * HP + own, c, mask=own_ok)
        for s in range(0, T):
            for unit in range(pid, units, programs):
                d = (unit // R_TILES) % D
                w_rows = w_hh_ptr + (layer * D + d) * HP * (HP * 4) + (unit % R_TILES) * BLOCK_N * 4
                if RESIDENT:
                    w = _load_w_resident(w_rows, KH, HP, COLS, K_SPLIT, USE_DOT)
                else:
                    w = 0.0
                # one program runs every unit: the state goes through memory
                own, own_ok = _own_state(state_ptr, unit, B, D, HP, R_TILES, BLOCK_N, BLOCK_B)
                h = tl.load(state_ptr + own, mask=own_ok, other=0.0)
                c = tl.load(state_ptr + D * B * HP + own, mask=own_ok, other=0.0)
                h, c = _persistent_step(s, unit, w, h, c, gx_ptr, w_hh_ptr, slab_ptr, words, state_ptr, err_ptr,
                                        out_ptr, stride_ot, stride_ob, stride_ok, hn_ptr, cn_ptr,
                                        T, B, H, layer, is_last, spin_limit, KH,
                                        IS_LSTM, D, HP, RT, R_TILES, BLOCK_N, BLOCK_B, BLOCK_K, POLL_ROWS, USE_DOT,
                                        RESIDENT, K_SPLIT, DOT_PRECISION, ON_GPU, FAST_MATH)
                tl.store(state_ptr + own, h, mask=own_ok)
                tl.store(state_ptr + D * B * HP + own, c, mask=own_ok)
