"""Loading an ONNX file: a wire-format check first, then onnx.load and the checker, each failure one line."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError

# ---- loading, with one-line errors ---------------------------------------------------------------------
# Top-level fields of onnx.ModelProto: ir_version 1 ... functions 25 (onnx.proto3).
_MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise EOFError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _wire_check(data: bytes) -> str | None:
    """Walk ModelProto's top-level protobuf fields: "not" (not an ONNX model), "truncated", or None (fine)."""
    pos = 0
    seen = 0
    while pos < len(data):
        try:
            tag, pos = _read_varint(data, pos)
            number, wire = tag >> 3, tag & 7
            if number not in _MODEL_FIELDS or wire not in (0, 2):
                return "not" if seen == 0 else None  # let protobuf decide on odd later fields
            if wire == 0:
                _, pos = _read_varint(data, pos)
            else:
                length, pos = _read_varint(data, pos)
                if pos + length > len(data):
                    return "truncated"
                pos += length
        except EOFError:
            return "truncated"
        except ValueError:
            return "not" if seen == 0 else "truncated"
        seen += 1
    return None


def load_onnx(path: str | Path, check: bool = True) -> Any:
    """The ModelProto of `path`, or a UserError naming what is wrong with the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is a directory, not a model file: give the file inside it" if path.is_dir()
                        else f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{path} is empty, not an ONNX model")
    if zipfile.is_zipfile(path):
        from lstminfer.onnx.torchscript import zip_kind

        if zip_kind(path) == "checkpoint":
            raise UserError(f"{path} is a torch.save checkpoint (weights, no code), not an ONNX or TorchScript "
                            "model: run it with --model FILE.py:factory --weights FILE")
        raise UserError(f"{path} is a zip archive (TorchScript?), not an ONNX model; name it .pt to run it as "
                        "TorchScript")
    verdict = _wire_check(data)
    if verdict == "not":
        raise UserError(f"{path} is not an ONNX file (it does not start like an ONNX ModelProto)")
    if verdict == "truncated":
        raise UserError(f"{path} is truncated: a field runs past the end of the file ({len(data)} bytes); "
                        "copy or download it again")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:
        raise UserError(f"{path} is not a readable ONNX file: {_first_line(err)}") from err
    if proto.ir_version == 0 or not proto.HasField("graph"):
        raise UserError(f"{path} is not an ONNX model (no ir_version or no graph)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as err:
            raise UserError(f"{path}: its external weight files cannot be read: {_first_line(err)}") from err
    if check:
        try:
            onnx.checker.check_model(proto)
        except Exception as err:
            raise UserError(f"{path} fails onnx.checker: {_first_line(err)}") from err
    return proto


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[:1]).strip() or type(err).__name__
    return text[:300].strip()


def _ort_message(err: BaseException) -> str:
    """ONNX Runtime's reason without its source location: 'layout_ == 0 was false. Batchwise ... supported.'"""
    for line in str(err).splitlines():
        if "was false." in line:
            return line.split("was false.", 1)[1].split(" If you need support")[0].strip()[:300]
    return _first_line(err)
