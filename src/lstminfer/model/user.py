"""A user's own PyTorch module: ``--model file.py:factory`` or ``package.module:factory``, ``--weights``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError


def _import_factory(ref: str) -> Any:
    """`path/to/file.py:factory` or `package.module:factory` -> the callable."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"--model {ref!r}: expected FILE.py:factory or package.module:factory")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"--model: file {target} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"lstminfer_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as err:
            raise UserError(f"--model: importing {target} failed: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise UserError(f"--model: cannot import module {target!r} ({err}); check the name and sys.path") from err
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"--model: {target} has no callable {attr!r}")
    return factory


def load_user_module(ref: str, weights: str | None = None) -> Any:
    """Call a user's factory, check it returns an nn.Module, and load a state_dict (weights_only) into it."""
    import torch

    factory = _import_factory(ref)
    try:
        module = factory()
    except Exception as err:
        raise UserError(f"--model: calling {ref} failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"--model: {ref} returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(module, weights)
    return module.float().eval()


def load_weights(module: Any, weights: str) -> None:
    import torch

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights: file {weights} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"--weights: {weights} is not a state_dict torch.load can read safely "
                        f"(weights_only=True): {str(err).splitlines()[0]}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"--weights: {weights} holds a {type(state).__name__}, not a state_dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise UserError(f"--weights: {weights} does not fit the model: {first}") from err
