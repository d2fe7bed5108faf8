"""lstminfer: export, verify and benchmark LSTM/GRU inference on every backend, side by side."""

from lstminfer.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
