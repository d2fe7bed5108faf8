"""Shapes and values given on the command line (trtexec syntax), and the one rule that names a dim's role.

``--shapes name:AxB``, ``--input name=V``, ``--inputs f.npz``, ``--state in=out``; a symbolic dim is the
sequence or batch axis when its name says so (torch's dynamic_axes names, common hand-written ones)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lstminfer.errors import UserError
from lstminfer.onnx.load import _first_line

# Symbolic dim names that mean "sequence" or "batch" (torch's dynamic_axes names, common hand-written ones).
SEQ_DIM = re.compile(r"(seq|time|len|frame|step|sample|chunk|^t$|^s$|^l$)", re.IGNORECASE)


BATCH_DIM = re.compile(r"(batch|^n$|^b$|^bs$)", re.IGNORECASE)






# ---- user-given shapes and values -------------------------------------------------------------------------
def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """trtexec syntax ``name:AxBxC,name2:D`` (the name is everything before the last colon; an empty shape
    after the colon is a scalar)."""
    out: dict[str, tuple[int, ...]] = {}
    if not text:
        return out
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise UserError(f"--shapes {item!r}: expected NAME:AxBxC (e.g. input:16x1x40)")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
        except ValueError:
            raise UserError(f"--shapes {item!r}: {dims!r} is not AxBxC with integer sizes") from None
        if any(d < 0 for d in shape):
            raise UserError(f"--shapes {item!r}: sizes must be >= 0")
        out[name] = shape
    return out


def parse_values(items: list[str] | None) -> dict[str, float | int]:
    """``--input name=VALUE`` (repeatable) -> {name: number}."""
    out: dict[str, float | int] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--input {item!r}: expected NAME=VALUE (e.g. sr=16000)")
        text = text.strip()
        try:
            value: float | int = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                if text.lower() in ("true", "false"):
                    value = int(text.lower() == "true")
                else:
                    raise UserError(f"--input {item!r}: {text!r} is not a number") from None
        out[name.strip()] = value
    return out


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--inputs: file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as err:
        raise UserError(f"--inputs: {path} is not a .npz file numpy can read: {_first_line(err)}") from err
