"""The sizes of an LSTM/GRU stack (ModelSpec), the presets, and building the PyTorch module from them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from lstminfer.errors import UserError

KINDS = ("lstm", "gru")


@dataclass(frozen=True)
class ModelSpec:
    """The sizes of an nn.LSTM / nn.GRU stack (PyTorch's own argument names and meanings)."""

    kind: str = "lstm"
    input_size: int = 10
    hidden_size: int = 20
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown model kind {self.kind!r}: use lstm or gru")
        for name in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.proj_size < 0:
            raise UserError(f"proj_size must be >= 0, got {self.proj_size}")
        if self.proj_size and self.kind != "lstm":
            raise UserError("proj_size is an LSTM option: drop --proj-size for a GRU")
        if self.proj_size >= self.hidden_size:
            raise UserError(f"proj_size ({self.proj_size}) must be smaller than hidden_size ({self.hidden_size})")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Width of h (proj_size when projecting)."""
        return self.proj_size or self.hidden_size

    @property
    def input_names(self) -> list[str]:
        return ["input", "h0", "c0"] if self.kind == "lstm" else ["input", "h0"]

    @property
    def output_names(self) -> list[str]:
        return ["output", "hn", "cn"] if self.kind == "lstm" else ["output", "hn"]

    def shapes(self, seq_len: int, batch: int) -> dict[str, tuple[int, ...]]:
        """Shapes of every input and output at one (seq_len, batch) point."""
        x = (batch, seq_len, self.input_size) if self.batch_first else (seq_len, batch, self.input_size)
        y_width = self.num_directions * self.state_size
        y = (batch, seq_len, y_width) if self.batch_first else (seq_len, batch, y_width)
        states = self.num_layers * self.num_directions
        out = {"input": x, "h0": (states, batch, self.state_size), "output": y, "hn": (states, batch, self.state_size)}
        if self.kind == "lstm":
            out["c0"] = out["cn"] = (states, batch, self.hidden_size)
        return out

    @property
    def num_parameters(self) -> int:
        """Weights and biases, counted as nn.LSTM / nn.GRU allocates them."""
        gates = (4 if self.kind == "lstm" else 3) * self.hidden_size
        total = 0
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else self.num_directions * self.state_size
            per_direction = gates * (width + self.state_size) + (2 * gates if self.bias else 0)
            per_direction += self.proj_size * self.hidden_size
            total += self.num_directions * per_direction
        return total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        parts = [f"{self.num_layers}-layer ", "bi-" if self.bidirectional else "", self.kind.upper(),
                 f" {self.input_size}->{self.hidden_size}"]
        if self.proj_size:
            parts.append(f" proj {self.proj_size}")
        if self.batch_first:
            parts.append(" batch_first")
        if not self.bias:
            parts.append(" no bias")
        return "".join(parts)


@dataclass(frozen=True)
class Preset:
    spec: ModelSpec
    seq_len: int
    batch: int
    about: str


PRESETS: dict[str, Preset] = {
    # The tutorial's model and shapes exactly: nn.LSTM(10, 20, num_layers=10, bidirectional=True), x [1, 3, 10].
    "seed": Preset(ModelSpec("lstm", 10, 20, 10, bidirectional=True), seq_len=1, batch=3,
                   about="the tutorial's 10-layer bidirectional LSTM 10->20, seq 1, batch 3"),
    # Speech encoder style: 80 log-mel features, 2 bidirectional layers of 512.
    "speech": Preset(ModelSpec("lstm", 80, 512, 2, bidirectional=True, batch_first=True), seq_len=200, batch=8,
                     about="speech encoder: 2-layer bidirectional LSTM 80->512, batch_first, 2 s of 10 ms frames"),
    # Time-series forecaster: 1-layer GRU over 32 features.
    "timeseries": Preset(ModelSpec("gru", 32, 128, 1, batch_first=True), seq_len=96, batch=32,
                         about="time-series forecaster: 1-layer GRU 32->128, batch_first, 96 steps"),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[name]


# Bytes per weight that a run holds at once: the float32 module (4), its float64 copy for the reference (8),
# the exported ONNX file's copy in memory (4) and ONNX Runtime's session (4), and the file's bytes (4).
BYTES_PER_WEIGHT = 24


def estimated_bytes(spec: ModelSpec, seq_len: int, batch: int) -> int:
    """A lower bound of the memory a run at (seq_len, batch) needs: the weights' copies, and the input and every
    layer's output in float64 (the reference) and in float32 (the runtime under test)."""
    per_step = spec.input_size + spec.num_layers * spec.num_directions * spec.state_size
    return spec.num_parameters * BYTES_PER_WEIGHT + (8 + 4) * seq_len * batch * per_step


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (MemAvailable), or None where it does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def check_memory(spec: ModelSpec, seq_len: int, batch: int, available: int | None = None) -> None:
    """Refuse, in one line, sizes that cannot be allocated here (before torch tries and aborts)."""
    available = available_memory() if available is None else available
    need = estimated_bytes(spec, seq_len, batch)
    if available is not None and need > available:
        raise UserError(f"{spec.describe()} at seq {seq_len} x batch {batch} needs at least {_gib(need)} of memory "
                        f"({spec.num_parameters:.3g} weights, kept in float32 and float64) and {_gib(available)} is "
                        "available here; choose smaller sizes (--hidden-size, --num-layers, --seq-len, --batch)")


def build_module(spec: ModelSpec, seed: int = 0) -> Any:
    """A float32, eval-mode nn.LSTM / nn.GRU with weights drawn from torch.manual_seed(seed)."""
    import torch

    torch.manual_seed(seed)
    kwargs = dict(num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                  batch_first=spec.batch_first, bias=spec.bias)
    if spec.kind == "lstm":
        module = torch.nn.LSTM(spec.input_size, spec.hidden_size, proj_size=spec.proj_size, **kwargs)
    else:
        module = torch.nn.GRU(spec.input_size, spec.hidden_size, **kwargs)
    return module.eval()


def spec_of_module(module: Any) -> ModelSpec | None:
    """The ModelSpec of a plain nn.LSTM / nn.GRU, or of a module whose only recurrent child is one; else None."""
    import torch

    rnn = module
    if not isinstance(module, (torch.nn.LSTM, torch.nn.GRU)):
        children = [m for m in module.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.GRU))]
        if len(children) != 1 or any(not isinstance(m, (torch.nn.LSTM, torch.nn.GRU)) and list(m.parameters(False))
                                     for m in module.modules() if m is not module):
            return None
        rnn = children[0]
    return ModelSpec(
        kind="lstm" if isinstance(rnn, torch.nn.LSTM) else "gru",
        input_size=rnn.input_size, hidden_size=rnn.hidden_size, num_layers=rnn.num_layers,
        bidirectional=rnn.bidirectional, batch_first=rnn.batch_first, bias=rnn.bias,
        proj_size=getattr(rnn, "proj_size", 0),
    )


def call_rnn(module: Any, kind: str, args: list[Any]) -> list[Any]:
    """Call an nn.LSTM/GRU-like module with (x, hx) and flatten the result to [output, hn(, cn)]."""
    x, *state = args
    if not state:
        out = module(x)
    elif kind == "lstm":
        out = module(x, (state[0], state[1]))
    else:
        out = module(x, state[0])
    output, hidden = out
    if isinstance(hidden, (tuple, list)):
        return [output, *hidden]
    return [output, hidden]
