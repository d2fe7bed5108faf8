"""``lstminfer.accelerate(model)``: the model with every nn.LSTM / nn.GRU the fused kernel can run swapped for a
drop-in that runs it, the rest untouched.  (This module is not named ``accelerate``: importing a submodule
``lstminfer.accelerate`` would replace the function ``lstminfer.accelerate`` with the module.)

    fast = lstminfer.accelerate(model, precision="fp16")   # a copy; `model` is not changed
    print(fast.lstminfer_summary)                          # what was replaced, and why anything was not
    with torch.inference_mode():
        y = fast(x.cuda())

The drop-in (``FusedRNN``) keeps the layer's parameters, state_dict keys and attributes, and its forward
contract (batch_first, hx given or not, returned shapes and dtypes); its weights
are packed once per device (again after ``.to()`` or ``load_state_dict``).  It computes in `precision` and
returns the input's dtype.  Inputs the kernel does not take run through the original layer's forward: a
PackedSequence, an unbatched 2-d input, float64, a CPU tensor without ``TRITON_INTERPRET=1``, an input that
needs gradients (the kernel has no backward).  The kernel call is the custom op ``lstminfer::fused_rnn``
(``torch.library.custom_op``), opaque to ``torch.compile``, and a CUDA graph captures it like any kernel.
"""

from __future__ import annotations

import copy
import importlib.util
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# scratch buffers of the kernel, one dict per (weights, input shape, state given): a CUDA graph captured for
# one shape keeps pointing at its own buffers while other shapes run; dropped with the packed weights
_WORKSPACES: dict[tuple, dict] = {}


# a stream's state inputs and the buffers their next values go to (state_into): a FusedRNN called with such an
# input writes its new state there itself (forward_into), once
_STATE_INTO: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


class state_into:
    """For one step of a stream whose model takes and returns its state: each (state input, buffer) pair says
    where the new value of that state goes.  A FusedRNN called with those inputs as hx writes its new state into
    the buffers (forward_into: no copy after the model), the first time only; the caller copies whatever the
    model returns that is not already its buffer.  The buffers must not be the inputs (measure/stream_engines.py
    keeps two sets).  A class, not a generator: entered per chunk."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        self.pairs = pairs

    def __enter__(self) -> None:
        _STATE_INTO.update({id(src): (src, dest) for src, dest in self.pairs})

    def __exit__(self, *exc: object) -> None:
        _STATE_INTO.clear()


def _routed(state: torch.Tensor | None) -> torch.Tensor | None:
    """The buffer that state_into names for this state input (taken: one use), else None."""
    entry = _STATE_INTO.get(id(state)) if state is not None else None
    if entry is None or entry[0] is not state:
        return None
    del _STATE_INTO[id(state)]
    return entry[1]


def _forget_workspaces(weights_ptr: int) -> None:
    for key in [k for k in _WORKSPACES if k[0] == weights_ptr]:
        del _WORKSPACES[key]


@dataclass(frozen=True)
class Replacement:
    path: str  # the layer's name in the model ("" for the model itself)
    layer: str
    replaced: bool
    reason: str = ""


@dataclass(frozen=True)
class Summary:
    """What accelerate() did to each recurrent layer."""

    precision: str
    layers: tuple[Replacement, ...]

    @property
    def replaced(self) -> list[str]:
        return [r.path for r in self.layers if r.replaced]

    def __str__(self) -> str:
        if not self.layers:
            return "accelerate: no nn.LSTM / nn.GRU in the model; nothing replaced"
        lines = [f"accelerate ({self.precision}): {len(self.replaced)} of {len(self.layers)} recurrent layers "
                 "run the fused kernel"]
        for r in self.layers:
            what = "fused" if r.replaced else f"kept: {r.reason}"
            lines.append(f"  {r.path or '(model)'}: {r.layer} -> {what}")
        return "\n".join(lines)


# ---- the custom op ------------------------------------------------------------------------------------------
@torch.library.custom_op("lstminfer::fused_rnn", mutates_args=())
def fused_rnn_op(x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, w_ih0: torch.Tensor,
                 w_ihr: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor,
                 meta: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole stack through the fused kernel; meta = (is_lstm, input_size, hidden, layers, directions,
    batch_first, hidden_padded, input_padded).  Returns output, hn, cn (cn empty for a GRU)."""
    from lstminfer.kernels.rnn import PackedRNN

    lstm, input_size, hidden, layers, dirs, batch_first, hp, k0 = meta
    packed = PackedRNN(kind="lstm" if lstm else "gru", input_size=input_size, hidden_size=hidden, num_layers=layers,
                       num_directions=dirs, batch_first=bool(batch_first), hidden_padded=hp, input_padded=k0,
                       dtype=x.dtype, w_ih0=w_ih0, w_ihr=w_ihr, w_hh=w_hh, bias=bias)
    outs = _kernel_call(packed, x, h0, c0)
    cn = outs[2] if lstm else outs[1].new_empty(0)
    return outs[0], outs[1], cn


