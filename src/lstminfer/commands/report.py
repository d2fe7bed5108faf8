"""`lstminfer sweep | report`: thin calls into lstminfer.sweep and lstminfer.report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from lstminfer.backends.base import select_backends
from lstminfer.commands.args import (
    BackendArgs,
    ExportArgs,
    GridArgs,
    ModelArgs,
    OutputArgs,
    TimingArgs,
    model_from_args,
    split_list,
)
from lstminfer.commands.console import print_table, stderr_console, write_json_output
from lstminfer.commands.measuring import (
    StepLog,
    check_output_file,
    check_precision,
    export_for,
    print_reference,
    runner_options,
    verify_code,
)
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.records import Failure, Point, Record
from lstminfer.measure.store import ensure_writable_dir, load_results
from lstminfer.measure.verify import why_unverified
from lstminfer.model.spec import check_memory
from lstminfer.report.load import as_records, load_inputs
from lstminfer.report.render import FORMATS, write_report
from lstminfer.report.tables import fastest_rows, wins_summary


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep",
                              help="verify and benchmark every backend over seq_len x batch x precision",
                              description="Measure a grid of points, one JSON line per point appended to "
                                          "DIR/sweep.jsonl as it finishes; --resume continues a stopped sweep.")
    ModelArgs(shape=False).add_to(p)  # the grid's --seq-len / --batch / --precision take lists
    BackendArgs(precision=False).add_to(p)
    GridArgs().add_to(p)
    p.add_argument("--allow-unverified", action="store_true",
                   help="exit 0 when the only reference is a runtime under test (labelled unverified)")
    ExportArgs().add_to(p)
    TimingArgs().add_to(p)
    OutputArgs(out_dir=True).add_to(p)
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("report", help="tables and plots (markdown or one self-contained HTML file)",
                              description="Read results.json / sweep.jsonl / imported trtexec records / "
                                          "`lstminfer loadtest --json` files (files or directories) and write a "
                                          "report with plots beside it.")
    p.add_argument("inputs", nargs="+", metavar="DIR_or_FILE",
                   help="results directories or files (results.json, sweep.jsonl, loadtest JSON)")
    p.add_argument("--format", choices=FORMATS, default="html", help="html (default, images embedded) or md")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="report file, or a directory for report.FORMAT in it (default: the first directory given, "
                        "else the first file's directory); the PNG plots go beside it")
    OutputArgs().add_to(p)
    p.set_defaults(func=cmd_report)


def _progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.fields[count]}"), TextColumn("{task.description}"), BarColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=stderr_console(), transient=True, disable=not sys.stderr.isatty())


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from lstminfer.measure.sweep import SWEEP_FILE, Grid, check_target, run_sweep, summarize_point

    # Everything that can refuse the sweep is checked before the export writes anything (issue 14 items 8, 9).
    check_output_file(args.json)
    grid_args = GridArgs.parse(args)
    timing = TimingArgs.parse(args)
    config = BenchConfig(warmup_ms=timing.warmup_ms, duration_s=timing.duration_s, iterations=timing.iterations,
                         no_data_transfers=timing.no_data_transfers, seed=args.seed, keep_raw=timing.keep_raw)
    out = ensure_writable_dir(args.out)
    path = out / SWEEP_FILE
    check_target(path, grid_args.resume)
    model = model_from_args(args)
    if model.spec is not None:  # the grid's largest point too large to allocate: one line, before any work
        check_memory(model.spec, max(grid_args.seq_lens), max(grid_args.batches))
    grid = Grid(seq_lens=grid_args.seq_lens, batches=grid_args.batches, precisions=grid_args.precisions,
                choices=tuple(select_backends(split_list(args.backends), args.device)))
    check_precision(grid.targets())
    check_target(path, grid_args.resume, model)  # a file of another model: refused before the export
    with StepLog() as log:
        notes = export_for(model, out, args.exporter, log)
    # again with the exported model: by default, backends that do not apply to it (no ONNX file) are left out
    grid = replace(grid, choices=tuple(select_backends(split_list(args.backends), args.device, model)))
    print_reference(why_unverified(model), [*model.notes, *notes], args.allow_unverified)

    state = {"done": 0, "todo": 0}
    console = stderr_console()
    with _progress_bar() as bar:
        task = bar.add_task("starting", total=None, count="")

        def planned(todo: int, notes: list[str]) -> None:
            state["todo"] = todo
            bar.update(task, total=todo)
            for note in notes:
                bar.console.print(f"[yellow]note:[/yellow] {escape(note)}")

        def progress(point: Point, fraction: float) -> None:
            bar.update(task, description=escape(point.describe()), completed=state["done"] + fraction,
                       count=f"[{state['done'] + 1}/{state['todo']}]")

        def finished(point: Point, records: list[Record]) -> None:
            state["done"] += 1
            bar.update(task, completed=state["done"])
            colour = "red" if any(isinstance(r, Failure) for r in records) else "dim"
            bar.console.print(f"[{colour}]" + escape(f"[{state['done']}/{state['todo']}] {point.describe()}: "
                              f"{summarize_point(records)}") + f"[/{colour}]", highlight=False, soft_wrap=True)

        try:
            result = run_sweep(model, grid, path, config, runner_options(args, out), resume=grid_args.resume,
                               retry_errors=grid_args.retry_errors, planned=planned, progress=progress,
                               finished=finished)
        except KeyboardInterrupt:
            console.print(f"interrupted: the {state['done']} points finished in this run are in {path}; "
                          "run the same command with --resume to finish the sweep", markup=False)
            return 130

    everything = load_results(path)
    bench = as_records(everything["bench"], "bench")
    rows, _ = fastest_rows(bench)
    print_table("Fastest backend per point", rows)
    summary = wins_summary(bench)
    if summary:
        print(summary)
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} points failed[/yellow]: recorded in {escape(str(path))}; "
                      "`--resume --retry-errors` measures them again")
    print(f"wrote {path}: {state['done']} points measured, {result.skipped} already there; "
          f"make the report with `lstminfer report {out} --format html`")
    write_json_output(args.json, everything)
    return verify_code(as_records(everything["verify"], "verify"), args.allow_unverified)


def cmd_report(args: argparse.Namespace) -> int:
    results = load_inputs(args.inputs)
    first = Path(args.inputs[0])
    output = Path(args.output) if args.output else (first if first.is_dir() else first.parent)
    if output.is_dir():
        output = output / f"report.{args.format}"
    written = write_report(results, output, args.format)
    plots = sorted(p.name for p in written.parent.glob(f"{written.stem}-*.png"))
    n_bench = sum(1 for r in results["bench"] if "latency_ms" in r)
    n_load = len(results.get("loadtest") or [])
    print(f"wrote {written} ({n_bench} benchmarks, {len(results['verify'])} verify records"
          f"{f', {n_load} load-test levels' if n_load else ''}{', plots ' + ', '.join(plots) if plots else ''})")
    write_json_output(args.json, results)
    return 0
