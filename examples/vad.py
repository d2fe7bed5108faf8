"""A streaming voice-activity detector: a frame-wise convolutional front end, one LSTM 128->128 whose state is
carried from one 32 ms chunk to the next, and a speech-probability head.

The forward calls its LSTM without state, as models written for whole utterances do; `lstminfer stream` and
`lstminfer.Session` carry the LSTM's state between chunks themselves:

    lstminfer stream --model examples/vad.py:vad --chunk 1 --chunk-ms 32
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

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [batch, time, features] -> speech probability [batch, time, 1]."""
        x = self.front(frames.transpose(1, 2)).transpose(1, 2)
        out, _ = self.rnn(x)
        return torch.sigmoid(self.head(out))


def vad() -> tuple[nn.Module, torch.Tensor]:
    """The model and an example input: one stream of 8 frames (one frame per 32 ms chunk)."""
    torch.manual_seed(0)
    return VAD().eval(), torch.randn(1, 8, 40)
