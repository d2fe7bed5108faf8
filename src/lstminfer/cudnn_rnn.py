"""cuDNN RNN weights in one buffer for every dtype cuDNN runs, bf16 included.

nn.LSTM / nn.GRU's flatten_parameters() does nothing for bf16: it only flattens dtypes in
torch.backends.cudnn.CUDNN_TENSOR_DTYPES (fp16, fp32, fp64 in torch 2.11-2.13), while cuDNN runs bf16 RNNs. A
bf16 module then warns "RNN module weights are not part of single contiguous chunk of memory" and cuDNN
compacts every weight into a new buffer on every call (docs/fused_kernel.md, "Sizes handed to cuDNN").
flatten_rnn calls the same ATen op as flatten_parameters for those dtypes too.
"""

from __future__ import annotations

from typing import Any


def in_one_chunk(module: Any) -> bool:
    """Whether every weight of an nn.RNNBase lies in one storage (what cuDNN wants)."""
    return len({w.untyped_storage().data_ptr() for w in module._flat_weights}) == 1


def flatten_rnn(module: Any) -> bool:
    """flatten_parameters(), and for dtypes it skips (bf16) the ATen op it would call; True if the weights now
    lie in one buffer. CPU modules and modules of mixed dtypes are left as they are (False)."""
    import torch
    from torch.backends.cudnn import rnn

    module.flatten_parameters()
    weights = module._flat_weights
    if in_one_chunk(module):
        return True
    if (not all(isinstance(w, torch.Tensor) and w.is_cuda for w in weights)
            or len({w.dtype for w in weights}) != 1 or not torch.backends.cudnn.is_available()):
        return False
    with torch.no_grad():
        torch._cudnn_rnn_flatten_weight(weights, (4 if module.bias else 2) + (1 if module.proj_size else 0),
                                        module.input_size, rnn.get_cudnn_mode(module.mode), module.hidden_size,
                                        module.proj_size, module.num_layers, module.batch_first,
                                        bool(module.bidirectional))
    return in_one_chunk(module)
