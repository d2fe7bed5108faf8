"""The calls the plan hands to cuDNN (Plan.kernel "cudnn"): sizes no fused kernel serves well (plan.CUDNN_HANDOFF).

The module is rebuilt once from the parameters pack_rnn kept (PackedRNN.source: PyTorch's own tensors, so b_ih
and b_hh stay separate and the numbers are exactly torch's), in the packed dtype on the packed device, with
flattened weights (cuDNN would otherwise compact them on every call), and cached on the PackedRNN. It runs in a
CUDA graph capture like any cuDNN RNN (the fused-graph backend captures it after its eager warm-up).
"""

from __future__ import annotations

import torch

from ...cudnn_rnn import flatten_rnn
from .launch import _NoTF32
from .packing import PackedRNN


def cudnn_module(packed: PackedRNN) -> torch.nn.Module:
    """The nn.LSTM / nn.GRU that serves packed's handed-off calls (built on first use, then cached)."""
    if packed.cudnn_module is None:
        source = packed.source
        cls = torch.nn.LSTM if packed.kind == "lstm" else torch.nn.GRU
        module = cls(packed.input_size, packed.hidden_size, packed.num_layers, bias=source["bias"],
                     batch_first=packed.batch_first, bidirectional=packed.num_directions == 2)
        module = module.to(device=packed.device, dtype=packed.dtype).eval()
        with torch.no_grad():
            for name, value in source["weights"].items():
                getattr(module, name).copy_(value)
        flatten_rnn(module)  # bf16 too (flatten_parameters skips it: cuDNN would compact every call)
        packed.cudnn_module = module
    return packed.cudnn_module


def cudnn_forward(packed: PackedRNN, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
                  hn_out: torch.Tensor | None = None, cn_out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """rnn_forward's (output, hn[, cn]) through cuDNN; hn / cn copied into hn_out / cn_out where given."""
    module = cudnn_module(packed)
    lstm = packed.kind == "lstm"
    hx = None if h0 is None else ((h0, c0) if lstm else h0)
    with torch.no_grad(), _NoTF32():  # fp32 is IEEE fp32 here as in the fused kernels (TF32: errors ~1e-3)
        out, state = module(x, hx)
    hn, cn = state if lstm else (state, state)
    if hn_out is not None:
        hn = hn_out.copy_(hn)
    if cn_out is not None:
        cn = cn_out.copy_(cn)
    return (out, hn, cn) if lstm else (out, hn)
