"""The stack kernel: every layer of a batch tile in one launch (shared projection, row-tiled recurrence with
grid barriers or polled h), and its multi-launch use (one launch per (layer, step))."""

from __future__ import annotations

import triton
import triton.language as tl

from .cell import _cell, _store_out, _store_state
from .sync import _grid_barrier, _pin, _wait_h


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