def _kernel_call(packed: Any, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None,
                 hn_out: torch.Tensor | None = None, cn_out: torch.Tensor | None = None) -> tuple:
    """rnn_forward with the scratch workspace of this (weights, input shape, state given)."""
    from lstminfer.kernels.rnn import rnn_forward

    key = (packed.w_hh.data_ptr(), x.device, tuple(x.shape), h0 is not None)
    return rnn_forward(packed, x, h0, c0, workspace=_WORKSPACES.setdefault(key, {}), hn_out=hn_out, cn_out=cn_out)


@fused_rnn_op.register_fake
def _fused_rnn_shapes(x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, w_ih0: torch.Tensor,
                      w_ihr: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor,
                      meta: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lstm, _, hidden, layers, dirs, batch_first, _, _ = meta
    batch, seq = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    out = x.new_empty((batch, seq, dirs * hidden) if batch_first else (seq, batch, dirs * hidden))
    hn = x.new_empty((layers * dirs, batch, hidden))
    return out, hn, x.new_empty((layers * dirs, batch, hidden) if lstm else (0,))


# ---- the drop-in layer -------------------------------------------------------------------------------------
class FusedRNN(nn.Module):
    """An nn.LSTM / nn.GRU whose forward runs the fused kernel (see the module docstring).

    It holds the layer's own parameters under their own names (state_dict keys do not change) and answers
    every other attribute from the layer (hidden_size, batch_first, ...).  It is not an nn.RNNBase, so
    torch.compile traces its forward (dynamo refuses to trace into RNN modules) and sees the custom op.
    """

    def __init__(self, layer: nn.Module, precision: str):
        from lstminfer.kernels.rnn import interpreting

        super().__init__()
        for name, param in layer.named_parameters(recurse=False):
            self.register_parameter(name, param)
        object.__setattr__(self, "original", layer)  # not a submodule: its parameters are registered here
        self.precision = precision
        self._cpu = interpreting()  # the kernel runs on CPU tensors only under Triton's interpreter
        self._repack()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "original"), name)

    def extra_repr(self) -> str:
        return f"{self.original.extra_repr()}, fused {self.precision}"

    @torch.compiler.disable
    def _repack(self) -> None:
        from lstminfer.kernels.rnn import pack_rnn

        weight = self.weight_hh_l0
        self._fused = (pack_rnn(self.original, weight.device, PRECISIONS[self.precision])
                       if weight.is_cuda or self._cpu else None)
        if self._fused is not None:
            weakref.finalize(self._fused.w_hh, _forget_workspaces, self._fused.w_hh.data_ptr())

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:  # .to(), .cuda(), .half(): the same
        out = super()._apply(fn, *args, **kwargs)                # Parameter objects, new data: pack again
        self._repack()
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._repack()

    def _fallback(self, input: Any) -> bool:
        packed = self._fused
        return (isinstance(input, PackedSequence) or input.dim() != 3 or packed is None
                or input.dtype not in PRECISIONS.values() or input.device != packed.device
                or (input.requires_grad and torch.is_grad_enabled()))

    def forward(self, input: Any, hx: Any = None) -> Any:
        if _STATE_INTO and hx is not None:  # a stream step that names where this state goes (state_into)
            into = self._state_into(hx)
            if into is not None:
                return self.forward_into(input, hx, *into)
        if self._fallback(input):
            return self.original(input, hx)
        packed = self._fused
        lstm = packed.kind == "lstm"
        h0 = c0 = None
        if hx is not None:
            h0, c0 = hx if lstm else (hx, None)
            h0 = h0.to(packed.dtype)
            c0 = c0.to(packed.dtype) if c0 is not None else None
        meta = [int(lstm), packed.input_size, packed.hidden_size, packed.num_layers, packed.num_directions,
                int(packed.batch_first), packed.hidden_padded, packed.input_padded]
        out, hn, cn = fused_rnn_op(input.to(packed.dtype), h0, c0, packed.w_ih0, packed.w_ihr, packed.w_hh,
                                   packed.bias, meta)
        dtype = input.dtype
        if lstm:
            return out.to(dtype), (hn.to(dtype), cn.to(dtype))
        return out.to(dtype), hn.to(dtype)

    @torch.compiler.disable
    def _state_into(self, hx: Any) -> tuple | None:
        if self.mode != "LSTM":
            h_out = _routed(hx)
            return None if h_out is None else (h_out, None)
        h_out, c_out = _routed(hx[0]), _routed(hx[1])
        if h_out is None or c_out is None:
            return None
        return h_out, c_out

    @torch.compiler.disable
    def forward_into(self, input: Any, hx: Any, h_out: torch.Tensor, c_out: torch.Tensor | None = None) -> Any:
        """forward(input, hx) that leaves the new state in the caller's buffers h_out (and c_out for an LSTM),
        returned as the new state: a stream's state buffers written by the kernel itself, with no copy after
        it (measure/stream_engines.py; a CUDA graph of a chunk has a node less per state tensor).  The buffers
        must not share memory with hx (the kernel may still read h0 while it writes hn; a stream swaps two
        buffers per step).  Where the kernel cannot write them (a fallback, a dtype other than the kernel's)
        the new state is copied into them.  Not for torch.compile (it calls the kernel outside the custom op)."""
        packed = self._fused
        lstm = self.mode == "LSTM"
        direct = (hx is not None and not self._fallback(input) and input.dtype == packed.dtype
                  and h_out.dtype == packed.dtype and (not lstm or c_out.dtype == packed.dtype))
        if not direct:
            out, new = self.forward(input, hx)
            h_out.copy_(new[0] if lstm else new)
            if lstm:
                c_out.copy_(new[1])
            return out, ((h_out, c_out) if lstm else h_out)
        h0, c0 = hx if lstm else (hx, None)
        outs = _kernel_call(packed, input, h0.to(packed.dtype), c0.to(packed.dtype) if lstm else None, h_out,
                            c_out if lstm else None)
        return outs[0], ((h_out, c_out) if lstm else h_out)


