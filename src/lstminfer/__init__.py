"""lstminfer: export, verify and benchmark LSTM/GRU inference on every backend, side by side."""

from typing import Any

from lstminfer.errors import UserError

__version__ = "0.1.0"
__all__ = ["Session", "UserError", "__version__", "accelerate", "clear_tuned_plans", "fused_rnn", "pack_rnn",
           "tune_plan"]


def __getattr__(name: str) -> Any:
    # Session pulls in numpy and the model readers: imported on first use, so `import lstminfer` stays light.
    if name == "Session":
        from lstminfer.measure.stream import Session

        return Session
    if name == "accelerate":  # torch and the kernels' entry points: imported on first use too
        from lstminfer.fused_layers import accelerate

        return accelerate
    if name in ("fused_rnn", "pack_rnn"):  # the fused kernels' entry points; triton imported on first use
        from lstminfer import kernels

        return getattr(kernels, name)
    if name in ("tune_plan", "clear_tuned_plans"):  # plan tuning for the fused kernels (kernels/rnn/tune.py)
        from lstminfer.kernels import rnn

        return getattr(rnn, name)
    raise AttributeError(f"module 'lstminfer' has no attribute {name!r}")
