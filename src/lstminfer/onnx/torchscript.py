"""TorchScript files: recognising, loading (torch.jit.load only, never a pickle), calling."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstminfer.errors import UserError
from lstminfer.onnx.load import _first_line

if TYPE_CHECKING:
    from lstminfer.model.file import FileModel

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


# ---- TorchScript ----------------------------------------------------------------------------------------
def is_torchscript_path(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return True
    return path.suffix.lower() != ".onnx" and path.is_file() and zipfile.is_zipfile(path)


def load_torchscript(path: str | Path, device: str = "cpu") -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a TorchScript file: it is not the zip archive torch.jit.save writes")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:
        first = _first_line(err).split(". ")[0]
        raise UserError(f"{path} is not a TorchScript file torch.jit.load can read (a torch.save checkpoint? run it "
                        f"with --model FILE.py:factory --weights FILE): {first}") from err
    return module.eval()


def flatten_outputs(value: Any) -> list[Any]:
    """A forward's result (tensor, tuple, list, dict, nested) as a flat list, in torch.onnx's output order."""
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    return [value]


def script_arg_names(module: Any) -> list[str]:
    schema = module.forward.schema
    return [a.name for a in schema.arguments[1:]]  # skip self


def script_inputs(model: FileModel, feeds: dict[str, Any]) -> list[Any]:
    """The TorchScript forward's positional arguments from feeds named like the model's inputs."""
    names = model.input_names
    if set(names) <= set(model.script_args):
        missing = [a for a in model.script_args if a not in feeds]
        if missing:
            raise UserError(f"TorchScript forward argument(s) {', '.join(missing)} are not inputs of the ONNX file; "
                            "export with every argument as an input")
        return [feeds[a] for a in model.script_args]
    return [feeds[n] for n in names]  # the ONNX export's inputs, positionally
