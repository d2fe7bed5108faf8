"""A user's own PyTorch module: ``--model file.py:factory`` or ``package.module:factory``, ``--weights``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError

# torch.save's legacy (non-zip) format is a pickle, whose first byte is the PROTO opcode.
PICKLE_MAGIC = b"\x80"


def _failed(what: str, err: BaseException) -> UserError:
    if isinstance(err, SystemExit):  # a script's `sys.exit()` at import would otherwise end lstminfer silently
        return UserError(f"--model: {what} called sys.exit({err.code!r}); a model file must define its factory "
                         "without exiting (guard script code with `if __name__ == \"__main__\":`)")
    first = (str(err).strip().splitlines() or [""])[0]
    return UserError(f"--model: {what} failed: {type(err).__name__}: {first}")


@contextlib.contextmanager
def _user_code(what: str) -> Iterator[None]:
    """Errors (and sys.exit) raised by the user's code become one line naming what was being done."""
    try:
        yield
    except (Exception, SystemExit) as err:
        raise _failed(what, err) from err


def _import_factory(ref: str) -> Any:
    """`path/to/file.py:factory` or `package.module:factory` -> the callable."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"--model {ref!r}: expected FILE.py:factory or package.module:factory")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"--model: {target} is a directory, not a .py file" if path.is_dir()
                            else f"--model: file {target} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"lstminfer_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        with _user_code(f"importing {target}"):
            mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise UserError(f"--model: cannot import module {target!r} ({err}); check the name and sys.path") from err
        except (Exception, SystemExit) as err:
            raise _failed(f"importing {target}", err) from err
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"--model: {target} has no callable {attr!r}")
    return factory


def load_user_module(ref: str, weights: str | None = None) -> Any:
    """Call a user's factory, check it returns an nn.Module, and load a state_dict (weights_only) into it."""
    import torch

    factory = _import_factory(ref)
    with _user_code(f"calling {ref}"):
        module = factory()
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"--model: {ref} returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(module, weights)
    return module.float().eval()


def load_weights(module: Any, weights: str) -> None:
    import torch

    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights: {weights} is a directory, not a file" if path.is_dir()
                        else f"--weights: file {weights} does not exist")
    with open(path, "rb") as f:
        first_byte = f.read(1)
    if not zipfile.is_zipfile(path) and first_byte != PICKLE_MAGIC:
        raise UserError(f"--weights: {weights} is not a file torch.save writes (neither its zip archive nor a "
                        "pickle); save the weights with torch.save(model.state_dict(), PATH)")
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
