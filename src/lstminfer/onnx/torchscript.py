"""TorchScript files: recognising, loading (torch.jit.load only, never a pickle), calling."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.onnx.load import _first_line

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


# ---- recognising and loading ------------------------------------------------------------------------------
def zip_kind(path: str | Path) -> str | None:
    """"torchscript" (torch.jit.save: the archive holds the module's code), "checkpoint" (torch.save: only
    pickled data), or None (not a zip, or neither)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/" in f"/{n}" for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "checkpoint"
    return None


def is_torchscript_path(path: str | Path) -> bool:
    """A TorchScript suffix, or a zip that is not named .onnx; never a torch.save checkpoint."""
    path = Path(path)
    if zip_kind(path) == "checkpoint":
        return False
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return True
    return path.suffix.lower() != ".onnx" and path.is_file() and zipfile.is_zipfile(path)


def load_torchscript(path: str | Path, device: str = "cpu") -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a directory, not a model file: give the file inside it" if path.is_dir()
                        else f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a TorchScript file: it is not the zip archive torch.jit.save writes")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:
        first = _first_line(err).split(". ")[0]
        raise UserError(f"{path} is not a TorchScript file torch.jit.load can read (a torch.save checkpoint? run it "
                        f"with --model FILE.py:factory --weights FILE): {first}") from err
    return module.eval()


# ---- calling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScriptArg:
    """One argument of a TorchScript forward: its name and TorchScript type (``Tensor``, ``int``, ...)."""

    name: str
    type: str

    @property
    def scalar_dtype(self) -> str | None:
        """The numpy dtype of a Python-scalar argument (None for tensors and anything else)."""
        return {"int": "int64", "float": "float32", "bool": "bool"}.get(self.type)


def script_args(module: Any) -> list[ScriptArg]:
    schema = module.forward.schema
    return [ScriptArg(a.name, str(a.type)) for a in schema.arguments[1:]]  # skip self


def flatten_outputs(value: Any) -> list[Any]:
    """A forward's result (tensor, tuple, list, dict, nested) as a flat list, in torch.onnx's output order."""
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    return [value]


def _cast(arg: ScriptArg, value: Any) -> Any:
    """A feed as forward's schema wants it: Python int / float / bool for scalar arguments (a tensor there
    works in TorchScript only by accident of the schema), tensors as they are."""
    if arg.scalar_dtype is None:
        return value
    item = value.item() if hasattr(value, "item") else value
    return {"int": int, "float": float, "bool": bool}[arg.type](item)


def script_inputs(args: Sequence[ScriptArg], input_names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
    """The TorchScript forward's positional arguments from feeds named like the model's inputs."""
    if set(input_names) <= {a.name for a in args}:
        missing = [a.name for a in args if a.name not in feeds]
        if missing:
            raise UserError(f"TorchScript forward argument(s) {', '.join(missing)} are not inputs of the ONNX file; "
                            "export with every argument as an input")
        return [_cast(a, feeds[a.name]) for a in args]
    return [_cast(a, feeds[n]) for a, n in zip(args, input_names)]  # the ONNX export's inputs, positionally


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """torch's default dtype for tensors a forward creates itself (``torch.zeros(...)`` for its state), restored
    after: process-wide, so never left switched."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
