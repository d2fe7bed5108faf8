"""`lstminfer backends | export | verify | bench | run`: thin calls into export and lstminfer.measure.run."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstminfer.backends.base import list_backends
from lstminfer.commands.args import BackendArgs, ExportArgs, ModelArgs, OutputArgs, TimingArgs, model_from_args
from lstminfer.commands.console import print_notes, print_table, stderr_console, write_json_output
from lstminfer.commands.measuring import (
    StepLog,
    check_output_file,
    check_something_ran,
    export_for,
    print_reference,
    runner_options,
    select_targets,
    verify_code,
)
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import BenchRecord, Point, Record, verdicts
from lstminfer.measure.run import Measurement, measure
from lstminfer.measure.store import StagedDir, ensure_writable_dir, new_results, write_json_atomic
from lstminfer.measure.verify import (
    References,
    affordable_points,
    check_onnx_reference,
    oracle_points,
    parse_points,
)
from lstminfer.model.base import Model
from lstminfer.model.spec import check_memory


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("backends", help="list every backend, available or not, and why")
    OutputArgs().add_to(p)
    p.set_defaults(func=cmd_backends)

    p = subparsers.add_parser("export", help="export a PyTorch LSTM/GRU to ONNX and check it")
    ModelArgs().add_to(p)
    p.add_argument("-o", "--output", default="model.onnx", help="ONNX file to write (default model.onnx)")
    ExportArgs().add_to(p)
    OutputArgs().add_to(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("verify", help="compare every backend with a float64 reference")
    add_measure_args(p, verify=True, timing=False)
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("bench", help="benchmark every backend with trtexec's statistics")
    add_measure_args(p, verify=False, timing=True)
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser("run", help="the whole tutorial: export, verify, bench, report")
    add_measure_args(p, verify=True, timing=True)
    p.set_defaults(func=cmd_run)


def add_measure_args(p: argparse.ArgumentParser, verify: bool, timing: bool) -> None:
    ModelArgs().add_to(p)
    BackendArgs().add_to(p)
    if verify:
        p.add_argument("--points", default=None, metavar="SEQxBATCH,...",
                       help="shapes to verify (default: seq 1, the model's, a much longer one, another batch)")
        p.add_argument("--allow-unverified", action="store_true",
                       help="exit 0 when the only reference is a runtime under test (labelled unverified)")
    ExportArgs().add_to(p)
    if timing:
        TimingArgs().add_to(p)
    OutputArgs(out_dir=True).add_to(p)


def cmd_backends(args: argparse.Namespace) -> int:
    rows = [{"backend": c.name, "device": c.device, "available": "yes" if c.available else "no",
             "reason": c.reason or "", "install": "" if c.available else c.install_hint} for c in list_backends()]
    print_table("Backends", rows)
    write_json_output(args.json, rows)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lstminfer.onnx.export import export_model

    check_output_file(args.json)
    check_output_file(args.output, "-o")
    model = model_from_args(args)
    with stderr_console().status("exporting and checking the ONNX file"):
        result = export_model(model, args.output, args.exporter)
    print_notes(result.notes)
    worst = max(c["max_abs_err"] for c in result.checks)
    shapes = sorted({(c["seq_len"], c["batch"]) for c in result.checks})
    print(f"wrote {result.path} ({result.exporter} exporter); ONNX Runtime matches PyTorch at "
          f"{', '.join(f'{s}x{b}' for s, b in shapes)} (seq x batch), max abs error {worst:.3g}")
    write_json_output(args.json, {"path": str(result.path), "exporter": result.exporter, "notes": result.notes,
                                  "checks": result.checks})
    return 0


# ---- verify, bench, run: one plan, checked before any work ------------------------------------------------------
@dataclass
class Job:
    model: Model
    targets: list[Point]
    verify_points: list[tuple[int, int]]
    bench_points: list[tuple[int, int]]
    timing: BenchConfig
    notes: list[str]
    out: Path
    allow_unverified: bool = False


def _job(args: argparse.Namespace, verify: bool, bench: bool) -> Job:
    """Every argument checked and every output path too, before the export (issue 14 items 9 and 20)."""
    check_output_file(args.json)
    points = parse_points(args.points) if verify and args.points else None
    out = ensure_writable_dir(args.out)
    model = model_from_args(args)
    targets = select_targets(args, None, args.precision)  # names, devices, precision: before the export
    notes: list[str] = []
    if verify and points is None:
        points, notes = affordable_points(model, model.verify_points())
    elif points and model.spec is not None:  # a --points shape too large to allocate: one line, before any work
        for seq_len, batch in points:
            check_memory(model.spec, seq_len, batch)
    timing = TimingArgs.parse(args) if bench else None
    config = BenchConfig(warmup_ms=timing.warmup_ms, duration_s=timing.duration_s, iterations=timing.iterations,
                         no_data_transfers=timing.no_data_transfers, keep_raw=timing.keep_raw,
                         seq_len=model.seq_len, batch=model.batch, precision=args.precision,
                         seed=args.seed) if timing else BenchConfig(seed=args.seed)
    return Job(model, targets, list(points or []), [(model.seq_len, model.batch)] if bench else [], config, notes,
               out, allow_unverified=verify and args.allow_unverified)


def _measure(job: Job, args: argparse.Namespace, directory: Path,
             finished: Any = None) -> tuple[Measurement, list[str]]:
    """Export into `directory`, the shared float64 reference, then every backend; the records and the notes."""
    model = job.model
    with StepLog() as log:
        notes = export_for(model, directory, args.exporter, log) + job.notes
        # again with the exported model: by default, backends that do not apply to it (no ONNX file) are left out
        job.targets = select_targets(args, model, args.precision)
        references = References(model, args.seed)
        if job.verify_points:
            log(f"float64 reference at {', '.join(f'{s}x{b}' for s, b in job.verify_points)} (seq x batch)")
            for seq_len, batch in job.verify_points:
                references.outputs(seq_len, batch)
    oracle = job.verify_points if model.onnx_path is not None and model.module is not None else []
    oracle, oracle_notes = oracle_points(model, oracle)
    notes = [*model.notes, *notes, *oracle_notes]
    print_reference(references.unverified if job.verify_points else None, notes, job.allow_unverified)
    result = Measurement()
    if oracle:
        result.add(check_onnx_reference(model, references, oracle))
    with StepLog() as log:
        # the step log as a runner option too: --fused-tune reports its candidate plans at prepare
        done = measure(model, job.targets, references, job.verify_points, job.bench_points, job.timing,
                       {**runner_options(args, job.out), "progress": log}, progress=log, finished=finished)
    result.add(done.verify + done.bench)
    return result, notes


def _verify_table(model: Model, records: list[Record]) -> None:
    from lstminfer.report.tables import reference_names, verify_rows

    print_table(f"Verification of {model.name} against {reference_names(records)}", verify_rows(records))


def _bench_table(job: Job, records: list[Record]) -> None:
    from lstminfer.report.tables import bench_rows

    rows, _ = bench_rows(records)
    print_table(f"Benchmark of {job.model.name}, seq {job.model.seq_len} x batch {job.model.batch}, "
                f"{job.timing.precision}", rows)
    _print_warnings(records)


def _print_warnings(records: list[Record]) -> None:
    from rich.markup import escape

    console = stderr_console()
    for r in records:
        for w in r.warnings if isinstance(r, BenchRecord) else ():
            console.print("[yellow]warning[/yellow] " + escape(f"{r.point.label}: {w}"))


def cmd_verify(args: argparse.Namespace) -> int:
    job = _job(args, verify=True, bench=False)
    result, _ = _measure(job, args, job.out)
    check_something_ran(result.verify, "verified")
    _verify_table(job.model, result.verify)
    write_json_output(args.json, [r.to_dict() for r in result.verify])
    return verify_code(result.verify, job.allow_unverified)


def cmd_bench(args: argparse.Namespace) -> int:
    job = _job(args, verify=False, bench=True)
    result, _ = _measure(job, args, job.out)
    check_something_ran(result.bench, "benchmarked")
    _bench_table(job, result.bench)
    write_json_output(args.json, [r.to_dict() for r in result.bench])
    return 0


def summary_rows(verify: list[Record], bench: list[Record]) -> list[dict[str, Any]]:
    """One line per benchmarked backend: its verdict at that precision, its median latency, "vs torch"."""
    from lstminfer.report.tables import bench_rows

    verdict = verdicts(verify)
    rows, unit = bench_rows(bench)
    median = unit.header("median")
    return [{"backend": r.point.backend, "device": r.point.device, "precision": r.point.precision,
             "verified": verdict.get(r.point.runner, "-"), median: row.get(median), "vs torch": row.get("vs torch"),
             "note": row.get("note")} for r, row in zip(bench, rows)]


def _results(job: Job, result: Measurement, notes: list[str], stage: Path) -> dict[str, Any]:
    """The results.json object (docs/reports.md), naming model.onnx where it will be once the run completes."""
    out = new_results(job.model.describe())
    if job.model.onnx_path is not None and Path(job.model.onnx_path).parent == stage:
        out["model"]["onnx"] = str(job.out / Path(job.model.onnx_path).name)
    return {**out, "notes": notes, "verify": [r.to_dict() for r in result.verify],
            "bench": [r.to_dict() for r in result.bench]}


def cmd_run(args: argparse.Namespace) -> int:
    """export -> verify -> bench -> results.json + report.md, written into OUT/.lstminfer-partial and moved into
    OUT at the end: an interrupted run leaves the previous results as they were (issue 14 item 7)."""
    from lstminfer.report.render import write_report

    job = _job(args, verify=True, bench=True)
    staged = StagedDir(job.out)
    stage = staged.start()

    def save_partial(_target: Point, so_far: Measurement) -> None:
        write_json_atomic(stage / "results.json", _results(job, so_far, [], stage))

    try:
        result, notes = _measure(job, args, stage, finished=save_partial)
        check_something_ran(result.verify + result.bench, "measured")
    except KeyboardInterrupt:
        print(f"lstminfer: interrupted: the previous results in {job.out} are untouched; this run's partial "
              f"results are in {stage}", file=sys.stderr)
        return 130
    except UserError:
        staged.discard()
        raise
    results = _results(job, result, notes, stage)
    write_json_atomic(stage / "results.json", results)
    write_report(results, stage / "report.md", "md")
    written = staged.commit(stale="report-*.png")
    _verify_table(job.model, result.verify)
    _bench_table(job, result.bench)
    print_table("Summary", summary_rows(result.verify, result.bench))
    write_json_output(args.json, results)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return verify_code(result.verify, job.allow_unverified)
