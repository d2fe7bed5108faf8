"""The relay kernel: one-warp units run the recurrence of every layer while helpers project the next layer's
input row by row as the previous layer completes it."""

from __future__ import annotations

import triton
import triton.language as tl

from .cell import _load_state, _store_state
from .stack import _load_gx, _rows_times, _step
from .sync import _arrive, _load_relaxed, _wait_count


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
