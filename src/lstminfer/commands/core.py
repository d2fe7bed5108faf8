"""`lstminfer backends | export | verify | bench | run`: thin calls into export, verify and bench."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lstminfer.backends.base import list_backends, select_backends
from lstminfer.commands.common import (
    add_backend_args,
    add_model_args,
    add_output_args,
    backend_options,
    model_from_args,
    print_table,
    progress_bar,
    split_list,
    stderr_console,
    write_json_output,
)
from lstminfer.measure.bench import BenchConfig, bench
from lstminfer.measure.store import ensure_writable_dir, new_results, write_json_atomic
from lstminfer.measure.verify import any_failed, default_points, parse_points, verify
from lstminfer.onnx.export import EXPORTERS, export_model
from lstminfer.report.render import bench_rows, verify_rows, write_report


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("backends", help="list every backend, available or not, and why")
    add_output_args(p)
    p.set_defaults(func=cmd_backends)

    p = subparsers.add_parser("export", help="export a PyTorch LSTM/GRU to ONNX and check it")
    add_model_args(p)
    p.add_argument("-o", "--output", default="model.onnx", help="ONNX file to write (default model.onnx)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torchscript (torch.onnx.export dynamo=False), direct (ours), auto (torchscript, else direct)")
    add_output_args(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("verify", help="compare every backend with a float64 reference")
    add_verify_args(p)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("bench", help="benchmark every backend with trtexec's statistics")
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("run", help="the whole tutorial: export, verify, bench, report")
    add_verify_args(p, out_dir=True)
    add_timing_args(p)
    p.set_defaults(func=cmd_run)


def add_verify_args(p: argparse.ArgumentParser, out_dir: bool = False) -> None:
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--points", default=None, metavar="SEQxBATCH,...",
                   help="shapes to verify (default: seq 1, the model's, a much longer one, another batch)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto")
    add_output_args(p, out_dir=True)


def add_timing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing (trtexec's defaults)")
    g.add_argument("--warmup", type=float, default=200.0, metavar="MS", help="warm-up time in ms (default 200)")
    g.add_argument("--duration", type=float, default=3.0, metavar="S", help="minimum timed seconds (default 3)")
    g.add_argument("--iterations", type=int, default=10, help="minimum timed queries (default 10)")
    g.add_argument("--no-data-transfers", action="store_true", help="keep inputs and outputs on the device")
    g.add_argument("--raw-times", action="store_true", help="keep every query's raw timestamps in the JSON")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_backend_args(p)
    p.add_argument("--exporter", choices=EXPORTERS, default="auto")
    add_timing_args(p)
    add_output_args(p, out_dir=True)


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [{"backend": c.name, "device": c.device, "available": "yes" if c.available else "no",
             "reason": c.reason or "", "install": "" if c.available else c.install_hint} for c in list_backends()]
    print_table("Backends", rows)
    write_json_output(args.json, rows)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    with stderr_console().status("exporting and checking the ONNX file"):
        result = export_model(model, args.output, args.exporter)
    console = stderr_console()
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    worst = max(c["max_abs_err"] for c in result.checks)
    shapes = sorted({(c["seq_len"], c["batch"]) for c in result.checks})
    print(f"wrote {result.path} ({result.exporter} exporter); ONNX Runtime matches PyTorch at "
          f"{', '.join(f'{s}x{b}' for s, b in shapes)} (seq x batch), max abs error {worst:.3g}")
    write_json_output(args.json, {"path": str(result.path), "exporter": result.exporter, "notes": result.notes,
                                  "checks": result.checks})
    return 0


def _prepare_model(args: argparse.Namespace, out: Path) -> tuple[Any, list[str]]:
    """The model, exported into `out` unless it cannot be (proj_size): then the torch backends run alone."""
    model = model_from_args(args)
    notes = []
    if model.module is None:  # a user's ONNX or TorchScript file: nothing to export
        return model, list(getattr(model, "notes", []))
    if model.spec and model.spec.proj_size:
        notes.append("proj_size: ONNX's LSTM has no projection, so there is no ONNX file; torch backends only")
        return model, notes
    with stderr_console().status("exporting and checking the ONNX file"):
        result = export_model(model, out / "model.onnx", args.exporter)
    notes.extend(result.notes)
    return model, notes


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Runner options: TF32, and the --out dir (TensorRT's engine cache lives under it)."""
    return {**backend_options(args), "out_dir": args.out}


