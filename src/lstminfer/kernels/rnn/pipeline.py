"""The layer pipeline: one program per (layer, direction), all its weights in registers, input polled."""

from __future__ import annotations

import triton
import triton.language as tl

from .cell import _cell, _load_state, _store_out, _store_state
from .stack import _rows_times


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
