"""The public entry point: fused_rnn, an nn.LSTM / nn.GRU forward through the fused kernels."""

from __future__ import annotations

from typing import Any

import torch

from .launch import rnn_forward
from .packing import PackedRNN, pack_rnn

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def fused_rnn(module_or_weights: Any, x: torch.Tensor, hx: Any = None, precision: str | None = None,
              workspace: dict | None = None, tune: bool = False) -> tuple[Any, Any]:
    """nn.LSTM / nn.GRU forward through the fused kernel, with the module's own calling convention.

    `module_or_weights`: a plain nn.LSTM / nn.GRU (its weights are packed on every call: pack once with
    `pack_rnn` and pass the PackedRNN for repeated calls). `x` on the weights' device, `[T, B, I]` or
    `[B, T, I]` (batch_first); `hx` None, h0, or (h0, c0). Returns `(output, (hn, cn))` for an LSTM and
    `(output, hn)` for a GRU, in x's dtype. `precision` ("fp32", "fp16", "bf16") casts x and the weights; by
    default x's dtype decides. Unbatched (2-d) inputs are not accepted. `tune`: run with the plan tune_plan chose
    for these sizes on this GPU (tuning on the first call of a shape: seconds of compiles and timing; then cached in
    memory and on disk, docs/fused_kernel.md "Tuning the plan (`tune`)"); a one-line ValueError off a CUDA device.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision] if precision else x.dtype
    if isinstance(module_or_weights, PackedRNN):
        packed = module_or_weights
        if packed.dtype != dtype or packed.device != x.device:
            raise ValueError(f"packed weights are {packed.dtype} on {packed.device}; input is {dtype} on {x.device}")
    else:
        if type(module_or_weights) not in (torch.nn.LSTM, torch.nn.GRU):
            raise TypeError(f"fused_rnn takes a plain nn.LSTM / nn.GRU or a PackedRNN, "
                            f"not {type(module_or_weights).__name__}")
        packed = pack_rnn(module_or_weights, x.device, dtype)
    x = x.to(dtype)
    h0 = c0 = None
    if hx is not None:
        if packed.kind == "lstm":
            h0, c0 = hx
            c0 = c0.to(dtype)
        else:
            h0 = hx
        h0 = h0.to(dtype)
    plan = None
    if tune:
        from .tune import tune_plan

        plan = tune_plan(packed, x, h0, c0).plan
    outs = rnn_forward(packed, x, h0, c0, plan=plan, workspace=workspace)
    return (outs[0], (outs[1], outs[2])) if packed.kind == "lstm" else (outs[0], outs[1])
