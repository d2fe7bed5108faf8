"""`lstminfer inspect FILE` and `lstminfer stream FILE`: a user's own ONNX / TorchScript model."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from lstminfer.commands.args import FileArgs, OutputArgs, describe_model
from lstminfer.commands.console import print_notes, print_table, stdout_console, write_json_output
from lstminfer.commands.values import non_negative_int, positive_float, positive_int, seed_int, split_list
from lstminfer.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("inspect", help="inputs, outputs, recurrent nodes, state pairs and backend "
                                              "capability of an ONNX file")
    p.add_argument("file", metavar="FILE", help="an ONNX file")
    OutputArgs(what="the report").add_to(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("stream", help="run a file or a PyTorch model chunk by chunk, state carried: per-chunk "
                                             "latency and real-time factor")
    p.add_argument("file", nargs="?", default=None, metavar="FILE",
                   help="an ONNX or TorchScript file with a recurrent state input/output (or --model)")
    p.add_argument("--model", default=None, metavar="FILE.py:factory",
                   help="a PyTorch model with nn.LSTM / nn.GRU inside (see `lstminfer verify --help`); its "
                        "recurrent layers' state is carried when its forward does not take it")
    p.add_argument("--weights", default=None, metavar="FILE", help="a state_dict for --model")
    p.add_argument("--dynamic", default=None, metavar="NAME:AXIS=LABEL,...", help="--model's dynamic axes")
    p.add_argument("--seq-axis", default=None, metavar="INPUT:AXIS",
                   help="the chunk input's sequence axis, where the file's dims do not name it (with --shapes)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="torch and fused backends: weights and activations (default fp32)")
    p.add_argument("--chunk", type=positive_int, required=True, metavar="N",
                   help="chunk length along the sequence axis")
    p.add_argument("--chunks", type=positive_int, default=100, metavar="K",
                   help="timed chunks per backend (default 100)")
    p.add_argument("--warmup-chunks", type=non_negative_int, default=20, metavar="W",
                   help="untimed chunks first (default 20)")
    p.add_argument("--chunk-ms", type=positive_float, default=None, metavar="MS",
                   help="the duration a chunk stands for (e.g. 32 for 512 samples at 16 kHz): gives the "
                        "real-time factor")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N", help="streams side by side (default 1)")
    p.add_argument("--backends", default=None, metavar="NAME[:DEVICE],...",
                   help="default: every backend available here that runs this kind of file (see `lstminfer "
                        "backends`); fused-resident (stream only: a plain nn.LSTM / nn.GRU kept resident on the "
                        "GPU) when named")
    p.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed for the chunks' random values")
    FileArgs().add_to(p)
    OutputArgs().add_to(p)
    p.set_defaults(func=cmd_stream)


# ---- inspect --------------------------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from lstminfer.onnx.inspect import inspect_file
    from lstminfer.onnx.torchscript import is_torchscript_path

    if is_torchscript_path(args.file):
        raise UserError(f"{args.file} is TorchScript: inspect reads ONNX; inspect its ONNX export, or run it with "
                        "`lstminfer verify FILE.pt --onnx FILE.onnx`")
    info = inspect_file(args.file)
    console = stdout_console()
    opset = ", ".join(f"{d} {v}" for d, v in info.opset.items())
    console.print(f"[bold]{escape(str(info.path))}[/bold]: ONNX IR {info.ir_version}, opset {escape(opset)}, "
                  f"produced by {info.producer or 'unknown'}")
    print_table("Inputs", [{"name": i.name, "dtype": i.dtype, "shape": i.shape_text,
                            "role": _roles(i.dims, info.dim_roles)} for i in info.inputs], console)
    print_table("Outputs", [{"name": o.name, "dtype": o.dtype, "shape": o.shape_text} for o in info.outputs], console)
    if info.recurrent:
        print_table("Recurrent nodes", [{
            "op": n.op, "name": n.name, "where": n.where, "layer": n.layer, "hidden": n.hidden_size,
            "direction": n.direction, "layout": n.layout, "attributes": _attributes(n)} for n in info.recurrent],
            console)
        backends = list(dict.fromkeys(b for n in info.recurrent for b in n.capability))
        print_table("What each backend does with each node (like `polygraphy inspect capability`)",
                    [{"node": f"{n.op} {n.name}", **{b: n.capability.get(b, "-") for b in backends}}
                     for n in info.recurrent], console)
    pairs = (", ".join(f"{p.input} -> {p.output}" for p in info.state_pairs)
             or info.state_pairs_note)
    console.print(f"state pairs: {pairs}", markup=False)  # names and notes are the file's text, not markup
    runs = _ort_cpu_check(args.file)
    console.print(f"ONNX Runtime CPU session: {runs}", markup=False)
    fallback = ("verify uses ONNX Runtime CPU as the reference" if runs == "created"
                else "and ONNX Runtime refuses the file: verify has no reference")
    oracle = "yes" if info.oracle[0] else f"no ({info.oracle[1]}): {fallback}"
    console.print(f"onnx.reference float64 oracle: {oracle}", markup=False)
    print_notes(info.notes)
    write_json_output(args.json, {**info.to_dict(), "onnxruntime_cpu_session": runs})
    return 0


def _ort_cpu_check(path: str) -> str:
    """Whether ONNX Runtime builds a CPU session for the whole file (any op, not only recurrent ones)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "not checked (onnxruntime is not installed)"
    from lstminfer.onnx.load import _ort_message

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:
        return f"refused: {_ort_message(err)}"
    return "created"


