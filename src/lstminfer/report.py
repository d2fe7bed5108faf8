"""Tables, and whole reports (markdown or one self-contained HTML file), read from result records.

Nothing here measures.  `write_report(results, path, fmt)` writes a report and its plots (PNG files
next to it; the HTML embeds them as data URIs, so it opens offline with no external reference);
`load_inputs(paths)` reads results.json files, sweep JSONL files, record lists (`--json` output,
imported trtexec runs) and directories of them into one results object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lstminfer.bench import comparison
from lstminfer.verify import verdicts


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
    parts.append("Each backend against a float64 reference on fresh random inputs; an element fails only if it "
                 "exceeds both atol and rtol (Polygraphy's rule).\n")
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
