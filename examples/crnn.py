"""A CRNN text-line recognizer: convolutions over a 32-pixel-high image, a bidirectional LSTM over the columns,
a linear head (per-column class scores for CTC decoding).

    lstminfer run --model examples/crnn.py:crnn
"""

import torch
from torch import nn


class CRNN(nn.Module):
    def __init__(self, classes: int = 37, hidden: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x W -> 16 x W/2
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 8 x W/4
            nn.Conv2d(32, 32, (8, 1)), nn.ReLU(),  # the height collapses to 1: one feature vector per column
        )
        self.rnn = nn.LSTM(32, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [batch, 1, 32, width] -> scores [width / 4, batch, classes]."""
        columns = self.features(image).squeeze(2).permute(2, 0, 1)  # [time, batch, channels]
        out, _ = self.rnn(columns)
        return self.head(out)


def crnn() -> tuple[nn.Module, torch.Tensor]:
    """The model and an example input: 2 images 32 x 64 (16 time steps)."""
    torch.manual_seed(0)
    return CRNN().eval(), torch.randn(2, 1, 32, 64)