def _roles(dims: Any, roles: dict[str, str]) -> str:
    found = [f"{d}={roles[d]}" for d in dims or [] if isinstance(d, str) and d in roles]
    return ", ".join(found)


def _attributes(node: Any) -> str:
    parts = []
    if node.activations:
        parts.append("activations " + "/".join(node.activations))
    if node.clip is not None:
        parts.append(f"clip {node.clip:g}")
    if node.input_forget:
        parts.append("input_forget")
    if node.sequence_lens:
        parts.append("sequence_lens")
    if node.peepholes:
        parts.append("peepholes")
    if node.linear_before_reset is not None:
        parts.append(f"linear_before_reset {node.linear_before_reset}")
    return ", ".join(parts) or "defaults"


# ---- stream ----------------------------------------------------------------------------------------------------
def _stream_backends(args: argparse.Namespace, model: Any) -> list[tuple[str, str]]:
    """--backends, else the registry's choice for this model: available here, applies to it, not self-timed."""
    from lstminfer.backends.base import runner_class, select_backends

    requested = split_list(args.backends)
    # fused-resident is stream-only, outside the registry (measure/stream_resident.py): CUDA, asked for by name
    resident = [("fused-resident", "cuda") for r in requested or () if r.partition(":")[0] == "fused-resident"][:1]
    rest = [r for r in requested or () if r.partition(":")[0] != "fused-resident"]
    if resident and not rest:
        return resident
    chosen = select_backends(rest, "all", None if rest else model)
    return [(c.name, c.device) for c in chosen if rest or not runner_class(c.name).self_timed] + resident


def cmd_stream(args: argparse.Namespace) -> int:
    from lstminfer.measure.stream import Session, parse_seq_axis, refuse_unstreamable, stream_model, stream_one
    from lstminfer.onnx.shapes import parse_values

    options = FileArgs.parse(args)
    values = parse_values(args.input_values)
    if bool(args.file) == bool(args.model):
        raise UserError("give a model FILE or --model FILE.py:factory (one of them)")
    model = (stream_model(args.model, args.weights, args.shapes, args.dynamic) if args.model
             else options.load(validate=False))
    source = args.file or args.model
    print(f"model: {describe_model(model)}")
    refuse_unstreamable(model)  # before any note: a bidirectional file gets one line
    print_notes([note for note in model.notes if "reference" not in note])
    records = []
    for name, device in _stream_backends(args, model):
        base = {"backend": name, "device": device, "file": source}
        try:
            session = Session(model, backend=name, device=device, state=args.state, precision=args.precision,
                              inputs={**values, **(model.arrays if args.file else {})})
            rec = stream_one(session, args.chunk, args.chunks, args.warmup_chunks, args.batch, args.chunk_ms,
                             np.random.default_rng(args.seed), parse_seq_axis(args.seq_axis, session))
            session.close()
        except UserError as err:
            if split_list(args.backends) or "cannot stream" in str(err) or "no recurrent state" in str(err):
                raise
            rec = {"error": str(err)}
        records.append({**base, **rec})
    if not records:
        raise UserError(f"no backend available here runs {source}; see `lstminfer backends`")
    if all("error" in r for r in records):
        raise UserError(f"no backend could stream {source}: {records[0]['error']}")
    rows = []
    for r in records:
        lat = r.get("latency_ms") or {}
        rows.append({"backend": r["backend"], "device": r["device"], "chunks": r.get("chunks"),
                     "median ms": lat.get("median"), "p90 ms": lat.get("p90"), "p95 ms": lat.get("p95"),
                     "p99 ms": lat.get("p99"), "max ms": lat.get("max"),
                     "RTF (median)": r.get("real_time_factor"), "RTF (p99)": r.get("real_time_factor_p99"),
                     "note": r.get("error", "")})
    shape = next((r["chunk_shape"] for r in records if "chunk_shape" in r), None)
    title = f"Streaming {source}: chunk {args.chunk}" + (f" ({args.chunk_ms:g} ms)" if args.chunk_ms else "")
    print_table(title + (f", chunk shape {list(shape)}" if shape else "") + ", host clock per step", rows)
    write_json_output(args.json, records)
    return 0
