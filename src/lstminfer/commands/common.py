"""Arguments shared by subcommands, and turning them into a Model, backends and output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.model.base import Model
from lstminfer.model.spec import PRESETS, ModelSpec, build_module, preset, spec_of_module
from lstminfer.model.user import load_user_module

SIZE_FLAGS = ("kind", "input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "bias", "proj_size")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default=None, metavar="FILE",
                        help="your own model file: ONNX (.onnx) or TorchScript (.pt); instead of --preset/--model")
    g = parser.add_argument_group("model")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a built-in model (default: seed, the tutorial's 10-layer bidirectional LSTM)")
    g.add_argument("--kind", choices=["lstm", "gru"], default=None)
    g.add_argument("--input-size", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--batch-first", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--proj-size", type=int, default=None, help="LSTM projection size (PyTorch only: no ONNX export)")
    g.add_argument("--model", default=None, metavar="FILE.py:factory",
                   help="your own model: a factory returning an nn.Module whose forward takes (x, hx) like nn.LSTM")
    g.add_argument("--weights", default=None, metavar="FILE", help="a state_dict for --model (torch.load weights_only)")
    g.add_argument("--seed", type=int, default=0, help="seed for the weights of built-in models and for inputs")
    g.add_argument("--no-state", action="store_true", help="do not feed h0/c0 (the tutorial feeds them)")
    g.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the preset's)")
    g.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    add_file_args(parser)


def add_file_args(parser: argparse.ArgumentParser) -> None:
    """Inputs of a user's file: trtexec-style shapes, values, arrays, state pairs, the ONNX twin of a .pt."""
    g = parser.add_argument_group("model file (FILE)")
    g.add_argument("--shapes", default=None, metavar="NAME:AxB,...",
                   help="shapes of inputs with symbolic dims, trtexec syntax (the name is everything before the "
                        "last colon)")
    g.add_argument("--input", action="append", default=None, dest="input_values", metavar="NAME=VALUE",
                   help="fill input NAME with VALUE (e.g. sr=16000); repeatable")
    g.add_argument("--inputs", default=None, dest="inputs_npz", metavar="FILE.npz",
                   help="input arrays by name (dtype and shape must fit the model)")
    g.add_argument("--state", action="append", default=None, metavar="IN:OUT",
                   help="a recurrent state pair fed back between chunks (default: found by name)")
    g.add_argument("--onnx", default=None, metavar="FILE.onnx",
                   help="the ONNX export of a TorchScript FILE: its inputs, and the reference it is checked against")


def add_backend_args(parser: argparse.ArgumentParser, precision_choices: bool = True) -> None:
    g = parser.add_argument_group("backends")
    g.add_argument("--backends", default=None, metavar="NAME[:DEVICE],...",
                   help="comma-separated backends (default: every one available here; see `lstminfer backends`)")
    g.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    g.add_argument("--tf32", action="store_true", help="let cuDNN/cuBLAS use TF32 for fp32 (off: fp32 is IEEE fp32)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU backends: torch intra-op threads, ONNX Runtime intra-op threads, OpenVINO inference "
                        "threads (default: each runtime's own; the count that ran is recorded)")
    g.add_argument("--cpu-mode", choices=["latency", "throughput"], default="latency",
                   help="openvino: latency (one infer request) or throughput (the batch split over several "
                        "requests in flight)")


