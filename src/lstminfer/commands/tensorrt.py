"""`lstminfer build | trtexec-cmd | import-trtexec`: TensorRT engines and trtexec interoperation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lstminfer.commands.args import DEFAULT_OUT, OutputArgs, TimingArgs
from lstminfer.commands.console import print_table, stdout_console, write_json_output
from lstminfer.commands.values import positive_int
from lstminfer.errors import UserError
from lstminfer.measure.store import SCHEMA_VERSION, load_results, write_json_atomic
from lstminfer.onnx.shapes import format_dims, parse_shapes
from lstminfer.tensorrt import build as tb
from lstminfer.tensorrt import trtexec
from lstminfer.tensorrt.profile import DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQ_LEN
from lstminfer.tensorrt.trtexec_times import load_times


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("build", help="build a TensorRT engine from an ONNX file (cached, with a sidecar)")
    _add_engine_args(p)
    p.add_argument("-o", "--output", default=None, metavar="FILE.engine",
                   help="engine file to write (default: a name in the cache, <out>/trt-cache)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache holds a matching engine")
    OutputArgs(what="the engine's sidecar").add_to(p)
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("trtexec-cmd", help="print the trtexec command lines equivalent to build + bench")
    _add_engine_args(p)
    p.add_argument("--engine", default=None, metavar="FILE", help="engine path in the commands (default <stem>.engine)")
    p.add_argument("--trt-version", type=int, choices=[10, 11], default=10,
                   help="TensorRT major version the commands are for (11 changed trtexec's flags and defaults)")
    g = TimingArgs(raw_times=False).add_to(p)
    g.add_argument("--cuda-graph", action="store_true", help="time with a CUDA graph (like tensorrt-graph)")
    g.add_argument("--export-times", default=None, metavar="FILE.json", help="add --exportTimes=FILE.json")
    OutputArgs(what="both commands").add_to(p)
    p.set_defaults(func=cmd_trtexec_cmd)

    p = subparsers.add_parser("import-trtexec", help="read a trtexec log (and --exportTimes JSON) into results")
    p.add_argument("file", metavar="FILE", help="trtexec's log (stdout), or its --exportTimes JSON")
    p.add_argument("--times", default=None, metavar="FILE.json", help="the same run's --exportTimes JSON")
    p.add_argument("-o", "--output", default=None, metavar="results.json",
                   help="results file to add the record to (created if missing)")
    p.add_argument("--model", default=None, help="model name for the record (default: the log's --onnx)")
    p.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                   help="sequence length of the run (default: from --shapes)")
    p.add_argument("--batch", type=positive_int, default=None, metavar="N",
                   help="batch size of the run (default: from --shapes)")
    OutputArgs(what="the record").add_to(p)
    p.set_defaults(func=cmd_import_trtexec)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX file (e.g. from `lstminfer export`)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="the engine's precision: fp16/bf16 let TensorRT pick those kernels (default fp32)")
    g = p.add_argument_group("optimization profile (trtexec's shape syntax: name:AxBxC,name2:...)")
    g.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                   help="sequence length to optimize for (default: the export's example shape)")
    g.add_argument("--batch", type=positive_int, default=None, metavar="N",
                   help="batch to optimize for (default: the export's)")
    g.add_argument("--max-seq-len", type=positive_int, default=None, metavar="N",
                   help=f"largest sequence length (default {DEFAULT_MAX_SEQ_LEN}, or --seq-len if larger)")
    g.add_argument("--max-batch", type=positive_int, default=None, metavar="N",
                   help=f"largest batch (default {DEFAULT_MAX_BATCH}, or --batch if larger)")
    g.add_argument("--min-shapes", default=None, metavar="SPEC", help="min shapes, overriding the derived ones")
    g.add_argument("--opt-shapes", default=None, metavar="SPEC", help="opt shapes, overriding the derived ones")
    g.add_argument("--max-shapes", default=None, metavar="SPEC", help="max shapes, overriding the derived ones")
    p.add_argument("--workspace", type=positive_int, default=tb.DEFAULT_WORKSPACE_MB, metavar="MB",
                   help=f"TensorRT workspace memory pool limit (default {tb.DEFAULT_WORKSPACE_MB} MB)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in fp32 layers (TensorRT's default; off here, like every lstminfer backend)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"artifacts directory, the engine cache under it (default ./{DEFAULT_OUT})")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="engine cache (default <out>/trt-cache)")


def profile_from_args(args: argparse.Namespace) -> tb.Profile:
    parse = {k: parse_shapes(v, f"--{k.replace('_', '-')}") if v else None
             for k, v in (("min_shapes", args.min_shapes), ("opt_shapes", args.opt_shapes),
                          ("max_shapes", args.max_shapes))}
    return tb.derive_profile(args.onnx, args.seq_len, args.batch, args.max_seq_len, args.max_batch, **parse)


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir) if args.cache_dir else tb.default_cache_dir(args.out)


def _profile_rows(profile: tb.Profile) -> list[dict[str, Any]]:
    return [{"input": n, "min": format_dims(profile.min[n]), "opt": format_dims(profile.opt[n]),
             "max": format_dims(profile.max[n])} for n in profile.min]


def cmd_build(args: argparse.Namespace) -> int:
    profile = profile_from_args(args)
    request = tb.EngineRequest(Path(args.onnx), profile, args.precision, _cache_dir(args), args.workspace,
                               args.tf32, Path(args.output) if args.output else None)
    engine_path, sidecar, built = tb.ensure_engine(request, force=args.force)
    console = stdout_console()
    print_table("optimization profile", _profile_rows(profile), console)
    console.print(f"{'built' if built else 'reused cached'} {engine_path} "
                  f"(TensorRT {sidecar['tensorrt_version']}, {sidecar['gpu']}, {sidecar['precision']}"
                  + (f", {sidecar['build_time_s']:.1f} s" if built else "") + ")", markup=False)
    write_json_output(args.json, {"engine": str(engine_path), "built": built, **sidecar})
    return 0


def cmd_trtexec_cmd(args: argparse.Namespace) -> int:
    profile = profile_from_args(args)
    onnx = Path(args.onnx)
    engine = Path(args.engine) if args.engine else onnx.with_suffix(f".{args.precision}.engine")
    build = trtexec.build_command(onnx, engine, profile, args.precision, args.workspace,
                                  trt_major=args.trt_version, tf32=args.tf32)
    timing = trtexec.timing_command(engine, profile.opt, args.warmup, args.duration, args.iterations,
                                    data_transfers=not args.no_data_transfers, cuda_graph=args.cuda_graph,
                                    trt_major=args.trt_version, export_times=args.export_times)
    # Plain lines, not a table: they are meant to be copied into a shell.
    print(f"# build (TensorRT {args.trt_version}): {profile.describe() or 'static shapes'}")
    print(trtexec.command_string(build))
    print("# time it at the opt shapes")
    print(trtexec.command_string(timing))
    write_json_output(args.json, {"build": build, "timing": timing, "build_command": trtexec.command_string(build),
                                  "timing_command": trtexec.command_string(timing), "profile": profile.to_dict(),
                                  "tensorrt_major": args.trt_version})
    return 0


def _looks_like_json(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(64).lstrip().startswith("[")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err


def import_record(file: str | Path, times: str | Path | None = None, model: str | None = None,
                  seq_len: int | None = None, batch: int | None = None) -> dict[str, Any]:
    """A bench record from a trtexec log and/or --exportTimes file (FILE may be either)."""
    file = Path(file)
    if _looks_like_json(file):
        if times:
            raise UserError(f"{file} is an --exportTimes JSON already; give the log as FILE and the JSON as --times")
        log, queries = None, load_times(file)
    else:
        log, queries = trtexec.load_log(file), load_times(times) if times else None
    record = trtexec.to_bench_record(log, queries, model=model, seq_len=seq_len, batch=batch)
    record["imported_from"] = [str(file)] + ([str(times)] if times else [])
    return record


def add_to_results(path: str | Path, record: dict[str, Any]) -> Path:
    """Append `record` to a results file (created if missing); an identical record is not added twice."""
    path = Path(path)
    data = load_results(path) if path.exists() else {"schema": SCHEMA_VERSION, "machine": {}, "model": {},
                                                     "verify": [], "bench": []}
    if record not in data["bench"]:
        data["bench"].append(record)
    return write_json_atomic(path, data)


def _metric_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, key in (("Latency", "trt_latency_ms"), ("Enqueue Time", "enqueue_ms"), ("H2D Latency", "h2d_ms"),
                       ("GPU Compute Time", "gpu_compute_ms"), ("D2H Latency", "d2h_ms")):
        s = record.get(key) or {}
        rows.append({"metric (ms)": label, **{k: _g(s.get(k)) for k in ("min", "mean", "median", "p90", "p99", "max")}})
    return rows


def _g(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


def cmd_import_trtexec(args: argparse.Namespace) -> int:
    from rich.markup import escape

    record = import_record(args.file, args.times, args.model, args.seq_len, args.batch)
    console = stdout_console()
    title = (f"trtexec (TensorRT {record.get('tensorrt_version') or '?'}, {record['precision']}): "
             f"{_g(record['throughput_qps'])} qps, {record.get('queries') or '?'} queries")
    print_table(title, _metric_rows(record), console)
    for w in record.get("warnings", []):
        console.print(f"[yellow]trtexec warned:[/yellow] {escape(w)}")
    if args.output:
        add_to_results(args.output, record)
        console.print(f"added to {args.output}", markup=False)
    write_json_output(args.json, record)
    return 0
