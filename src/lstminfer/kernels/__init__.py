"""Triton kernels (no CLI, no I/O). Triton is the `gpu` extra: the public entry points below import the kernels
on first use, so `import lstminfer.kernels` works without it."""

from typing import Any

__all__ = ["fused_rnn", "pack_rnn"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lstminfer.kernels import rnn

        return getattr(rnn, name)
    raise AttributeError(f"module 'lstminfer.kernels' has no attribute {name!r}")
