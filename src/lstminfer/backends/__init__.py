"""Backends: one module each, behind the Runner interface in base.py."""

from lstminfer.backends.base import BACKENDS, Runner, list_backends, runner_class, select_backends

__all__ = ["BACKENDS", "Runner", "list_backends", "runner_class", "select_backends"]
