"""`lstminfer sweep | report`: thin calls into lstminfer.sweep and lstminfer.report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from lstminfer.backends.base import PRECISIONS, select_backends
from lstminfer.commands.common import (
    add_backend_args,
    add_model_args,
    add_output_args,
    parse_int_list,
    print_table,
    split_list,
    stderr_console,
    write_json_output,
)
from lstminfer.commands.core import _options, _prepare_model, add_timing_args
from lstminfer.errors import UserError
from lstminfer.measure.bench import BenchConfig
from lstminfer.measure.store import ensure_writable_dir, load_results
from lstminfer.onnx.export import EXPORTERS
from lstminfer.report.render import FORMATS, fastest_rows, load_inputs, wins_summary, write_report


def register(subparsers: Any) -> None:
    # "resolve": the grid's --seq-len / --batch / --precision take lists, replacing the single-value flags.
    p = subparsers.add_parser("sweep", conflict_handler="resolve",
                              help="verify and benchmark every backend over seq_len x batch x precision",
                              description="Measure a grid of points, one JSON line per point appended to "
                                          "DIR/sweep.jsonl as it finishes; --resume continues a stopped sweep.")
    add_model_args(p)
    add_backend_args(p)
    g = p.add_argument_group("grid")
    g.add_argument("--seq-len", dest="seq_lens", default="1,16,128,1024", metavar="N,...",
                   help="sequence lengths (default 1,16,128,1024)")
    g.add_argument("--batch", dest="batches", default="1,8,64", metavar="N,...", help="batch sizes (default 1,8,64)")
    g.add_argument("--precision", dest="precisions", default="fp32", metavar="P,...",
                   help=f"precisions, of {', '.join(PRECISIONS)} (default fp32)")
    g.add_argument("--resume", action="store_true",
                   help="continue the sweep in DIR/sweep.jsonl: points already there are not measured again")
    g.add_argument("--retry-errors", action="store_true", help="with --resume, measure failed points again")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto")
    add_timing_args(p)
    add_output_args(p, out_dir=True)
    p.set_defaults(func=cmd_sweep, seq_len=None, batch=None, precision=None)

    p = subparsers.add_parser("report", help="tables and plots (markdown or one self-contained HTML file)",
                              description="Read results.json / sweep.jsonl / imported trtexec records (files or "
                                          "directories) and write a report with plots beside it.")
    p.add_argument("inputs", nargs="+", metavar="DIR_or_FILE", help="results directories or files")
    p.add_argument("--format", choices=FORMATS, default="html", help="html (default, images embedded) or md")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="report file, or a directory for report.FORMAT in it (default: the first directory given, "
                        "else the first file's directory); the PNG plots go beside it")
    add_output_args(p)
    p.set_defaults(func=cmd_report)


def _precisions(text: str) -> list[str]:
    values = split_list(text) or []
    unknown = [v for v in values if v not in PRECISIONS]
    if not values or unknown:
        raise UserError(f"--precision: {text!r} must be a comma-separated list of {', '.join(PRECISIONS)}")
    return values


def _progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.fields[count]}"), TextColumn("{task.description}"), BarColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=stderr_console(), transient=True, disable=not sys.stderr.isatty())


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from lstminfer.measure.sweep import SWEEP_FILE, Grid, check_target, run_sweep, summarize_point

    grid = Grid(seq_lens=tuple(parse_int_list(args.seq_lens, "seq-len")),
                batches=tuple(parse_int_list(args.batches, "batch")),
                precisions=tuple(_precisions(args.precisions)),
                choices=tuple(select_backends(split_list(args.backends), args.device)))
    timing = BenchConfig(warmup_ms=args.warmup, duration_s=args.duration, iterations=args.iterations,
                         no_data_transfers=args.no_data_transfers, seed=args.seed, keep_raw=args.raw_times)
    out = ensure_writable_dir(args.out)
    path = out / SWEEP_FILE
    check_target(path, args.resume)  # before the export: a refused sweep costs nothing
    model, notes = _prepare_model(args, out)
    if not args.backends:  # leave out backends that do not apply to this model (e.g. torchscript)
        grid = dataclasses.replace(grid, choices=tuple(select_backends(None, args.device, model)))
    console = stderr_console()
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")

    state = {"done": 0, "todo": 0}
    with _progress_bar() as bar:
        task = bar.add_task("starting", total=None, count="")

        def planned(todo: int, notes: list[str]) -> None:
            state["todo"] = todo
            bar.update(task, total=todo)
            for note in notes:
                bar.console.print(f"[yellow]note:[/yellow] {escape(note)}")

        def progress(point: Any, fraction: float) -> None:
            bar.update(task, description=escape(point.label), completed=state["done"] + fraction,
                       count=f"[{state['done'] + 1}/{state['todo']}]")

        def finished(point: Any, lines: list[dict[str, Any]]) -> None:
            state["done"] += 1
            bar.update(task, completed=state["done"])
            colour = "red" if any(r["kind"] == "error" for r in lines) else "dim"
            bar.console.print(f"[{colour}]" + escape(f"[{state['done']}/{state['todo']}] {point.label}: "
                              f"{summarize_point(lines)}") + f"[/{colour}]", highlight=False, soft_wrap=True)

        try:
            result = run_sweep(model, grid, path, timing, _options(args), resume=args.resume,
                               retry_errors=args.retry_errors, planned=planned, progress=progress,
                               finished=finished)
        except KeyboardInterrupt:
            console.print(f"interrupted: the {state['done']} points finished in this run are in {path}; "
                          "run the same command with --resume to finish the sweep")
            return 130

    everything = load_results(path)
    rows, unit = fastest_rows(everything["bench"])
    print_table("Fastest backend per point", rows)
    summary = wins_summary(everything["bench"])
    if summary:
        print(summary)
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} points failed[/yellow]: recorded in {path}; "
                      "`--resume --retry-errors` measures them again")
    print(f"wrote {path}: {state['done']} points measured, {result.skipped} already there; "
          f"make the report with `lstminfer report {out} --format html`")
    write_json_output(args.json, everything)
    return 1 if any(r.get("passed") is False for r in everything["verify"]) else 0


def cmd_report(args: argparse.Namespace) -> int:
    results = load_inputs(args.inputs)
    first = Path(args.inputs[0])
    output = Path(args.output) if args.output else (first if first.is_dir() else first.parent)
    if output.is_dir():
        output = output / f"report.{args.format}"
    written = write_report(results, output, args.format)
    plots = sorted(p.name for p in written.parent.glob(f"{written.stem}-*.png"))
    n_bench = sum(1 for r in results["bench"] if "latency_ms" in r)
    print(f"wrote {written} ({n_bench} benchmarks, {len(results['verify'])} verify records"
          f"{', plots ' + ', '.join(plots) if plots else ''})")
    write_json_output(args.json, results)
    return 0
