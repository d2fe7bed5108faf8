"""Table rows read from typed result records: verification, benchmark, the fastest backend per point.

Nothing here measures, reads files or draws.  Rows are plain dicts of column -> value, in column order,
ready for the markdown, HTML and terminal renderers.  Two rules hold for every table:

- one time unit per table, chosen once (`pick_unit`) and stated in the column headers; a report picks
  one unit for all its tables, so no table is in us beside another in ms;
- "vs torch" is torch eager's median host latency over the backend's (`measure.records.speedups`,
  written by `format_speedup`); where the ratio of throughputs (qps) differs by more than
  `QPS_DISAGREEMENT`, the cell shows it too, so the column never contradicts the qps column silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lstminfer.measure.records import (
    SPEEDUP_BASELINE,
    SPEEDUP_NOTE,
    BenchRecord,
    Failure,
    Point,
    Record,
    Skip,
    VerifyRecord,
    format_speedup,
    speedups,
    verdicts,
)

# Beyond this relative difference between the median ratio and the qps ratio a "vs torch" cell shows both.
QPS_DISAGREEMENT = 0.10
# Said under every table with a "vs torch" column, in reports and in the terminal.
VS_TORCH_NOTE = (f"{SPEEDUP_NOTE}; where the ratio of throughputs differs from it by more than "
                 f"{QPS_DISAGREEMENT:.0%} it follows in brackets (qps).")


@dataclass(frozen=True)
class Unit:
    name: str  # "us" or "ms"
    per_ms: float  # multiply a value in ms by this

    def header(self, column: str) -> str:
        return f"{column} ({self.name})"

    def __str__(self) -> str:
        return self.name


def pick_unit(values_ms: Sequence[float | None]) -> Unit:
    """us when every value is below 1 ms (so 0.0234 ms reads 23.4 us), else ms."""
    finite = [v for v in values_ms if v is not None]
    if finite and max(finite) < 1.0:
        return Unit("us", 1000.0)
    return Unit("ms", 1.0)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell's text: 4 significant digits, 17,960 rather than 1.796e+04, "-" for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def timed(records: Sequence[Record]) -> list[BenchRecord]:
    """Bench records with a shape, one per point and source (the last: a re-measured point replaces the first)."""
    latest: dict[tuple[Point, str], BenchRecord] = {}
    for r in records:
        if isinstance(r, BenchRecord) and r.point.seq_len is not None and r.point.batch is not None:
            latest[(r.point, r.source)] = r
    return list(latest.values())


def bench_unit(records: Sequence[Record]) -> Unit:
    return pick_unit([r.median_ms for r in records if isinstance(r, BenchRecord)])


def _scaled(value: float | None, unit: Unit) -> float | None:
    return None if value is None else value * unit.per_ms


def reference_names(records: Sequence[Record]) -> str:
    """Which reference(s) the verify records were compared with, e.g. torch-float64-cpu."""
    names = sorted({r.reference for r in records if isinstance(r, VerifyRecord | Skip | Failure) and r.reference
                    and r.reference != "-"})
    return ", ".join(names) or "float64"


# ---- verification ------------------------------------------------------------------------------------

def point_text(point: Point) -> str:
    """A verify point as the table shows it: SEQxBATCH ("16x3") where its inputs are laid out by sequence and
    batch, else every input's real shape ("x:1x3x10"): a file whose inputs have no sequence or batch axis
    would otherwise read as a made-up 16x1. Laid out means some input has both sizes among its dims (every
    model lstminfer builds, and files whose axes were recognised or fixed by the graph)."""
    if not point.input_shapes:
        return point.shape
    for _, dims in point.input_shapes:
        rest = list(dims)
        if point.seq_len in rest:
            rest.remove(point.seq_len)
            if point.batch in rest:
                return point.shape
    return " ".join(f"{name}:{'x'.join(str(d) for d in dims) or 'scalar'}" for name, dims in point.input_shapes)


def verify_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per (backend, device, precision): worst errors over every point and output, and its own verdict."""
    groups: dict[Point, list[Record]] = {}
    for r in records:
        groups.setdefault(r.point.runner, []).append(r)
    verdict = verdicts(records)
    rows = []
    for runner, recs in groups.items():
        compared = [r for r in recs if isinstance(r, VerifyRecord)]
        abs_errs = [r.max_abs_err for r in compared if r.max_abs_err is not None]
        rel_errs = [r.max_rel_err for r in compared if r.max_rel_err is not None]
        points = sorted({(r.point.seq_len, r.point.batch, point_text(r.point)) for r in recs
                         if r.point.seq_len is not None})
        why = next((r.error for r in recs if isinstance(r, Failure | VerifyRecord) and r.error), None)
        first = compared[0] if compared else None
        rows.append({
            "backend": runner.backend, "device": runner.device, "precision": runner.precision,
            "points": ", ".join(dict.fromkeys(text for _, _, text in points)) or "-",
            "max_abs_err": max(abs_errs) if abs_errs else None, "max_rel_err": max(rel_errs) if rel_errs else None,
            "atol": first.atol if first else None, "rtol": first.rtol if first else None,
            "verdict": verdict.get(runner, "-") + (f" ({why})" if why else ""),
            "reference": reference_names(recs) if any(not isinstance(r, Skip) for r in recs) else "-",
            "tf32": first.extra.get("tf32") if first else None,
        })
    return rows


