"""The shared pieces of every kernel's time step: activations, the LSTM/GRU cell, state loads and stores."""

from __future__ import annotations

import triton
import triton.language as tl


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
