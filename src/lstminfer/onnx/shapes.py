"""Shapes and values given on the command line, and the one rule that names a dim's role.

``--shapes name:AxB`` (trtexec's syntax, also ``--min/opt/max-shapes``), ``--input name=V``,
``--inputs f.npz``; ``dim_roles`` says which symbolic dims are the sequence and the batch axis."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lstminfer.errors import UserError
from lstminfer.model.base import TensorInfo
from lstminfer.onnx.load import _first_line

# Symbolic dim names that mean "sequence" or "batch" (torch's dynamic_axes names, common hand-written ones).
SEQ_DIM = re.compile(r"(seq|time|len|frame|step|sample|chunk|^t$|^s$|^l$)", re.IGNORECASE)
BATCH_DIM = re.compile(r"(batch|^n$|^b$|^bs$)", re.IGNORECASE)

Shapes = dict[str, tuple[int, ...]]


# ---- the role of a dim ----------------------------------------------------------------------------------
def dim_roles(inputs: Sequence[TensorInfo], graph_roles: dict[str, str] | None = None,
              batch_first: bool | None = None) -> dict[str, str]:
    """Symbolic dim -> "seq" or "batch": the one rule `inspect`, files, `build` and trtexec all read a file by.

    In order: the dim's name (``SEQ_DIM``, ``BATCH_DIM``); where ONNX shape inference carries it onto a
    recurrent node (``graph_roles``, from ``onnx.inspect.graph_axes``); a dim several inputs share is
    the batch (x and its states share it, the sequence is x's alone); and, only when the layout is known
    (``batch_first`` not None, e.g. from lstminfer's export metadata), the position of the first two axes
    of a 3-D input, where it agrees with the roles found so far. Anonymous dims are named ``input[axis]``
    (``TensorInfo``), so each is its own.
    """
    graph_roles = graph_roles or {}
    symbolic = [d for i in inputs if i.dims for d in dict.fromkeys(i.dims) if isinstance(d, str)]
    roles: dict[str, str] = {}
    for d in symbolic:
        if BATCH_DIM.search(d) and "[" not in d:
            roles[d] = "batch"
        elif SEQ_DIM.search(d) and "[" not in d:
            roles[d] = "seq"
        elif d in graph_roles:
            roles[d] = graph_roles[d]
    counts = {d: symbolic.count(d) for d in symbolic}
    for d in symbolic:
        if d not in roles and counts[d] > 1:
            roles[d] = "batch"
    if batch_first is not None:
        expected = ("batch", "seq") if batch_first else ("seq", "batch")
        for info in inputs:
            if not info.dims or len(info.dims) != 3:
                continue
            axes = [(d, want) for d, want in zip(info.dims[:2], expected) if isinstance(d, str)]
            if all(roles.get(d, want) == want for d, want in axes):  # the layout agrees with what is known
                roles.update({d: want for d, want in axes})
    return roles


# ---- shape strings (trtexec syntax) ---------------------------------------------------------------------
def parse_shapes(text: str | None, option: str = "--shapes") -> Shapes:
    """trtexec syntax ``name:AxBxC,name2:D`` -> {name: (A, B, C), ...}: the one parser of shapes.

    The name is everything before the last colon (trtexec's quoted names lose their quotes); ``name:`` or
    ``name:scalar`` is a scalar. Every size must be a positive integer: a zero-sized dim would reach a
    runtime that aborts the process natively instead of refusing it.
    """
    shapes: Shapes = {}
    for item in (p.strip() for p in (text or "").split(",") if p.strip()):
        name, sep, dims = item.rpartition(":")
        if len(name) >= 2 and name[0] == name[-1] == "'":
            name = name[1:-1]
        if not sep or not name:
            raise UserError(f"{option}: {item!r} is not name:AxBxC (e.g. input:16x1x40)")
        if name in shapes:
            raise UserError(f"{option}: input {name!r} is given twice")
        shapes[name] = _parse_dims(dims.strip().lower(), item, option)
    return shapes


def _parse_dims(dims: str, item: str, option: str) -> tuple[int, ...]:
    if dims in ("", "scalar"):
        return ()
    try:
        values = tuple(int(d) for d in dims.split("x"))
    except ValueError:
        raise UserError(f"{option}: {item!r}: dimensions must be positive integers joined by 'x'") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{option}: {item!r}: dimensions must be positive integers joined by 'x' "
                        "(a zero-sized dim has nothing to run)")
    return values


def format_dims(dims: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in dims) if len(dims) else "scalar"


def format_shapes(shapes: Shapes) -> str:
    """{name: (A, B, C)} -> ``name:AxBxC,...`` (trtexec syntax, insertion order)."""
    for name in shapes:
        if not name or "," in name:
            raise UserError(f"input name {name!r} cannot be written in trtexec's shape syntax (it splits on ',')")
    return ",".join(f"{name}:{format_dims(dims)}" for name, dims in shapes.items())


# ---- user-given values --------------------------------------------------------------------------------------
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
        if not np.isfinite(value):  # a NaN or infinite input verifies nothing
            raise UserError(f"--input {item!r}: {text!r} is not a finite number")
        out[name.strip()] = value
    return out


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--inputs: {path} is a directory, not a .npz file" if path.is_dir()
                        else f"--inputs: file {path} does not exist")
    with open(path, "rb") as f:  # anything else numpy would try as a pickle, and advise loading it unsafely
        if f.read(4) != b"PK\x03\x04":
            raise UserError(f"--inputs: {path} is not a .npz file (the zip archive numpy.savez writes); save the "
                            "arrays with numpy.savez(PATH, name=array, ...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as err:
        raise UserError(f"--inputs: {path} is not a .npz file numpy can read: {_first_line(err)}") from err
