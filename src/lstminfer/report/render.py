"""Tables, and whole reports (markdown or one self-contained HTML file), read from result records.

Nothing here measures.  `write_report(results, path, fmt)` writes a report and its plots (PNG files
next to it; the HTML embeds them as data URIs, so it opens offline with no external reference);
`load_inputs(paths)` reads results.json files, sweep JSONL files, record lists (`--json` output,
imported trtexec runs) and directories of them into one results object.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstminfer.errors import UserError
from lstminfer.measure.bench import comparison
from lstminfer.measure.store import ensure_writable_dir, load_results, read_json, write_text_atomic
from lstminfer.measure.verify import verdicts


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _shape(record: dict[str, Any]) -> str:
    """SEQxBATCH, or "-" for a record with no shape (e.g. a trtexec run whose shapes were not given)."""
    if record.get("seq_len") is None or record.get("batch") is None:
        return "-"
    return f"{record['seq_len']}x{record['batch']}"


def pick_unit(values_ms: Sequence[float]) -> tuple[str, float]:
    """One unit per table: us below 1 ms, ms below 10 s."""
    finite = [v for v in values_ms if v is not None]
    if finite and max(finite) < 1.0:
        return "us", 1000.0
    return "ms", 1.0


def reference_names(results: dict[str, Any]) -> str:
    """Which reference(s) the verify records were compared with, e.g. torch-float64-cpu."""
    names = sorted({r.get("reference") for r in results.get("verify", []) if r.get("reference")})
    return ", ".join(names) or "float64"


def verify_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, device, precision): worst errors over every point and output, and the verdict."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["backend"], r["device"], r["precision"]), []).append(r)
    verdict = verdicts(records)
    rows = []
    for (backend, device, precision), recs in groups.items():
        abs_errs = [r["max_abs_err"] for r in recs if r.get("max_abs_err") is not None]
        rel_errs = [r["max_rel_err"] for r in recs if r.get("max_rel_err") is not None]
        points = sorted({(r["seq_len"], r["batch"]) for r in recs if r.get("seq_len") is not None})
        errors = [r["error"] for r in recs if r.get("error")]
        rows.append({
            "backend": backend, "device": device, "precision": precision,
            "points": ", ".join(f"{s}x{b}" for s, b in points) or "-",
            "max_abs_err": max(abs_errs) if abs_errs else None, "max_rel_err": max(rel_errs) if rel_errs else None,
            "atol": recs[0].get("atol"), "rtol": recs[0].get("rtol"),
            "verdict": verdict.get(f"{backend}[{device}]", "-") + (f" ({errors[0]})" if errors else ""),
            "reference": recs[0].get("reference", "-"), "tf32": recs[0].get("tf32"),
        })
    return rows


def bench_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Comparison rows (median, p99, GPU compute, throughput, speedup vs torch) in one unit; and the unit."""
    rows = comparison(records)
    by_key = {(r["backend"], r["device"], r["precision"], r["seq_len"], r["batch"]): r for r in records}
    unit, scale = pick_unit([r["median_ms"] for r in rows])
    out = []
    for row in rows:
        rec = by_key[(row["backend"], row["device"], row["precision"], row["seq_len"], row["batch"])]
        on_gpu_clock = rec.get("clock") == "cuda-events" or rec.get("source") == "trtexec"
        gpu = row["gpu_compute_median_ms"] if on_gpu_clock else None
        out.append({
            "backend": row["backend"], "device": row["device"], "precision": row["precision"],
            "shape": _shape(row),
            f"median ({unit})": row["median_ms"] * scale, f"p99 ({unit})": rec["latency_ms"]["p99"] * scale,
            f"GPU compute ({unit})": gpu * scale if gpu is not None else None,
            "qps": row["throughput_qps"], "vs torch": row["speedup_vs_torch"],
            "warnings": len(rec.get("warnings", [])),
        })
    for r in records:
        if "latency_ms" not in r:
            reason = r.get("skipped") or r.get("error") or "no result"
            out.append({"backend": r["backend"], "device": r["device"], "precision": r["precision"],
                        "shape": _shape(r), f"median ({unit})": None, "note": reason})
    return out, unit


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_no rows_\n"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:.2f}x" if c == "vs torch" and isinstance(v, float) else _fmt(v))
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    return "\n".join(lines) + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """report.md for one results object: the model, the machine, verification and benchmark tables."""
    machine = results.get("machine", {})
    model = results.get("model", {})
    gpu = machine.get("gpu") or {}
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    parts = ["# lstminfer report", ""]
    if model:
        spec = model.get("spec") or {}
        parts.append(f"**Model:** {model.get('name', '-')} {spec}  ")
        parts.append(f"**Shape:** seq {model.get('seq_len')} x batch {model.get('batch')}"
                     f"{'' if model.get('with_state', True) else ' (no initial state)'}  ")
    parts.append(f"**Machine:** {machine.get('cpu', '-')}; GPU: {gpu.get('name', 'none')}  ")
    parts.append(f"**Libraries:** {libs}")
    parts += ["", "## Verification", ""]
    parts.append(f"Each backend against the reference ({reference_names(results)}) on fresh random inputs; an "
                 "element fails only if it exceeds both atol and rtol (Polygraphy's rule).\n")
    parts.append(markdown_table(verify_rows(results.get("verify", []))))
    rows, unit = bench_rows(results.get("bench", []))
    parts += ["", "## Benchmark", "",
              f"Latency is host end to end per query (inputs and outputs on the host), in {unit}; GPU compute is "
              "CUDA-event time of the computation alone; statistics as trtexec computes them.\n",
              markdown_table(rows)]
    warnings = [(r["backend"], r["device"], w) for r in results.get("bench", []) for w in r.get("warnings", [])]
    if warnings:
        parts += ["", "### Warnings", ""] + [f"- {b}[{d}]: {w}" for b, d, w in warnings]
    return "\n".join(parts) + "\n"