def _choices(args: argparse.Namespace, model: Any = None) -> list:
    return select_backends(split_list(args.backends), args.device, model)


def _verify(args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    if args.points:
        points = parse_points(args.points)
    elif hasattr(model, "verify_points"):  # a user's file: only its free sequence / batch axes vary
        points = model.verify_points()
    else:
        points = default_points(model.seq_len, model.batch)
    choices = _choices(args, model)
    with progress_bar() as bar:
        task = bar.add_task("verify", total=None)
        records = verify(model, choices, points, precision=args.precision, seed=args.seed,
                         options=_options(args), progress=lambda msg: bar.update(task, description=msg))
    return records


def _bench(args: argparse.Namespace, model: Any) -> list[dict[str, Any]]:
    config = BenchConfig(warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
                         seq_len=model.seq_len, batch=model.batch, precision=args.precision,
                         no_data_transfers=args.no_data_transfers, seed=args.seed, keep_raw=args.raw_times)
    choices = _choices(args, model)
    with progress_bar() as bar:
        task = bar.add_task("bench", total=1.0)
        records = bench(model, choices, config, options=_options(args),
                        progress=lambda label, frac: bar.update(task, description=f"bench {label}", completed=frac))
    return records


def _print_notes(notes: list[str]) -> None:
    console = stderr_console()
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def cmd_verify(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out)
    model, notes = _prepare_model(args, out)
    _print_notes(notes)
    records = _verify(args, model)
    print_table(f"Verification of {model.name} against {records[0]['reference'] if records else '-'}",
                verify_rows(records))
    write_json_output(args.json, records)
    return 1 if any_failed(records) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out)
    model, notes = _prepare_model(args, out)
    _print_notes(notes)
    records = _bench(args, model)
    rows, unit = bench_rows(records)
    print_table(f"Benchmark of {model.name}, seq {model.seq_len} x batch {model.batch}, {args.precision}", rows)
    _print_warnings(records)
    write_json_output(args.json, records)
    return 0


def _print_warnings(records: list[dict[str, Any]]) -> None:
    console = stderr_console()
    for r in records:
        for w in r.get("warnings", []):
            console.print(f"[yellow]warning[/yellow] {r['backend']}[{r['device']}]: {w}")


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per backend: its verdict, its median latency and its speedup over torch eager."""
    verdict = {(r["backend"], r["device"]): r["verdict"] for r in verify_rows(results["verify"])}
    rows, unit = bench_rows(results["bench"])
    out = []
    for row in rows:
        key = (row["backend"], row["device"])
        out.append({"backend": row["backend"], "device": row["device"], "verified": verdict.get(key, "-"),
                    f"median ({unit})": row.get(f"median ({unit})"), "vs torch": row.get("vs torch"),
                    "note": row.get("note")})
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """export -> verify -> bench -> results.json + report.md, each file written atomically as soon as it exists."""
    out = ensure_writable_dir(args.out)
    model, notes = _prepare_model(args, out)
    _print_notes(notes)
    results = new_results(model.describe())
    results["notes"] = notes
    results["verify"] = _verify(args, model)
    write_json_atomic(out / "results.json", results)
    print_table(f"Verification of {model.name}", verify_rows(results["verify"]))
    results["bench"] = _bench(args, model)
    write_json_atomic(out / "results.json", results)
    write_report(results, out / "report.md", "md")
    rows, unit = bench_rows(results["bench"])
    print_table(f"Benchmark of {model.name}, seq {model.seq_len} x batch {model.batch}, {args.precision}", rows)
    _print_warnings(results["bench"])
    print_table("Summary", summary_rows(results))
    write_json_output(args.json, results)
    written = ["model.onnx"] if model.onnx_path else []
    print(f"wrote {', '.join(str(out / f) for f in written + ['results.json', 'report.md'])}")
    return 1 if any_failed(results["verify"]) else 0
