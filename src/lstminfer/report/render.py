"""Whole reports, markdown or one self-contained HTML file, written from a results object.

Nothing here measures.  `write_report(results, path, fmt)` writes a report and its plots (PNG files next
to it; the HTML embeds them as data URIs, so it opens offline with no external reference).  The rows come
from `report.tables`, the images from `report.plots`, the files from `report.load`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.store import ensure_writable_dir, write_text_atomic
from lstminfer.report import tables
from lstminfer.report.load import Results, typed

FORMATS = ("md", "html")



def _header_facts(results: Results) -> list[tuple[str, str]]:
    machine, model = results.machine, results.model
    gpu = machine.get("gpu") or {}
    facts = []
    if model:
        spec = model.get("spec") or {}
        spec_text = ", ".join(f"{k}={v}" for k, v in spec.items()) if isinstance(spec, dict) else str(spec)
        facts.append(("Model", f"{model.get('name', '-')} ({spec_text})"))
    gpu_text = gpu.get("name", "none")
    if gpu:
        gpu_text += f", CUDA {gpu.get('cuda')}, driver {gpu.get('driver')}"
    facts.append(("Machine", f"{machine.get('cpu', '-')} ({machine.get('cpu_count', '?')} cores); GPU: {gpu_text}"))
    libs = ", ".join(f"{k} {v}" for k, v in (machine.get("libraries") or {}).items())
    facts.append(("Libraries", libs or "-"))
    return facts


def _sections(results: Results) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(title, text, table rows) in report order: the story first, then the detail; one unit throughout."""
    bench_records = results.bench
    unit = tables.bench_unit(bench_records)
    sections = []
    fastest, _ = tables.fastest_rows(bench_records, unit)
    if fastest:
        sections.append(("Fastest backend per point", f"{tables.wins_summary(bench_records)} Median host latency "
                         f"in {unit.name}. {tables.VS_TORCH_NOTE} *lead* is how much faster it is than the "
                         "runner-up.", fastest))
    # a report of load tests alone has no empty benchmark and verification tables
    bench_tables = bool(bench_records or results.verify or results.failed or not results.loadtest)
    if bench_tables:
        sections.append(("Benchmark", f"Times in {unit.name}. Latency is host end to end per query (inputs and "
                         "outputs on the host); GPU compute is CUDA-event time of the computation alone; statistics "
                         "as trtexec computes them (TensorRT samples/common/sampleReporting.cpp). "
                         f"{tables.VS_TORCH_NOTE} ★ marks the fastest backend at each point.",
                         tables.bench_rows(bench_records, unit)[0]))
    trt = tables.trtexec_rows(bench_records, unit)
    if trt:
        sections.append(("Imported trtexec runs", f"Numbers as trtexec printed them, in {unit.name} (its Latency "
                         "is H2D + GPU compute + D2H); they also appear in the tables and plots above where their "
                         "shape is known.", trt))
    verify_records = results.verify
    if bench_tables:
        sections.append(("Verification", f"Each backend against the reference "
                         f"({tables.reference_names(verify_records)}) on fresh random inputs; an element fails only "
                         "if it exceeds both atol and rtol (Polygraphy's rule). One row per backend, device and "
                         "precision.", tables.verify_rows(verify_records)))
    if results.loadtest:
        sections.append(("Load test", "lstminfer loadtest against a Triton Inference Server, one row per "
                         "concurrency level (stateless: requests in flight; stream: streams open at once, one chunk "
                         "per request); latency is the client's clock around one request, percentiles as trtexec "
                         "computes them; throughput counts the requests that finished in the measured window "
                         "(docs/serving.md).", tables.loadtest_rows(tables.latest_levels(results.loadtest))))
    errors = tables.failure_rows(results.failed)
    if errors:
        sections.append(("Points that failed", "These points raised an error; the rest of the sweep went on.",
                         errors))
    warnings = tables.warning_rows(bench_records)
    if warnings:
        sections.append(("Warnings", "As trtexec would print them.", warnings))
    return sections


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "_no rows_\n"
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (tables.fmt(row.get(c)).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def _markdown_report(results: Results, images: Sequence[tuple[Any, str]]) -> str:
    parts = ["# lstminfer report", ""]
    parts += [f"**{k}:** {v}  " for k, v in _header_facts(results)]
    sections = _sections(results)
    for title, text, rows in sections[:1]:
        parts += ["", f"## {title}", "", text, "", markdown_table(rows)]
    if images:
        parts += ["", "## Plots", ""]
        for plot, name in images:
            parts += [f"### {plot.title}", "", plot.caption, "", f"![{plot.title}]({name})", ""]
    for title, text, rows in sections[1:]:
        parts += ["", f"## {title}", "", text, "", markdown_table(rows)]
    return "\n".join(parts) + "\n"


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fastest td { background: #eef8ee; font-weight: 600; }
td.failed { color: #b00; font-weight: 600; } td.passed { color: #070; } td.unverified { color: #a55a00; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; } dt { font-weight: 600; }
"""


_SPEEDUP = re.compile(r"\d+(\.\d+)?x\b")  # "vs torch" and "lead" cells are numbers too


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or bool(_SPEEDUP.match(str(value)))


def _html_cell(value: Any, numeric: bool) -> str:
    text = tables.fmt(value)
    classes = ["num"] if numeric else []
    if text.startswith("FAILED"):
        classes.append("failed")
    elif text == "passed":
        classes.append("passed")
    elif text.startswith("unverified"):  # compared with the runtime itself: neither passed nor failed
        classes.append("unverified")
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = _columns(rows)
    # a column of numbers is right-aligned as a whole, its "-" cells too
    numeric = {c for c in columns if all(_is_number(row[c]) for row in rows if row.get(c) is not None)
               and any(row.get(c) is not None for row in rows)}
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        cls = ' class="fastest"' if row.get("fastest") == "★" else ""
        out.append(f"<tr{cls}>" + "".join(_html_cell(row.get(c), c in numeric) for c in columns) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _html_report(results: Results, plots: Sequence[Any]) -> str:
    body = ["<h1>lstminfer report</h1>", "<dl>"]
    body += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _header_facts(results)]
    body.append("</dl>")

    def section(title: str, text: str, rows: list[dict[str, Any]]) -> None:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(f"<p>{html.escape(text).replace('*', '')}</p>")
        body.append(html_table(rows))

    sections = _sections(results)
    for s in sections[:1]:
        section(*s)
    if plots:
        body.append("<h2>Plots</h2>")
        for plot in plots:
            data = base64.b64encode(plot.png).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
                        f"<figcaption><strong>{html.escape(plot.title)}.</strong> {html.escape(plot.caption)}"
                        "</figcaption></figure>")
    for s in sections[1:]:
        section(*s)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>lstminfer report</title>\n<style>" + _CSS + "</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(results: dict[str, Any] | Results, path: str | Path, fmt: str = "md") -> Path:
    """Write the report for `results` to `path` (markdown or self-contained HTML) and its PNG plots beside it.

    `results` is a results object as `load.load_inputs` returns it (or `Results`).  Plots are named
    `<report stem>-<plot>.png`; every file is written atomically.  Returns `path`.
    """
    from lstminfer.report.plots import PLOT_NAMES, make_plots  # matplotlib only when a report is written

    if fmt not in FORMATS:
        raise UserError(f"unknown report format {fmt!r}: use md or html")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the report's file name (e.g. {path / ('report.' + fmt)})")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    results = typed(results)
    plots = make_plots(results)
    images = []
    for plot in plots:
        png_path = path.with_name(f"{path.stem}-{plot.name}.png")
        write_text_atomic(png_path, plot.png)
        images.append((plot, png_path.name))
    for name in set(PLOT_NAMES) - {plot.name for plot in plots}:  # an earlier report's plot would mislead
        path.with_name(f"{path.stem}-{name}.png").unlink(missing_ok=True)
    text = _markdown_report(results, images) if fmt == "md" else _html_report(results, plots)
    write_text_atomic(path, text)
    return path