def add_output_args(parser: argparse.ArgumentParser, out_dir: bool = False) -> None:
    parser.add_argument("--json", default=None, metavar="FILE", help="write the records as JSON to FILE")
    if out_dir:
        parser.add_argument("--out", default="lstminfer-out", metavar="DIR", help="artifacts directory")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def model_from_args(args: argparse.Namespace) -> Model:
    """A Model from FILE / --preset / sizes / --model, with its default shape."""
    for name in ("input_size", "hidden_size", "num_layers", "seq_len", "batch"):
        _positive(name, getattr(args, name, None))
    if getattr(args, "file", None):
        return file_model_from_args(args)
    for flag, dest in (("--shapes", "shapes"), ("--input", "input_values"), ("--inputs", "inputs_npz"),
                       ("--state", "state"), ("--onnx", "onnx")):
        if getattr(args, dest, None):
            raise UserError(f"{flag} applies to a model FILE (e.g. `lstminfer verify model.onnx {flag} ...`)")
    base = preset(args.preset or "seed")
    sizes = {k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k, None) is not None}
    if args.model:
        module = load_user_module(args.model, args.weights)
        spec = spec_of_module(module)
        if spec is None:
            raise UserError(f"--model {args.model}: found no single nn.LSTM / nn.GRU inside the module; "
                            "lstminfer runs modules built around one recurrent stack")
        for key, value in sizes.items():
            if getattr(spec, key) != value:
                raise UserError(f"--{key.replace('_', '-')} {value} does not match the model's {key} "
                                f"{getattr(spec, key)}; drop the flag or fix the model")
        name = args.model
    else:
        if args.weights:
            raise UserError("--weights needs --model (built-in models take --seed)")
        if sizes and not args.preset:
            spec = ModelSpec(**{**ModelSpec(kind=sizes.get("kind", "lstm")).to_dict(), **sizes})
            name = "custom"
        else:
            spec = ModelSpec(**{**base.spec.to_dict(), **sizes})
            name = args.preset or "seed"
        module = build_module(spec, seed=args.seed)
    default_shape = base if (args.preset or not sizes) and not args.model else None
    seq_len = args.seq_len or (default_shape.seq_len if default_shape else 16)
    batch = args.batch or (default_shape.batch if default_shape else 2)
    return Model(name=name, spec=spec, module=module, seq_len=seq_len, batch=batch, with_state=not args.no_state)


def file_model_from_args(args: argparse.Namespace) -> Model:
    """A FileModel for FILE (ONNX or TorchScript) with --shapes / --input / --inputs / --state / --onnx."""
    from lstminfer.model.file import load_model_file
    from lstminfer.onnx.inspect import parse_state
    from lstminfer.onnx.shapes import parse_values

    sizes = [k for k in SIZE_FLAGS if getattr(args, k, None) is not None]
    clash = [f for f, on in (("--preset", getattr(args, "preset", None)), ("--model", getattr(args, "model", None)),
                             ("--weights", getattr(args, "weights", None))) if on]
    clash += [f"--{k.replace('_', '-')}" for k in sizes]
    if clash:
        raise UserError(f"give a model FILE or {', '.join(clash)}, not both")
    model = load_model_file(args.file, shapes=args.shapes, values=parse_values(args.input_values),
                            inputs_npz=args.inputs_npz, onnx=args.onnx, seq_len=getattr(args, "seq_len", None),
                            batch=getattr(args, "batch", None))
    model.state_pairs = parse_state(args.state, model.input_names, model.output_names or None) or None
    return model


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    _positive("threads", getattr(args, "threads", None))
    return {"tf32": bool(getattr(args, "tf32", False)), "threads": getattr(args, "threads", None),
            "cpu_mode": getattr(args, "cpu_mode", None) or "latency"}


def split_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{flag}: {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) <= 0:
        raise UserError(f"--{flag}: values must be positive integers, got {text!r}")
    return values


def write_json_output(path: str | None, value: Any) -> None:
    if path:
        from lstminfer.measure.store import write_json_atomic

        write_json_atomic(Path(path), value)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Any:
    from rich.console import Console

    # Piped output (CI logs, `| tee`) gets a wide fixed width instead of rich's 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


# Text columns; numbers are right-aligned.  The second line: `inspect`'s tables.
LEFT_COLUMNS = ("backend", "verified", "install", "device", "precision", "verdict", "note", "reason", "points",
                "reference", "name", "dtype", "shape", "role", "op", "where", "direction", "attributes", "node",
                "onnxruntime", "tensorrt", "onnx-reference", "stream")


def print_table(title: str, rows: Sequence[dict[str, Any]], console: Any = None) -> None:
    from rich.table import Table

    console = console or stdout_console()
    if not rows:
        console.print(f"[bold]{title}[/bold]: nothing to show")
        return
    table = Table(title=title, title_justify="left")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for c in columns:
        table.add_column(c, justify="left" if c in LEFT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[_cell(c, row.get(c)) for c in columns])
    console.print(table)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "vs torch" and isinstance(value, float):
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if text == "FAILED" or text.startswith("FAILED"):
        return f"[red]{text}[/red]"
    if text == "passed":
        return f"[green]{text}[/green]"
    return text.replace("[", "\\[")


def progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=stderr_console(), transient=True, disable=not sys.stderr.isatty())
