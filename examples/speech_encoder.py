"""A speech encoder: a strided 1-d convolution over log-mel frames (halves the frame rate), two bidirectional
LSTM layers, a linear projection.

    lstminfer verify --model examples/speech_encoder.py:speech_encoder --shapes feats:4x100x40
"""

import torch
from torch import nn


class SpeechEncoder(nn.Module):
    def __init__(self, mels: int = 40, hidden: int = 48, dim: int = 32):
        super().__init__()
        self.subsample = nn.Sequential(nn.Conv1d(mels, 64, 3, stride=2, padding=1), nn.ReLU())
        self.rnn = nn.LSTM(64, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.proj = nn.Linear(2 * hidden, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [batch, frames, mels] -> [batch, ceil(frames / 2), dim]."""
        x = self.subsample(feats.transpose(1, 2)).transpose(1, 2)
        out, _ = self.rnn(x)
        return self.proj(out)


def speech_encoder() -> nn.Module:
    """The model alone: give its input shape with --shapes feats:BATCHxFRAMESx40."""
    torch.manual_seed(0)
    return SpeechEncoder().eval()
