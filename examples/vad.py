"""A streaming voice-activity detector: a frame-wise convolutional front end, one LSTM 128->128 whose state is
carried from one 32 ms chunk to the next, and a speech-probability head.

`vad` calls its LSTM without state, as models written for whole utterances do: `lstminfer stream` and
`lstminfer.Session` then carry the LSTM's state between chunks themselves (torch and fused backends):

    lstminfer stream --model examples/vad.py:vad --chunk 1 --chunk-ms 32

`vad_with_state` takes and returns the state, so its ONNX export has the state as inputs and outputs
(`state_0` -> `state_0_out`, ...) and streams on ONNX Runtime too:

    lstminfer export --model examples/vad.py:vad_with_state -o vad.onnx
    lstminfer stream vad.onnx --chunk 1 --chunk-ms 32
"""

import torch
from torch import nn


class VAD(nn.Module):
    def __init__(self, features: int = 40, hidden: int = 128):
        super().__init__()
        # kernel size 1: each frame alone, so a stream of chunks computes exactly what one pass does
        self.front = nn.Sequential(nn.Conv1d(features, hidden, 1), nn.ReLU())
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, frames: torch.Tensor, state: tuple | None = None):
        """frames [batch, time, features] -> speech probability [batch, time, 1] (and the new (h, c) when
        the state (h, c), each [1, batch, hidden], is given)."""
        x = self.front(frames.transpose(1, 2)).transpose(1, 2)
        out, new_state = self.rnn(x, state)
        prob = torch.sigmoid(self.head(out))
        return prob if state is None else (prob, new_state)


def vad() -> tuple[nn.Module, torch.Tensor]:
    """The model and an example input: one stream of 8 frames (one frame per 32 ms chunk)."""
    torch.manual_seed(0)
    return VAD().eval(), torch.randn(1, 8, 40)


def vad_with_state() -> tuple[nn.Module, tuple]:
    """The same model with the state as an input: (frames, (h, c))."""
    model, frames = vad()
    return model, (frames, (torch.zeros(1, 1, 128), torch.zeros(1, 1, 128)))
