"""Weights in the kernels' padded, transposed, gate-interleaved layout (pack_rnn)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

# fp16/bf16 weights as float32 tensors of the rounded values (see pack_rnn): off, 16-bit measured faster
WIDE_WEIGHTS = False


@dataclass
class PackedRNN:
    """An nn.LSTM / nn.GRU's weights in the kernel's padded, transposed layout, on one device, in one dtype.

    Columns c = (direction * HP + hidden unit) * 4 + gate slot, so one hidden unit's four gates sit side by
    side. Slots: LSTM i, f, g, o; GRU r, z, "W_hn h + b_hn", "W_in x + b_in" (r multiplies the third).
    w_ih0 [K0, C], w_ihr [max(L-1, 1), D*HP, C], w_hh [L, D, HP, HP*4] with values of `dtype` (stored as float32
    with wide weights, see pack_rnn); bias [L, C] float32
    (b_ih + b_hh folded where PyTorch adds them). `source`: the module's own parameters (detached, not copied;
    PyTorch's names) and its `bias` flag, for the calls the plan hands to cuDNN (cudnn.py); `cudnn_module` caches
    the module built from them on first use.
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
    source: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    cudnn_module: Any = field(default=None, repr=False, compare=False)

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
                     put(w_hh, dtype, (layers, dirs, hp, hp * 4)), put(bias, torch.float32, (layers, c)),
                     source={"bias": module.bias, "dropout": 0.0,
                             "weights": {n: getattr(module, n).detach() for n in module._flat_weights_names}})