def fused_workspaces(module: nn.Module) -> list[dict]:
    """The kernel's scratch workspaces that the FusedRNN layers of `module` have used, one per input shape.

    A persistent launch reports a stall in its workspace's error word (``"err"``); the eager call checks it at
    once, but under CUDA-graph capture it cannot (nothing runs yet), so whoever replays the graph checks these
    words where it synchronizes anyway (``lstminfer.kernels.rnn.raise_if_stalled``; the session copies the
    words down inside the graph, measure/stream_engines.py)."""
    pointers = {m._fused.w_hh.data_ptr() for m in module.modules() if isinstance(m, FusedRNN) and m._fused}
    return [ws for key, ws in _WORKSPACES.items() if key[0] in pointers]


def recurrent(module: nn.Module) -> bool:
    """An nn.LSTM / nn.GRU, or the drop-in that stands in for one."""
    return isinstance(module, (nn.LSTM, nn.GRU, FusedRNN))


def _why_not(layer: nn.Module) -> str:
    """Why the fused kernel cannot stand in for this layer ("" when it can)."""
    if type(layer) not in (nn.LSTM, nn.GRU):
        return f"{type(layer).__name__} subclasses {type(layer).__mro__[1].__name__} (its forward may differ)"
    if getattr(layer, "proj_size", 0):
        return "proj_size (LSTM projections) is not supported by the fused kernel"
    if importlib.util.find_spec("triton") is None:
        return 'triton is not installed (pip install "lstminfer[gpu]")'
    return ""


def _describe(layer: nn.Module) -> str:
    extra = "".join(f", {k}=True" for k in ("bidirectional", "batch_first") if getattr(layer, k))
    return f"{type(layer).__name__}({layer.input_size}, {layer.hidden_size}, num_layers={layer.num_layers}{extra})"


def accelerate(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """A copy of `model` for inference (eval mode, no gradients) in which every nn.LSTM / nn.GRU the fused
    kernel can run is a FusedRNN computing in `precision`; ``.lstminfer_summary`` says which."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate takes a torch.nn.Module, not {type(model).__name__}")
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    rows = []
    for path, layer in list(fast.named_modules()):
        if not isinstance(layer, (nn.LSTM, nn.GRU)):
            continue
        why = _why_not(layer)
        rows.append(Replacement(path, _describe(layer), not why, why))
        if not why:
            fused = FusedRNN(layer, precision)
            if path:
                parent, _, attr = path.rpartition(".")
                setattr(fast.get_submodule(parent), attr, fused)
            else:
                fast = fused
    fast.lstminfer_summary = Summary(precision, tuple(rows))
    return fast


def fusable(model: nn.Module) -> tuple[bool, str]:
    """(True, "") when accelerate() would give at least one recurrent layer of `model` to the kernel."""
    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.GRU))]
    if not layers:
        return False, "the model has no nn.LSTM / nn.GRU"
    reasons = [f"{path or '(model)'}: {why}" for path, m in layers if (why := _why_not(m))]
    if len(reasons) == len(layers):
        return False, "no recurrent layer can run the fused kernel (" + "; ".join(reasons) + ")"
    return True, ""
