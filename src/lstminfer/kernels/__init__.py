"""Triton kernels (no CLI, no I/O). Import the modules here only where triton is installed: it is the `gpu` extra."""