# ---- benchmark ---------------------------------------------------------------------------------------

def _qps_ratios(records: Sequence[BenchRecord]) -> dict[Point, float]:
    """Per timed point: this backend's qps over torch eager's, same device, precision and shape."""
    baseline = {r.point.runner.at(r.point.seq_len, r.point.batch): r.throughput_qps for r in records
                if r.point.backend == SPEEDUP_BASELINE and r.throughput_qps}
    out = {}
    for r in records:
        base = baseline.get(Point(SPEEDUP_BASELINE, r.point.device, r.point.precision, r.point.seq_len, r.point.batch))
        if base and r.throughput_qps:
            out[r.point] = r.throughput_qps / base
    return out


def _vs_torch(point: Point, by_median: dict[Point, float], by_qps: dict[Point, float]) -> str | None:
    """`format_speedup` of the median ratio; "(qps 3.10x)" after it where the throughputs tell another story."""
    median_ratio, qps_ratio = by_median.get(point), by_qps.get(point)
    if median_ratio is None:
        return None
    text = format_speedup(median_ratio)
    if qps_ratio is not None and abs(qps_ratio - median_ratio) > QPS_DISAGREEMENT * median_ratio:
        text += f" (qps {format_speedup(qps_ratio)})"
    return text


def fastest_by_point(records: Sequence[Record]) -> dict[tuple[str, int, int], BenchRecord]:
    """(precision, seq_len, batch) -> the record with the lowest median latency there, on any device."""
    best: dict[tuple[str, int, int], BenchRecord] = {}
    for r in timed(records):
        key = (r.point.precision, r.point.seq_len, r.point.batch)
        if key not in best or r.median_ms < best[key].median_ms:
            best[key] = r
    return best


def bench_rows(records: Sequence[Record], unit: Unit | None = None) -> tuple[list[dict[str, Any]], Unit]:
    """One row per record: median, p99, GPU compute, qps and "vs torch" in one unit; skips and failures as notes.

    The fastest backend at each point gets ★ in the first column.  Returns the rows and their unit (`unit`,
    or the one `bench_unit` picks).
    """
    unit = unit or bench_unit(records)
    bench = [r for r in records if isinstance(r, BenchRecord)]
    by_median, by_qps = speedups(bench), _qps_ratios(bench)
    winners = {id(r) for r in fastest_by_point(records).values()}
    rows = []
    for r in records:
        head = {"fastest": "★" if id(r) in winners else "", "backend": r.point.backend, "device": r.point.device,
                "precision": r.point.precision, "shape": r.point.shape}
        if not isinstance(r, BenchRecord):
            rows.append({**head, unit.header("median"): None, "note": r.reason if isinstance(r, Skip) else r.error})
            continue
        gpu = r.gpu_compute_ms.median if r.on_gpu_clock and r.gpu_compute_ms else None
        rows.append({**head, unit.header("median"): r.median_ms * unit.per_ms,
                     unit.header("p99"): _scaled(r.latency_ms.p99, unit),
                     unit.header("GPU compute"): _scaled(gpu, unit),
                     "qps": r.throughput_qps, "vs torch": _vs_torch(r.point, by_median, by_qps),
                     "warnings": len(r.warnings)})
    return rows, unit