# ---- comparisons across a grid ---------------------------------------------------------------------

def backend_label(record: dict[str, Any]) -> str:
    return f"{record['backend']}[{record['device']}]"


def _timed(record: dict[str, Any]) -> bool:
    latency = record.get("latency_ms")
    return (isinstance(latency, dict) and isinstance(latency.get("median"), (int, float))
            and isinstance(record.get("seq_len"), int) and isinstance(record.get("batch"), int))


def timed_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bench records with a latency and a shape, one per (backend, device, precision, shape): the last."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if _timed(r):
            latest[(r["backend"], r["device"], r["precision"], r["seq_len"], r["batch"], r.get("source"))] = r
    return list(latest.values())


def fastest_by_point(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """(precision, seq_len, batch) -> the record with the lowest median latency there, on any device."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in timed_records(records):
        key = (r["precision"], r["seq_len"], r["batch"])
        if key not in best or r["latency_ms"]["median"] < best[key]["latency_ms"]["median"]:
            best[key] = r
    return best


def fastest_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Per point: the fastest backend, its median, its speedup over torch eager and its lead on the next."""
    timed = timed_records(records)
    best = fastest_by_point(timed)
    unit, scale = pick_unit([r["latency_ms"]["median"] for r in best.values()])
    rows = []
    for (precision, seq_len, batch), win in best.items():
        here = sorted((r for r in timed if (r["precision"], r["seq_len"], r["batch"]) == (precision, seq_len, batch)),
                      key=lambda r: r["latency_ms"]["median"])
        median = win["latency_ms"]["median"]
        torch_eager = [r for r in here if r["backend"] == "torch" and r["device"] == win["device"]]
        runner_up = here[1] if len(here) > 1 else None
        rows.append({
            "precision": precision, "shape": f"{seq_len}x{batch}", "fastest": backend_label(win),
            f"median ({unit})": median * scale,
            "vs torch": torch_eager[0]["latency_ms"]["median"] / median if torch_eager and median else None,
            "runner-up": backend_label(runner_up) if runner_up else "-",
            "lead": f"{runner_up['latency_ms']['median'] / median:.2f}x" if runner_up and median else "-",
        })
    return rows, unit


def wins_summary(records: Sequence[dict[str, Any]]) -> str:
    """"onnxruntime[cpu] is fastest at 5 of 6 points, torch[cpu] at 1"."""
    best = fastest_by_point(records)
    if not best:
        return ""
    counts: dict[str, int] = {}
    for r in best.values():
        counts[backend_label(r)] = counts.get(backend_label(r), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    first, *rest = ranked
    text = f"{first[0]} is fastest at {first[1]} of {len(best)} points"
    return text + "".join(f", {label} at {n}" for label, n in rest) + "."


def _marked_bench_rows(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """bench_rows with the fastest backend at each point marked with a star in a first column."""
    rows, unit = bench_rows(records)
    winners = {(r["backend"], r["device"], r["precision"], _shape(r)) for r in fastest_by_point(records).values()}
    marked = []
    for row in rows:
        star = "★" if (row["backend"], row["device"], row["precision"], row["shape"]) in winners \
            and row.get(f"median ({unit})") is not None else ""
        marked.append({"fastest": star, **row})
    return marked, unit


def _trtexec_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.get("source") != "trtexec":
            continue
        latency, gpu = r.get("latency_ms") or {}, r.get("gpu_compute_ms") or {}
        rows.append({"precision": r.get("precision"), "shape": _shape(r), "median (ms)": latency.get("median"),
                     "p99 (ms)": latency.get("p99"), "GPU compute median (ms)": gpu.get("median"),
                     "qps": r.get("throughput_qps"), "TensorRT": r.get("tensorrt_version"),
                     "command": r.get("command") or "-"})
    return rows


def _error_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"backend": e.get("backend"), "device": e.get("device"), "precision": e.get("precision"),
             "shape": _shape(e), "error": f"{e.get('error_type', 'error')}: {e.get('error')}"}
            for e in results.get("errors", [])]


# ---- reading inputs ----------------------------------------------------------------------------------

def _kind_of(record: dict[str, Any]) -> str | None:
    kind = record.get("kind")
    if kind in ("verify", "bench", "error"):
        return kind
    if kind is not None:
        return None
    if "max_abs_err" in record or "passed" in record:
        return "verify"
    if "latency_ms" in record or "throughput_qps" in record or "skipped" in record:
        return "bench"
    return None


def _load_file(path: Path, explicit: bool) -> dict[str, Any] | None:
    """One file as a results object; None for a JSON file that is not ours when scanning a directory."""
    if path.suffix == ".jsonl":
        results = load_results(path)
    else:
        data = read_json(path)
        if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
            results = {"machine": {}, "model": {}, "verify": [], "bench": [], "errors": []}
            for r in data:
                kind = _kind_of(r)
                if kind is not None:
                    results["errors" if kind == "error" else kind].append(r)
        elif isinstance(data, dict) and ({"verify", "bench"} & set(data) or _kind_of(data) == "bench"):
            results = load_results(path) if {"verify", "bench"} & set(data) else \
                {"machine": {}, "model": {}, "verify": [], "bench": [data]}
        elif explicit:
            raise UserError(f"{path} is not an lstminfer results file (no 'verify' or 'bench' records)")
        else:
            return None
    if explicit and not (results.get("verify") or results.get("bench") or results.get("errors")):
        raise UserError(f"{path} holds no records (an empty or unfinished file?); run the sweep or pick another file")
    return results


def load_inputs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Results files and directories (their results.json, *.jsonl and record lists) merged into one object.

    Bench records without a latency summary (e.g. a trtexec import with no summary) lose `latency_ms`, so
    they show as notes rather than break the tables; an error line whose point later ran is dropped.
    """
    if not paths:
        raise UserError("give a results directory or file (results.json, sweep.jsonl)")
    loaded: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and not p.name.startswith("."))
            found = [r for r in (_load_file(f, explicit=False) for f in files) if r is not None]
            if not any(r.get("verify") or r.get("bench") or r.get("errors") for r in found):
                raise UserError(f"{path} holds no results (results.json or *.jsonl records); run `lstminfer sweep "
                                f"--out {path}` or `lstminfer run --out {path}` first")
            loaded.extend(found)
        elif path.exists():
            loaded.append(_load_file(path, explicit=True))
        else:
            raise UserError(f"{path} does not exist; give a results directory or file")
    out: dict[str, Any] = {"schema": 1, "machine": {}, "model": {}, "verify": [], "bench": [], "errors": []}
    for r in loaded:
        out["machine"] = out["machine"] or r.get("machine") or {}
        out["model"] = out["model"] or r.get("model") or {}
        for key in ("verify", "bench", "errors"):
            out[key].extend(x for x in r.get(key, []) if isinstance(x, dict))
    return normalize(out)


def normalize(results: dict[str, Any]) -> dict[str, Any]:
    """A copy the tables can rely on: every record names its backend, device and precision; a bench record
    whose latency summary is missing (e.g. a trtexec import without one) loses `latency_ms` and shows as a
    note; an error line whose point has a bench record after all (retried) is dropped."""
    def named(r: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "?", "device": "?", "precision": "?", **r}

    bench = []
    for r in results.get("bench", []):
        if isinstance(r, dict):
            r = named(r)
            latency = r.get("latency_ms")
            if "latency_ms" in r and not (isinstance(latency, dict) and latency.get("median") is not None):
                r.pop("latency_ms")
            bench.append(r)
    ran = {(r["backend"], r["device"], r["precision"], r.get("seq_len"), r.get("batch")) for r in bench}
    errors = [e for e in results.get("errors", []) if isinstance(e, dict)
              and (e.get("backend"), e.get("device"), e.get("precision"), e.get("seq_len"), e.get("batch")) not in ran]
    verify = [named(r) for r in results.get("verify", []) if isinstance(r, dict)]
    return {**results, "verify": verify, "bench": bench, "errors": errors}


# ---- whole reports -------------------------------------------------------------------------------------

FORMATS = ("md", "html")


def _header_facts(results: dict[str, Any]) -> list[tuple[str, str]]:
    machine = results.get("machine", {}) or {}
    model = results.get("model", {}) or {}
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


def _sections(results: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]] | None]]:
    """(title, text, table rows or None) in report order: the story first, then the detail."""
    bench_records = results.get("bench", [])
    sections = []
    fastest, unit = fastest_rows(bench_records)
    if fastest:
        sections.append(("Fastest backend per point", wins_summary(bench_records) + " Median host latency in "
                         f"{unit}; *vs torch* is the speedup over torch eager on the same device; *lead* is how "
                         "much faster it is than the runner-up.", fastest))
    rows, unit = _marked_bench_rows(bench_records)
    sections.append(("Benchmark", f"Latency is host end to end per query (inputs and outputs on the host), in "
                     f"{unit}; GPU compute is CUDA-event time of the computation alone; statistics as trtexec "
                     "computes them (TensorRT samples/common/sampleReporting.cpp). ★ marks the fastest backend "
                     "at each point.", rows))
    trt = _trtexec_rows(bench_records)
    if trt:
        sections.append(("Imported trtexec runs", "Numbers as trtexec printed them (its Latency is H2D + GPU "
                         "compute + D2H); they also appear in the tables and plots above where their shape is "
                         "known.", trt))
    sections.append(("Verification", f"Each backend against the reference ({reference_names(results)}) on fresh "
                     "random inputs; an element fails only if it exceeds both atol and rtol (Polygraphy's rule).",
                     verify_rows(results.get("verify", []))))
    errors = _error_rows(results)
    if errors:
        sections.append(("Points that failed", "These points raised an error; the rest of the sweep went on.",
                         errors))
    warnings = [{"backend": r["backend"], "device": r["device"], "shape": _shape(r), "warning": w}
                for r in bench_records for w in r.get("warnings", []) or []]
    if warnings:
        sections.append(("Warnings", "As trtexec would print them.", warnings))
    return sections


def _markdown_report(results: dict[str, Any], images: Sequence[tuple[Any, str]]) -> str:
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
td.failed { color: #b00; font-weight: 600; } td.passed { color: #070; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; } dt { font-weight: 600; }
"""


def _html_cell(column: str, value: Any) -> str:
    if column == "vs torch" and isinstance(value, float):
        text = f"{value:.2f}x"
    else:
        text = _fmt(value)
    classes = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        classes.append("num")
    if text.startswith("FAILED"):
        classes.append("failed")
    elif text == "passed":
        classes.append("passed")
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        cls = ' class="fastest"' if row.get("fastest") == "★" else ""
        out.append(f"<tr{cls}>" + "".join(_html_cell(c, row.get(c)) for c in columns) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _html_report(results: dict[str, Any], plots: Sequence[Any]) -> str:
    body = ["<h1>lstminfer report</h1>", "<dl>"]
    body += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _header_facts(results)]
    body.append("</dl>")

    def section(title: str, text: str, rows: list[dict[str, Any]] | None) -> None:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(f"<p>{html.escape(text).replace('*', '')}</p>")
        body.append(html_table(rows or []))

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


def write_report(results: dict[str, Any], path: str | Path, fmt: str = "md") -> Path:
    """Write the report for `results` to `path` (markdown or self-contained HTML) and its PNG plots beside it.

    Plots are named `<report stem>-<plot>.png`; every file is written atomically.  Returns `path`.
    """
    from lstminfer.report.plots import PLOT_NAMES, make_plots  # matplotlib only when a report is written

    if fmt not in FORMATS:
        raise UserError(f"unknown report format {fmt!r}: use md or html")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the report's file name (e.g. {path / ('report.' + fmt)})")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    results = normalize(results)
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