def fastest_rows(records: Sequence[Record], unit: Unit | None = None) -> tuple[list[dict[str, Any]], Unit]:
    """Per point: the fastest backend, its median, its speedup over torch eager and its lead on the next; the unit."""
    shaped = timed(records)
    best = fastest_by_point(shaped)
    unit = unit or pick_unit([r.median_ms for r in best.values()])
    by_median, by_qps = speedups(shaped), _qps_ratios(shaped)
    rows = []
    for (precision, seq_len, batch), win in best.items():
        here = sorted((r for r in shaped if (r.point.precision, r.point.seq_len, r.point.batch)
                       == (precision, seq_len, batch)), key=lambda r: r.median_ms)
        runner_up = here[1] if len(here) > 1 else None
        rows.append({
            "precision": precision, "shape": win.point.shape, "fastest": win.point.label,
            unit.header("median"): win.median_ms * unit.per_ms, "vs torch": _vs_torch(win.point, by_median, by_qps),
            "runner-up": runner_up.point.label if runner_up else "-",
            "lead": format_speedup(runner_up.median_ms / win.median_ms) if runner_up and win.median_ms else "-",
        })
    return rows, unit


def wins_summary(records: Sequence[Record]) -> str:
    """"onnxruntime[cpu] is fastest at 5 of 6 points, torch[cpu] at 1"."""
    best = fastest_by_point(records)
    if not best:
        return ""
    counts: dict[str, int] = {}
    for r in best.values():
        counts[r.point.label] = counts.get(r.point.label, 0) + 1
    first, *rest = sorted(counts.items(), key=lambda kv: -kv[1])
    text = f"{first[0]} is fastest at {first[1]} of {len(best)} points"
    return text + "".join(f", {name} at {n}" for name, n in rest) + "."


def trtexec_rows(records: Sequence[Record], unit: Unit) -> list[dict[str, Any]]:
    """Imported trtexec runs as trtexec printed them (its Latency is H2D + GPU compute + D2H)."""
    rows = []
    for r in records:
        if not isinstance(r, BenchRecord) or r.source != "trtexec":
            continue
        gpu = r.gpu_compute_ms.median if r.gpu_compute_ms else None
        rows.append({"precision": r.point.precision, "shape": r.point.shape,
                     unit.header("median"): r.median_ms * unit.per_ms,
                     unit.header("p99"): _scaled(r.latency_ms.p99, unit),
                     unit.header("GPU compute median"): _scaled(gpu, unit), "qps": r.throughput_qps,
                     "TensorRT": r.extra.get("tensorrt_version"), "command": r.extra.get("command") or "-"})
    return rows


def failure_rows(failures: Sequence[Failure]) -> list[dict[str, Any]]:
    return [{"backend": f.point.backend, "device": f.point.device, "precision": f.point.precision,
             "shape": f.point.shape, "error": f"{f.error_type}: {f.error}"} for f in failures]


def warning_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [{"backend": r.point.backend, "device": r.point.device, "shape": r.point.shape, "warning": w}
            for r in records if isinstance(r, BenchRecord) for w in r.warnings]


# ---- load tests (lstminfer loadtest) ------------------------------------------------------------------

def latest_levels(records: Sequence[Any]) -> list[Any]:
    """Load-test records, one per (mode, model, protocol, shape, concurrency): the last measured, in series and
    concurrency order (two runs of one level in the inputs are one row, the newer)."""
    latest = {(r.mode, r.model, r.protocol, r.seq_len, r.batch, r.concurrency): r for r in records}
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0] != "stateless", *k[1:]))]


def loadtest_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per concurrency level (`serve.loadtest.LoadRecord`s): what `lstminfer loadtest` prints and the
    report's load-test table shows; latency in ms, as the load test measured it."""
    return [{"mode": r.mode, "model": r.model, "protocol": r.protocol, "shape": f"{r.seq_len}x{r.batch}",
             "concurrency": r.concurrency, "requests": r.requests, "failed": r.failed,
             "throughput (req/s)": r.throughput_rps,
             **{f"{k} (ms)": r.latency_ms.get(k) for k in ("p50", "p90", "p95", "p99")}} for r in records]
